"""Fake model providers and webhook receivers over real HTTP on loopback.

One server per protocol, each a ``ThreadingHTTPServer`` in a thread:

- :class:`FakeOpenAIImages`: ``POST /v1/images/generations`` (OpenAI images
  API: ``b64_json`` or ``url`` results; urls served from ``/files/<id>``).
- :class:`FakeAsyncTasks`: ``POST /v1/tasks``, ``GET /v1/tasks/<id>`` (queued,
  running with progress, then succeeded with a relative ``result_url`` or
  failed), ``DELETE /v1/tasks/<id>``; results served from ``/results/<id>``.
- :class:`FakeChatCompletions`: ``POST /v1/chat/completions`` answering
  ``content`` (a string, or a function of the request body).
- :class:`FakeWebhookReceiver`: records every POST and answers ``status``.
- :class:`DripReceiver`: takes a POST and answers one byte at a time, every
  ``every_s``, for as long as the client stays (a receiver that never finishes).

A route may answer a :class:`Streamed` body instead of bytes (a large result
written chunk by chunk, e.g. :func:`padded_mp4`); ``FakeAsyncTasks.result``
may be one.

Every request is recorded (method, path, headers, body) in ``requests``, so
tests can assert what a provider was sent. ``fail_next(*behaviours)``
scripts the next calls of the main endpoint; ``mode`` is the behaviour once
the script is used up. A behaviour is ``"ok"``, an HTTP status (``500``,
``429``, ``400``, ``401``...), ``"refuse"`` (400 content policy refusal),
``"hang"`` (answer nothing until ``hang_s`` passes or the server stops),
``"slow"`` (answer normally once the test calls ``proceed()``, or after
``hang_s``), ``(status, body)`` (answer ``status`` with the JSON ``body``),
``"drop"`` (close the connection without an answer), ``"redirect"`` (302
to ``/elsewhere``) or ``"garbage"`` (200 with a body that is not what the
protocol promises).

    with FakeOpenAIImages(api_key="sk-test") as fake:
        fake.fail_next(500, 500)           # two failures, then success
        ... fake.url ...                   # http://127.0.0.1:<port>
        assert fake.requests[-1].json()["prompt"] == "..."
"""

from __future__ import annotations

import base64
import functools
import io
import json
import secrets
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from PIL import Image


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True)
class Streamed:
    """A large answer body, written chunk by chunk as ``chunks()`` makes them
    (never whole in memory): ``length`` bytes. ``declared`` False sends no
    Content-Length: the body ends when the server closes the connection."""

    length: int
    chunks: Callable[[], Iterable[bytes]]
    declared: bool = True


Response = tuple[int, dict[str, str], "bytes | Streamed"]


