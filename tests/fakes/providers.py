"""Fake model providers and webhook receivers over real HTTP on loopback.

One server per protocol, each a ``ThreadingHTTPServer`` in a thread:

- :class:`FakeOpenAIImages`: ``POST /v1/images/generations`` and the
  multipart ``POST /v1/images/edits`` (OpenAI images API: ``b64_json`` or
  ``url`` results; urls served from ``/files/<id>``).
- :class:`FakeAsyncTasks`: ``POST /v1/tasks``, ``GET /v1/tasks/<id>`` (queued,
  running with progress, then succeeded with a relative ``result_url`` or
  failed), ``DELETE /v1/tasks/<id>``; results served from ``/results/<id>``.
- :class:`FakeVendorTasks`: a vendor's own task API in another shape
  (``{"data": {"task": {"id"}}}``, states ``SUCCESS``/``FAILED``/...), for the
  generic ``async_task`` adapter configured with non-default paths and pointers.
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

#: What the service knows about a job and its owner; none of it may reach a provider.
ACCOUNT = {
    "job_id": "0190a5c3-0000-7000-8000-00000000abcd",
    "user_id": "0190a5c3-1111-7000-8000-00000000dcba",
    "email": "owner.sentinel@example.org",
    "api_key": "drk_live_sentinelsentinel",
    "ip": "203.0.113.77",
    "webhook_url": "https://hooks.sentinel.example/x",
}
#: The headers any request of ours may carry (an HTTP client's, and the key's).
PLAIN_HEADERS = frozenset({"host", "user-agent", "accept-encoding", "accept", "connection",
                           "content-length", "content-type", "authorization"})


def assert_nothing_identifying(fake: FakeHTTPServer, also_headers=()) -> None:
    """Every request ``fake`` received carries only :data:`PLAIN_HEADERS` (and
    ``also_headers``, the vendor's own) and nothing of :data:`ACCOUNT` in its
    path, headers or body."""
    allowed = PLAIN_HEADERS | {name.lower() for name in also_headers}
    assert fake.requests, "the fake received nothing"
    for recorded in fake.requests:
        assert {h.lower() for h in recorded.headers} <= allowed, recorded.headers
        raw = json.dumps(recorded.headers) + recorded.path + recorded.body.decode("latin-1")
        for value in ACCOUNT.values():
            assert value not in raw, value


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

    def authorized(self, request: Recorded) -> bool:
        """Does the request carry the key (``Authorization: Bearer <api_key>``)?"""
        return request.header("Authorization") == f"Bearer {self.api_key}"

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
        if self.api_key and not self.authorized(request) and self.scripted(request):
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


def multipart_form(request: Recorded) -> dict[str, list[tuple[str | None, str, bytes]]]:
    """A ``multipart/form-data`` body's parts: name -> [(file name, content
    type, bytes)] in order; ``ValueError`` when the body is not one."""
    from email.parser import BytesParser
    from email.policy import HTTP

    content_type = request.header("Content-Type") or ""
    if not content_type.startswith("multipart/form-data") or "boundary=" not in content_type:
        raise ValueError("not multipart/form-data")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.body)
    if not message.is_multipart():
        raise ValueError("no parts")
    parts: dict[str, list[tuple[str | None, str, bytes]]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_content_disposition() != "form-data" or not name:
            raise ValueError("a part without a form-data name")
        parts.setdefault(name, []).append((part.get_filename(), part.get_content_type(),
                                           part.get_payload(decode=True) or b""))
    return parts


class FakeOpenAIImages(FakeHTTPServer):
    """An OpenAI-compatible images API: ``POST /v1/images/generations`` (JSON)
    and ``POST /v1/images/edits`` (``multipart/form-data`` as OpenAI documents
    it: the ``image`` file, or ``image[]`` files, a ``prompt``, optional
    ``mask``, ``model``, ``n``, ``size``, ``response_format``, ...; any other
    part, a missing image or prompt, or a non-image file is a 400
    ``invalid_request_error``). A GPT image model (``gpt-image-*``) refuses
    ``response_format``, as OpenAI does. ``result_base`` (default: this
    server) is where ``url`` results point; ``edits`` records each edit's
    parsed form."""

    EDIT_FIELDS = {"image", "image[]", "prompt", "mask", "model", "n", "size", "quality",
                   "response_format", "input_fidelity", "output_format", "output_compression",
                   "background", "user"}
    #: what self-hosted servers take besides OpenAI's (``extended_params``)
    EXTENDED_FIELDS = {"negative_prompt", "seed", "strength"}

    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 result_base: str | None = None):
        super().__init__(api_key, hang_s)
        self.result_base = result_base
        self.max_images: int | None = None  # answer with fewer images than asked
        self.files: dict[str, bytes] = {}
        self.edits: list[dict[str, list[tuple[str | None, str, bytes]]]] = []

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST" and request.path in ("/v1/images/generations",
                                                             "/v1/images/edits")

    def garbage(self, request: Recorded) -> Response:
        return _json(200, {"data": [{"b64_json": base64.b64encode(b"not an image").decode()}]})

    @staticmethod
    def invalid(message: str, param: str | None = None,
                code: str | None = "invalid_value") -> Response:
        return _json(400, {"error": {"message": message, "type": "invalid_request_error",
                                     "param": param, "code": code}})

    def _edit_body(self, request: Recorded) -> dict | Response:
        """An edit's text parts as a body, after checking the form's shape."""
        try:
            form = multipart_form(request)
        except ValueError as exc:
            return self.invalid(f"Invalid multipart body: {exc}", None, None)
        unknown = sorted(set(form) - self.EDIT_FIELDS - self.EXTENDED_FIELDS)
        if unknown:
            return self.invalid(f"Unknown parameter: '{unknown[0]}'.", unknown[0],
                                "unknown_parameter")
        images = form.get("image", []) + form.get("image[]", [])
        if not images:
            return self.invalid("Missing required parameter: 'image'.", "image",
                                "missing_required_parameter")
        for filename, content_type, data in images:
            if not filename or content_type not in ("image/png", "image/jpeg", "image/webp"):
                return self.invalid("Invalid file 'image': unsupported mimetype "
                                    f"('{content_type}').", "image", "invalid_image_format")
            try:
                Image.open(io.BytesIO(data)).verify()
            except Exception:
                return self.invalid("Invalid image file.", "image", "invalid_image")
        texts = {}
        for name, values in form.items():
            if name in ("image", "image[]", "mask"):
                continue
            if len(values) != 1 or values[0][0] is not None:
                return self.invalid(f"Invalid value for '{name}'.", name)
            texts[name] = values[0][2].decode()
        if not texts.get("prompt"):
            return self.invalid("Missing required parameter: 'prompt'.", "prompt",
                                "missing_required_parameter")
        self.edits.append(form)
        return texts

    def route(self, request: Recorded) -> Response:
        if self.scripted(request):
            if request.path == "/v1/images/edits":
                body = self._edit_body(request)
                if isinstance(body, tuple):
                    return body
            else:
                body = request.json() or {}
            if str(body.get("model") or "").startswith("gpt-image") and "response_format" in body:
                return self.invalid("Unknown parameter: 'response_format'.", "response_format",
                                    "unknown_parameter")
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


class FakeVendorTasks(FakeHTTPServer):
    """A vendor's own asynchronous image-to-video task API, in a shape unlike
    Darkroom's default protocol (the one deploy/providers/seed-001.yaml maps):

    - ``POST /v2/videos`` ``{"model", "input": {"prompt", "image" (a
      ``data:image/...;base64,`` URI), "shots"?}, "parameters"?}`` -> 200
      ``{"data": {"task": {"id": "<id>"}}}`` (a 400 ``invalid_request`` when the
      image is not a data URI or the prompt is missing);
    - ``GET /v2/videos/<id>`` -> ``{"data": {"state": "PENDING" | "RUNNING" |
      "SUCCESS" | "FAILED" | "BLOCKED" | "CANCELLED", "percent": 0-100,
      "outputs": ["<absolute URL>"], "error": {"code", "message"}}}``;
    - ``POST /v2/videos/<id>/cancel`` -> ``{"data": {"state": "CANCELLED"}}``;
    - results at ``/media/<id>.mp4``.

    A task runs ``polls_to_finish`` polls, then ends as ``outcome``: ``"SUCCESS"``,
    ``"FAILED"`` (with ``failure`` as its error), ``"BLOCKED"``, ``"CANCELLED"``,
    ``"LOST"`` (a state the vendor never documented) or ``"never"``. The key
    goes in ``auth_header`` (``auth_scheme`` before it, when set).
    """

    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 polls_to_finish: int = 2, auth_header: str = "Authorization",
                 auth_scheme: str | None = "Bearer"):
        super().__init__(api_key, hang_s)
        self.polls_to_finish = polls_to_finish
        self.auth_header, self.auth_scheme = auth_header, auth_scheme
        self.outcome = "SUCCESS"
        self.failure: dict = {"code": "gpu_lost", "message": "the worker went away"}
        self.tasks: dict[str, dict] = {}
        self._poll_script: deque = deque()

    def fail_polls(self, *statuses: int) -> None:
        with self._lock:
            self._poll_script.extend(statuses)

    def authorized(self, request: Recorded) -> bool:
        key = f"{self.auth_scheme} {self.api_key}" if self.auth_scheme else self.api_key
        return request.header(self.auth_header) == key

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST" and request.path == "/v2/videos"

    def garbage(self, request: Recorded) -> Response:
        return _json(200, {"data": {"job": "no task here"}})

    def route(self, request: Recorded) -> Response:
        if self.scripted(request):
            body = request.json() or {}
            given = body.get("input") if isinstance(body, dict) else None
            if not isinstance(given, dict) or not given.get("prompt") \
                    or not str(given.get("image", "")).startswith("data:image/"):
                return _json(400, {"error": {"code": "invalid_request",
                                             "message": "input.prompt and input.image needed"}})
            task_id = "vt-" + secrets.token_hex(6)
            self.tasks[task_id] = {"polls": 0, "request": body, "cancelled": False}
            return _json(200, {"data": {"task": {"id": task_id}}, "request_id": "r-1"})
        path = urlsplit(request.path).path
        if path.startswith("/v2/videos/"):
            task_id, _, action = path[len("/v2/videos/"):].partition("/")
            task = self.tasks.get(task_id)
            if task is None or not self.authorized(request):
                return _json(404, {"error": {"code": "not_found", "message": "no such task"}})
            if request.method == "POST" and action == "cancel":
                task["cancelled"] = True
                return _json(200, {"data": {"state": "CANCELLED"}})
            with self._lock:
                failing = self._poll_script.popleft() if self._poll_script else None
            if failing:
                return self.error(failing)
            task["polls"] += 1
            if self.outcome == "never" or task["polls"] < self.polls_to_finish:
                state = "PENDING" if task["polls"] == 1 else "RUNNING"
                return _json(200, {"data": {"state": state, "percent": 100 * task["polls"]
                                            // (self.polls_to_finish + 1)}})
            if self.outcome == "SUCCESS":
                return _json(200, {"data": {"state": "SUCCESS", "percent": 100,
                                            "outputs": [f"{self.url}/media/{task_id}.mp4"]}})
            error = self.failure if self.outcome == "FAILED" else None
            return _json(200, {"data": {"state": self.outcome, "error": error}})
        if request.method == "GET" and path.startswith("/media/"):
            return 200, {"Content-Type": "video/mp4"}, mp4_bytes()
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
