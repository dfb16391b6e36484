"""A fake ComfyUI server over real HTTP on loopback, speaking the routes of
ComfyUI's ``server.py`` (also under ``/api``):

- ``POST /prompt {"prompt": graph, "client_id"}`` → ``{prompt_id, number,
  node_errors}``; a body without ``prompt`` is 400 ``no_prompt``, a graph
  that does not validate (a node without ``class_type``/``inputs``, a link to
  a missing node, a ``LoadImage`` of a file never uploaded, no ``SaveImage``
  or ``PreviewImage``) is 400 ``{"error": {...}, "node_errors": {...}}``.
- ``GET /history/{id}`` → ``{}`` until the run has been polled
  ``polls_to_finish`` times (or forever when ``outcome == "never"``), then the
  entry with ``outputs`` (one PNG per ``EmptyLatentImage.batch_size`` per
  ``SaveImage``/``PreviewImage``, sized by the latent or the uploaded image)
  and ``status``; ``outcome == "failed"`` ends with ``status_str: "error"``
  and an ``execution_error`` message made of ``failure``.
- ``GET /view?filename&subfolder&type`` → the file's bytes, or 404.
- ``POST /upload/image`` (multipart ``image`` + ``type``/``overwrite``/
  ``subfolder``) → ``{name, subfolder, type}``.
- ``GET /queue``, ``POST /queue {"delete": [...]}``, ``POST /interrupt``,
  ``POST /history {"delete": [...]}``, ``GET /system_stats``, ``GET /prompt``.

- ``GET /ws?clientId=<id>`` (a websocket, RFC 6455): ``status`` on connect;
  a prompt submitted with that ``client_id`` then runs by itself, without
  ``/history`` being polled: ``execution_start``, ``executing`` (node),
  ``progress`` (value/max), then, once it is in the history, ``executed`` and
  ``execution_success``, or ``execution_error`` (``outcome == "failed"``),
  and last ``executing`` with ``node: null``. ``websocket = False`` answers
  the upgrade 404 (a ComfyUI behind a proxy without websockets);
  ``ws_drop_after = N`` closes the socket after N messages of a run.

``healthy = False`` makes ``/system_stats`` answer 503. ``hold`` (an Event,
set) keeps every run unfinished until it is cleared. Every request is
recorded; ``fail_next`` scripts ``POST /prompt`` (see tests/fakes/providers.py).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import io
import json
import socket
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from tests.fakes.providers import FakeHTTPServer, Recorded, Response, _json, png_bytes

OUTPUT_CLASSES = {"SaveImage": "output", "PreviewImage": "temp"}
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
#: The issue's example mappings for the workflows shipped in deploy/providers/comfyui.
TXT2IMG = {"file": "comfyui/txt2img.json",
           "inputs": {"prompt": "6.text", "negative_prompt": "7.text", "seed": "3.seed",
                      "width": "5.width", "height": "5.height", "n": "5.batch_size"}}
IMG2IMG = {"file": "comfyui/img2img.json",
           "inputs": {"prompt": "6.text", "seed": "3.seed", "image": "10.image",
                      "strength": "3.denoise"}}


def _form(request: Recorded) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body as ``{field: (filename, bytes)}``."""
    content_type = request.header("Content-Type") or ""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + request.body)
    if not message.is_multipart():
        return {}
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


