"""A real HTTP proxy on loopback in front of an S3 endpoint, which a test can
switch to answer every request with 503 and S3's XML error body, as S3 does
when it throttles (``SlowDown``) or cannot serve (``ServiceUnavailable``).

Requests are passed on as they came (the Host header too: SigV4 signs it, and
presigned URLs are signed for the proxy's address), responses come back whole
with their length. ``forwarded`` counts what was passed on and ``refused``
what was answered 503.
"""

from __future__ import annotations

import http.client
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade"}


def s3_error(code: str, resource: str) -> bytes:
    messages = {"SlowDown": "Please reduce your request rate.",
                "ServiceUnavailable": "Service is unable to handle request."}
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{messages.get(code, code)}</Message>"
            f"<Resource>{resource}</Resource><RequestId>{uuid.uuid4().hex[:16].upper()}"
            "</RequestId></Error>").encode()


class S3Proxy:
    def __init__(self, target_url: str):
        target = urlsplit(target_url)
        self.target_host, self.target_port = target.hostname, target.port or 80
        self.error_code: str | None = None  # None: pass requests on
        self.status = 503
        self.failing_methods: frozenset[str] | None = None  # None: every method
        self.forwarded = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail(self, code: str = "SlowDown", methods: tuple[str, ...] | None = None,
             status: int = 503) -> None:
        """From now on every request (of ``methods``, when given) is answered
        ``status`` (503) with ``code``."""
        self.failing_methods = frozenset(methods) if methods else None
        self.status = status
        self.error_code = code

    def recover(self) -> None:
        self.error_code = None

    def start(self) -> S3Proxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        code = self.error_code
        if self.failing_methods is not None and handler.command not in self.failing_methods:
            code = None
        if code is not None:
            with self._lock:
                self.refused += 1
            payload = s3_error(code, urlsplit(handler.path).path)
            handler.send_response(self.status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(payload)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(self.target_host, self.target_port, timeout=60)
        try:
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            with self._lock:
                self.forwarded += 1
            handler.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    handler.send_header(key, value)
            handler.send_header("Content-Length",
                                response.getheader("Content-Length", str(len(payload)))
                                if handler.command == "HEAD" else str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(payload)
        except OSError:
            handler.close_connection = True
        finally:
            upstream.close()