def _json(status: int, body, headers: dict | None = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


@functools.lru_cache(maxsize=64)
def png_bytes(width: int = 64, height: int = 64, colour=(200, 80, 40)) -> bytes:
    """A plain PNG, made once per size and colour: a fake answers at once."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


_MP4_CACHE: dict[tuple, bytes] = {}


def mp4_bytes(width: int = 64, height: int = 64, frames: int = 8, fps: int = 8) -> bytes:
    """A real, tiny H.264 MP4 (made with PyAV, independently of our renderer)."""
    key = (width, height, frames, fps)
    if key not in _MP4_CACHE:
        import av

        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=fps, options={"threads": "1"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(frames):
                image = Image.new("RGB", (width, height), (i * 30 % 256, 90, 160))
                for packet in stream.encode(av.VideoFrame.from_image(image)):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        _MP4_CACHE[key] = buf.getvalue()
    return _MP4_CACHE[key]


def padded_mp4(total: int, declared: bool = True) -> Streamed:
    """A valid MP4 of ``total`` bytes: :func:`mp4_bytes` followed by a ``free``
    box of zeros (players and PyAV skip it), streamed in 1 MiB chunks."""
    head = mp4_bytes()
    padding = total - len(head) - 8
    if padding < 0:
        raise ValueError(f"an MP4 is at least {len(head) + 8} bytes")

    def chunks():
        yield head + struct.pack(">I4s", padding + 8, b"free")
        zeros = bytes(1024 * 1024)
        for left in range(padding, 0, -len(zeros)):
            yield zeros if left >= len(zeros) else zeros[:left]

    return Streamed(total, chunks, declared)


class FakeHTTPServer:
    """The shared machinery: a loopback server, recording, scripted behaviours."""

    def __init__(self, api_key: str | None = None, hang_s: float = 5.0):
        self.api_key = api_key
        self.hang_s = hang_s
        self.mode: str | int = "ok"
        self.requests: list[Recorded] = []
        self._script: deque = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._proceed = threading.Semaphore(0)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                fake._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self._release.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # let hanging handlers go
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------ scripting

    def fail_next(self, *behaviours) -> None:
        with self._lock:
            self._script.extend(behaviours)

    def proceed(self) -> None:
        """Let one "slow" call answer now."""
        self._proceed.release()

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests
                if r.path.startswith(path_prefix) and (method is None or r.method == method)]

    def _next_behaviour(self):
        with self._lock:
            return self._script.popleft() if self._script else self.mode

    # ------------------------------------------------------------ to override

    def scripted(self, request: Recorded) -> bool:
        """Is this the protocol's main endpoint (the one behaviours apply to)?"""
        return False

    def route(self, request: Recorded) -> Response:
        return _json(404, {"error": {"message": "not found"}})

    def error(self, status: int) -> Response:
        headers = {"Retry-After": "0"} if status == 429 else {}
        return _json(status, {"error": {"message": f"fake error {status}", "type": "fake",
                                        "code": f"http_{status}"}}, headers)

    def garbage(self, request: Recorded) -> Response:
        return 200, {"Content-Type": "application/json"}, b'{"unexpected": true}'

    # ------------------------------------------------------------ handling

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = Recorded(handler.command, handler.path, dict(handler.headers.items()), body)
        with self._lock:
            self.requests.append(request)
        behaviour = self._next_behaviour() if self.scripted(request) else "ok"
        if behaviour == "hang":
            self._release.wait(self.hang_s)
            behaviour = 504
        if behaviour == "slow":
            self._proceed.acquire(timeout=self.hang_s)
            behaviour = "ok"
        if behaviour == "drop":
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if self.api_key and request.header("Authorization") != f"Bearer {self.api_key}" \
                and self.scripted(request):
            response = self.error(401)
        elif behaviour == "ok":
            response = self.route(request)
        elif behaviour == "refuse":
            response = _json(400, {"error": {"message": "Your request was rejected by the "
                                             "safety system.", "type": "invalid_request_error",
                                             "code": "content_policy_violation"}})
        elif behaviour == "redirect":
            response = 302, {"Location": "/elsewhere"}, b""
        elif behaviour == "garbage":
            response = self.garbage(request)
        elif isinstance(behaviour, tuple):
            response = _json(*behaviour)
        else:
            response = self.error(int(behaviour))
        status, headers, payload = response
        try:
            handler.send_response(status)
            for key, value in headers.items():
                handler.send_header(key, value)
            if not isinstance(payload, Streamed):
                handler.send_header("Content-Length", str(len(payload)))
                handler.end_headers()
                handler.wfile.write(payload)
                return
            if payload.declared:
                handler.send_header("Content-Length", str(payload.length))
            else:
                handler.send_header("Connection", "close")
                handler.close_connection = True
            handler.end_headers()
            for chunk in payload.chunks():
                handler.wfile.write(chunk)
        except OSError:  # the client gave up (a timeout test)
            pass


class FakeOpenAIImages(FakeHTTPServer):
    """An OpenAI-compatible images API. ``result_base`` (default: this server)
    is where ``url`` results point."""

    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 result_base: str | None = None):
        super().__init__(api_key, hang_s)
        self.result_base = result_base
        self.max_images: int | None = None  # answer with fewer images than asked
        self.files: dict[str, bytes] = {}

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST" and request.path == "/v1/images/generations"

    def garbage(self, request: Recorded) -> Response:
        return _json(200, {"data": [{"b64_json": base64.b64encode(b"not an image").decode()}]})

    def route(self, request: Recorded) -> Response:
        if self.scripted(request):
            body = request.json() or {}
            width, height = (int(v) for v in str(body.get("size", "64x64")).split("x"))
            data = []
            count = int(body.get("n", 1))
            for i in range(min(count, self.max_images) if self.max_images else count):
                image = png_bytes(width, height, (40 * i % 256, 120, 200))
                if body.get("response_format") == "url":
                    file_id = secrets.token_hex(8)
                    self.files[file_id] = image
                    data.append({"url": f"{self.result_base or self.url}/files/{file_id}.png"})
                else:
                    data.append({"b64_json": base64.b64encode(image).decode()})
            return _json(200, {"created": 1700000000, "data": data})
        if request.method == "GET" and request.path.startswith("/files/"):
            image = self.files.get(request.path[len("/files/"):].removesuffix(".png"))
            if image is not None:
                return 200, {"Content-Type": "image/png"}, image
        return super().route(request)