class FakeComfyUI(FakeHTTPServer):
    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 polls_to_finish: int = 2):
        super().__init__(api_key, hang_s)
        self.polls_to_finish = polls_to_finish
        self.outcome = "succeeded"
        self.failure = {"exception_type": "torch.OutOfMemoryError",
                        "exception_message": "CUDA out of memory"}
        self.healthy = True
        self.hold = threading.Event()
        self.prompts: dict[str, dict] = {}  # prompt id -> {graph, client_id, polls, number}
        self.uploads: dict[str, bytes] = {}  # "subfolder/name" or "name" -> bytes
        self.files: dict[tuple[str, str, str], bytes] = {}  # (type, subfolder, name) -> bytes
        self.history: dict[str, dict] = {}
        self.deleted: list[str] = []
        self.interrupted: list[str] = []
        self._number = 0
        self.websocket = True
        self.ws_drop_after: int | None = None
        self.sockets: dict[str, _Socket] = {}  # client id -> open websocket
        self.ws_sent: list[dict] = []  # every websocket message sent

    # ------------------------------------------------------------ the websocket

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        if self._path(Recorded(handler.command, handler.path, {}, b"")) == "/ws" \
                and self.websocket \
                and (handler.headers.get("Upgrade") or "").lower() == "websocket":
            self._websocket(handler)
        else:
            super()._handle(handler)

    def _websocket(self, handler: BaseHTTPRequestHandler) -> None:
        """The handshake, then hold the connection (answering pings and the
        close) while runs send their messages from their own threads."""
        request = Recorded(handler.command, handler.path, dict(handler.headers.items()), b"")
        with self._lock:
            self.requests.append(request)
        key = handler.headers.get("Sec-WebSocket-Key") or ""
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        handler.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                             ).encode())
        handler.wfile.flush()
        handler.close_connection = True
        client_id = (parse_qs(urlsplit(handler.path).query).get("clientId") or [""])[0]
        sock = _Socket(handler.connection)
        self.sockets[client_id] = sock
        self._send(sock, "status", {"status": {"exec_info": {"queue_remaining": 0}},
                                    "sid": client_id})
        try:
            while not self._release.is_set():
                opcode, payload = sock.read()
                if opcode == 0x8:  # close: answer it and end
                    sock.write(0x8, payload[:2])
                    break
                if opcode == 0x9:
                    sock.write(0xA, payload)
        except OSError:
            pass
        finally:
            sock.closed = True
            if self.sockets.get(client_id) is sock:
                del self.sockets[client_id]

    def _send(self, sock: _Socket, kind: str, data: dict) -> None:
        message = {"type": kind, "data": data}
        with self._lock:
            self.ws_sent.append(message)
        sock.write(0x1, json.dumps(message).encode())

    def _run_over_websocket(self, prompt_id: str, sock: _Socket) -> None:
        """What ComfyUI's prompt worker sends while it runs a prompt."""
        prompt = self.prompts[prompt_id]
        first = next(iter(prompt["graph"]))
        steps = [("execution_start", {"prompt_id": prompt_id}),
                 ("execution_cached", {"nodes": [], "prompt_id": prompt_id}),
                 ("executing", {"node": first, "display_node": first, "prompt_id": prompt_id}),
                 ("progress", {"value": 1, "max": 2, "prompt_id": prompt_id, "node": first}),
                 ("progress", {"value": 2, "max": 2, "prompt_id": prompt_id, "node": first})]
        sent = 0
        try:
            for kind, data in steps:
                if self.ws_drop_after is not None and sent >= self.ws_drop_after:
                    sock.drop()
                    return
                self._send(sock, kind, data)
                sent += 1
            while (self.hold.is_set() or self.outcome == "never") \
                    and not self._release.is_set() and not sock.closed:
                time.sleep(0.02)
            if sock.closed or self._release.is_set():
                return
            with self._lock:
                if prompt_id not in self.history:
                    self.history[prompt_id] = self._finish(prompt_id, prompt)
                entry = self.history[prompt_id]
            if self.outcome == "failed":
                error = entry["status"]["messages"][-1][1]
                self._send(sock, "execution_error", error)
            else:
                for node, output in entry["outputs"].items():
                    self._send(sock, "executed", {"node": node, "display_node": node,
                                                  "output": output, "prompt_id": prompt_id})
                self._send(sock, "execution_success", {"prompt_id": prompt_id})
            self._send(sock, "executing", {"node": None, "prompt_id": prompt_id})
        except OSError:
            pass

    @staticmethod
    def _path(request: Recorded) -> str:
        path = urlsplit(request.path).path
        return path[len("/api"):] if path.startswith("/api/") else path

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST" and self._path(request) == "/prompt"

    def error(self, status: int) -> Response:
        if status == 400:
            return self._invalid("prompt_outputs_failed_validation",
                                 "Prompt outputs failed validation", {})
        return super().error(status)

    def garbage(self, request: Recorded) -> Response:
        return _json(200, {"number": 1, "node_errors": {}})

    @staticmethod
    def _invalid(kind: str, message: str, node_errors: dict) -> Response:
        return _json(400, {"error": {"type": kind, "message": message, "details": "",
                                     "extra_info": {}}, "node_errors": node_errors})

    # ------------------------------------------------------------ routes

    def route(self, request: Recorded) -> Response:
        path, method = self._path(request), request.method
        if method == "POST" and path == "/prompt":
            return self._prompt(request)
        if method == "GET" and path.startswith("/history/"):
            return self._poll(path[len("/history/"):])
        if method == "GET" and path == "/view":
            query = {k: v[0] for k, v in parse_qs(urlsplit(request.path).query,
                                                   keep_blank_values=True).items()}
            data = self.files.get((query.get("type", "output"), query.get("subfolder", ""),
                                   query.get("filename", "")))
            if data is None:
                return 404, {"Content-Type": "text/plain"}, b"404: Not Found"
            return 200, {"Content-Type": "image/png"}, data
        if method == "POST" and path == "/upload/image":
            return self._upload(request)
        if method == "GET" and path == "/queue":
            running = [[p["number"], pid, p["graph"], {"client_id": p["client_id"]}, []]
                       for pid, p in self.prompts.items()
                       if pid not in self.history and pid not in self.deleted]
            return _json(200, {"queue_running": running[:1], "queue_pending": running[1:]})
        if method == "POST" and path == "/queue":
            self.deleted += (request.json() or {}).get("delete", [])
            return 200, {}, b""
        if method == "POST" and path == "/interrupt":
            body = request.json() if request.body else {}
            self.interrupted.append((body or {}).get("prompt_id"))
            return 200, {}, b""
        if method == "POST" and path == "/history":
            for pid in (request.json() or {}).get("delete", []):
                self.history.pop(pid, None)
            return 200, {}, b""
        if method == "GET" and path == "/system_stats":
            if not self.healthy:
                return _json(503, {"error": "unhealthy"})
            return _json(200, {"system": {"os": "posix", "comfyui_version": "0.3.64"},
                               "devices": [{"name": "fake", "type": "cuda", "index": 0}]})
        if method == "GET" and path == "/prompt":
            return _json(200, {"exec_info": {"queue_remaining": len(self.prompts)
                                             - len(self.history)}})
        return 404, {"Content-Type": "text/plain"}, b"404: Not Found"

    def _prompt(self, request: Recorded) -> Response:
        try:
            body = request.json()
        except ValueError:
            return 400, {}, b"bad json"
        if not isinstance(body, dict) or "prompt" not in body:
            return self._invalid("no_prompt", "No prompt provided", {})
        graph = body["prompt"]
        errors = {}
        for node_id, node in (graph.items() if isinstance(graph, dict) else ()):
            problem = None
            if not isinstance(node, dict) or "class_type" not in node \
                    or not isinstance(node.get("inputs"), dict):
                problem = "missing class_type or inputs"
            else:
                for value in node["inputs"].values():
                    if isinstance(value, list) and len(value) == 2 \
                            and str(value[0]) not in graph:
                        problem = f"link to missing node {value[0]}"
                if node["class_type"] == "LoadImage" \
                        and node["inputs"].get("image") not in self.uploads:
                    problem = "Invalid image file"
            if problem:
                errors[node_id] = {"errors": [{"type": "value_not_valid", "message": problem,
                                               "details": "", "extra_info": {}}],
                                   "dependent_outputs": [], "class_type": str(
                                       node.get("class_type") if isinstance(node, dict) else "")}
        if not isinstance(graph, dict) or not any(
                isinstance(n, dict) and n.get("class_type") in OUTPUT_CLASSES
                for n in graph.values()):
            return self._invalid("prompt_no_outputs", "Prompt has no outputs", errors)
        if errors:
            return self._invalid("prompt_outputs_failed_validation",
                                 "Prompt outputs failed validation", errors)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        with self._lock:
            self._number += 1
            self.prompts[prompt_id] = {"graph": graph, "client_id": body.get("client_id"),
                                       "polls": 0, "number": self._number}
        sock = self.sockets.get(str(body.get("client_id")))
        if sock is not None:
            threading.Thread(target=self._run_over_websocket, args=(prompt_id, sock),
                             daemon=True).start()
        return _json(200, {"prompt_id": prompt_id, "number": self._number, "node_errors": {}})

    def _upload(self, request: Recorded) -> Response:
        form = _form(request)
        filename, data = form.get("image", (None, b""))
        if not filename or not data:
            return 400, {}, b""
        subfolder = (form.get("subfolder") or (None, b""))[1].decode()
        kind = (form.get("type") or (None, b"input"))[1].decode() or "input"
        key = f"{subfolder}/{filename}" if subfolder else filename
        self.uploads[key] = data
        return _json(200, {"name": filename, "subfolder": subfolder, "type": kind})

    def _poll(self, prompt_id: str) -> Response:
        prompt = self.prompts.get(prompt_id)
        if prompt_id in self.history:
            return _json(200, {prompt_id: self.history[prompt_id]})
        if prompt is None or prompt_id in self.deleted:
            return _json(200, {})
        prompt["polls"] += 1
        if self.outcome == "never" or self.hold.is_set() \
                or prompt["polls"] < self.polls_to_finish:
            return _json(200, {})
        self.history[prompt_id] = self._finish(prompt_id, prompt)
        return _json(200, {prompt_id: self.history[prompt_id]})

    def _finish(self, prompt_id: str, prompt: dict) -> dict:
        graph = prompt["graph"]
        item = [prompt["number"], prompt_id, graph, {"client_id": prompt["client_id"]}, []]
        if self.outcome == "failed":
            node_id = next(iter(graph))
            error = {"prompt_id": prompt_id, "node_id": node_id,
                     "node_type": graph[node_id]["class_type"], "executed": [],
                     "traceback": [], "current_inputs": {}, "current_outputs": [],
                     **self.failure}
            return {"prompt": item, "outputs": {}, "meta": {}, "status": {
                "status_str": "error", "completed": False,
                "messages": [["execution_start", {"prompt_id": prompt_id}],
                             ["execution_error", error]]}}
        width, height, count = 64, 64, 1
        for node in graph.values():
            if node["class_type"] == "EmptyLatentImage":
                width, height = int(node["inputs"]["width"]), int(node["inputs"]["height"])
                count = int(node["inputs"].get("batch_size", 1))
            if node["class_type"] == "LoadImage":
                with Image.open(io.BytesIO(self.uploads[node["inputs"]["image"]])) as source:
                    width, height = source.size
        outputs = {}
        for node_id, node in graph.items():
            kind = OUTPUT_CLASSES.get(node["class_type"])
            if kind is None:
                continue
            images = []
            for i in range(count):
                name = f"{node['inputs'].get('filename_prefix', 'ComfyUI')}_{len(self.files) + 1:05d}_.png"
                self.files[(kind, "", name)] = png_bytes(width, height, (30 * i % 256, 90, 160))
                images.append({"filename": name, "subfolder": "", "type": kind})
            outputs[node_id] = {"images": images}
        return {"prompt": item, "outputs": outputs, "meta": {}, "status": {
            "status_str": "success", "completed": True,
            "messages": [["execution_start", {"prompt_id": prompt_id}],
                         ["execution_success", {"prompt_id": prompt_id}]]}}


class _Socket:
    """The server side of one websocket: unmasked frames out, masked ones in."""

    def __init__(self, connection: socket.socket):
        self.connection = connection
        self.closed = False
        self._write = threading.Lock()

    def write(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
        with self._write:
            self.connection.sendall(header + payload)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.connection.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the client went away")
            data += chunk
        return data

    def read(self) -> tuple[int, bytes]:
        first, second = self._exactly(2)
        size = second & 0x7F
        if size == 126:
            size, = struct.unpack("!H", self._exactly(2))
        elif size == 127:
            size, = struct.unpack("!Q", self._exactly(8))
        mask = self._exactly(4) if second & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._exactly(size)))
        return first & 0x0F, payload

    def drop(self) -> None:
        """Close the connection without a close frame (a proxy that cut it)."""
        self.closed = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