class FakeAsyncTasks(FakeHTTPServer):
    """An async task API. A task runs ``polls_to_finish`` polls, then ends as
    ``outcome`` (``"succeeded"``, ``"failed"`` or ``"never"`` to run forever);
    a failed task reports ``failure`` as its error."""

    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 polls_to_finish: int = 2, result: bytes | Streamed | None = None,
                 result_type: str = "video/mp4"):
        super().__init__(api_key, hang_s)
        self.polls_to_finish = polls_to_finish
        self.outcome = "succeeded"
        self.failure: dict = {"code": "internal_error", "message": "the fake broke"}
        self.result = result
        self.result_type = result_type
        self.result_url: str | None = None  # overrides the relative /results/<id>
        self.tasks: dict[str, dict] = {}
        self._poll_script: deque = deque()

    def fail_polls(self, *statuses: int) -> None:
        with self._lock:
            self._poll_script.extend(statuses)

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST" and request.path == "/v1/tasks"

    def garbage(self, request: Recorded) -> Response:
        return _json(200, {"task": "no id here"})

    def route(self, request: Recorded) -> Response:
        if self.scripted(request):
            task_id = "task_" + secrets.token_hex(6)
            self.tasks[task_id] = {"polls": 0, "request": request.json(), "cancelled": False}
            return _json(202, {"id": task_id})
        path = urlsplit(request.path).path
        if path.startswith("/v1/tasks/"):
            task = self.tasks.get(path[len("/v1/tasks/"):])
            if task is None:
                return _json(404, {"error": {"message": "no such task"}})
            if request.method == "DELETE":
                task["cancelled"] = True
                return 204, {}, b""
            with self._lock:
                failing = self._poll_script.popleft() if self._poll_script else None
            if failing:
                return self.error(failing)
            task["polls"] += 1
            task_id = path[len("/v1/tasks/"):]
            if self.outcome == "never" or task["polls"] < self.polls_to_finish:
                state = "queued" if task["polls"] == 1 else "running"
                return _json(200, {"id": task_id, "status": state,
                                   "progress": task["polls"] / (self.polls_to_finish + 1)})
            if self.outcome == "failed":
                return _json(200, {"id": task_id, "status": "failed", "error": self.failure})
            return _json(200, {"id": task_id, "status": "succeeded", "progress": 1.0,
                               "result_url": self.result_url or f"/results/{task_id}"})
        if request.method == "GET" and path.startswith("/results/"):
            data = self.result if self.result is not None else mp4_bytes()
            return 200, {"Content-Type": self.result_type}, data
        return super().route(request)


class FakeChatCompletions(FakeHTTPServer):
    """An OpenAI-compatible chat completions API answering ``content``."""

    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 content: str | Callable[[dict], str] = "{}"):
        super().__init__(api_key, hang_s)
        self.content = content

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST" and request.path == "/v1/chat/completions"

    def garbage(self, request: Recorded) -> Response:
        return _json(200, {"choices": []})

    def route(self, request: Recorded) -> Response:
        if not self.scripted(request):
            return super().route(request)
        body = request.json() or {}
        content = self.content(body) if callable(self.content) else self.content
        return _json(200, {"id": "chatcmpl-fake", "object": "chat.completion",
                           "model": body.get("model", "fake"),
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}]})


class FakeWebhookReceiver(FakeHTTPServer):
    """Records every POST; answers 204 (or the scripted behaviour)."""

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST"

    def route(self, request: Recorded) -> Response:
        if request.method == "POST":
            return 204, {}, b""
        return super().route(request)


@dataclass
class Drip:
    """One connection to a :class:`DripReceiver`: when it came and when the
    client gave up (monotonic seconds), and the request."""

    opened: float
    request: bytes = b""
    closed: float | None = None


class DripReceiver:
    """A webhook receiver that drips its answer: after reading the request it
    sends one byte every ``every_s`` (from the status line on, or, with
    ``status_line=False``, headers at once and then the body) until the
    client closes the connection. ``connections`` records each one."""

    def __init__(self, every_s: float = 1.0, status_line: bool = True):
        self.every_s, self.status_line = every_s, status_line
        self.connections: list[Drip] = []
        self._stop = threading.Event()
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        import select
        import time

        drip = Drip(time.monotonic())
        self.connections.append(drip)
        body = b"x" * 1000
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        with conn:
            conn.settimeout(5)
            try:
                while b"\r\n\r\n" not in drip.request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    drip.request += chunk
                if not self.status_line:
                    conn.sendall(answer)
                    answer = body
                for byte in answer:
                    if self._stop.is_set():
                        return
                    readable, _, _ = select.select([conn], [], [], self.every_s)
                    if readable and not conn.recv(65536):  # the client closed it
                        break
                    conn.sendall(bytes([byte]))
            except OSError:
                pass
            finally:
                drip.closed = time.monotonic()
