"""A fake of fal.ai's queue API over real HTTP on loopback, as documented
(https://docs.fal.ai/model-endpoints/queue; fal-js ``queue.ts``):

- ``POST /{model id}`` (body = the model's input, ``Authorization: Key <key>``)
  → ``{request_id, status: "IN_QUEUE", queue_position, status_url,
  response_url, cancel_url}``; the three URLs name ``owner/app`` only;
- ``GET /{owner}/{app}/requests/{id}/status`` → 202 ``IN_QUEUE`` (with
  ``queue_position``, counting down over ``queue_polls`` polls), 202
  ``IN_PROGRESS`` (``progress_polls`` polls), then 200 ``COMPLETED``;
- ``GET /{owner}/{app}/requests/{id}`` → the result (``{images: [{url, width,
  height, content_type}], seed, has_nsfw_concepts}`` or ``{video: {url}}``),
  400 while the request is not completed; a failed request answers with its
  error here;
- ``PUT /{owner}/{app}/requests/{id}/cancel`` → 202 ``CANCELLATION_REQUESTED``,
  400 ``ALREADY_COMPLETED`` or 404 ``NOT_FOUND``;
- ``GET /files/{name}`` → an output (fal serves them from its CDN; ``cdn``
  set to another fake serves them from there, another origin).

Errors use fal's shapes: model errors ``{"detail": [{loc, msg, type}]}``
(422 ``content_policy_violation`` for a refusal, see :data:`REFUSED`),
request errors ``{"detail": "...", "error_type": "..."}``. Every request is
recorded (``requests``); behaviours scripted with ``fail_next`` apply to the
submit call, ``fail_polls`` scripts status polls. ``outcome`` decides how a
request ends: ``"completed"``, ``"refused"`` (result is the 422 refusal),
``"nsfw"`` (completed, but ``has_nsfw_concepts`` true), ``"failed"`` (result
is a 500 request error), ``"invalid"`` (result is a 422 validation error) or
``"never"`` (stays in the queue).
"""

from __future__ import annotations

import secrets
from collections import deque
from urllib.parse import urlsplit

from tests.fakes.providers import FakeHTTPServer, Recorded, Response, _json, mp4_bytes, png_bytes

REFUSED = {"detail": [{"loc": ["body", "prompt"],
                       "msg": "The content was flagged by a content checker.",
                       "type": "content_policy_violation",
                       "url": "https://docs.fal.ai/errors#content_policy_violation"}]}
INVALID = {"detail": [{"loc": ["body", "image_size"], "msg": "Image size is too large.",
                       "type": "image_too_large"}]}
NAMESPACES = ("workflows", "comfy")


class FakeFal(FakeHTTPServer):
    """``output`` is ``"image"`` or ``"video"``; ``model_ids`` (when set) are
    the endpoint ids it serves (others: 404)."""

    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 queue_polls: int = 2, progress_polls: int = 1, output: str = "image",
                 model_ids: tuple[str, ...] = ()):
        super().__init__(None, hang_s)  # fal's key is "Key <key>", checked below
        self.key = api_key
        self.queue_polls, self.progress_polls = queue_polls, progress_polls
        self.output = output
        self.model_ids = model_ids
        self.outcome = "completed"
        self.return_urls = True      # False: the submit answer carries no URLs
        self.url_base: str | None = None  # the origin the returned URLs name
        self.cdn: FakeFal | None = None  # another fake serving the outputs (fal's CDN)
        self.max_images: int | None = None
        self.queue: dict[str, dict] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self._poll_script: deque = deque()

    def fail_polls(self, *behaviours) -> None:
        """The next status polls answer these statuses (``(status, body)`` too)."""
        with self._lock:
            self._poll_script.extend(behaviours)

    # ------------------------------------------------------------ protocol

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST"

    def error(self, status: int) -> Response:
        headers = {"Retry-After": "0"} if status == 429 else {}
        kind = {429: "rate_limited", 504: "request_timeout"}.get(status, "internal_error")
        if status >= 500:
            headers["X-Fal-Error-Type"] = kind
        return _json(status, {"detail": f"fake error {status}", "error_type": kind}, headers)

    def garbage(self, request: Recorded) -> Response:
        return _json(200, {"status": "IN_QUEUE"})

    def route(self, request: Recorded) -> Response:
        path = urlsplit(request.path).path
        if request.method == "GET" and path.startswith("/files/"):
            found = self.files.get(path[len("/files/"):])
            if found is None:
                return _json(404, {"detail": "Not Found"})
            return 200, {"Content-Type": found[1]}, found[0]
        if self.key and request.header("Authorization") != f"Key {self.key}":
            return _json(401, {"detail": "No user found for Key ID and Secret"})
        if request.method == "POST" and "/requests/" not in path:
            return self._submit(request, path.strip("/"))
        app, _, rest = path.strip("/").partition("/requests/")
        request_id, _, action = rest.partition("/")
        entry = self.queue.get(request_id)
        if entry is None or entry["app"] != app:
            return _json(404, {"detail": "Request not found", "status": "NOT_FOUND"})
        if request.method == "GET" and action == "status":
            return self._status(request_id, entry, request)
        if request.method == "GET" and action == "":
            return self._result(entry)
        if request.method == "PUT" and action == "cancel":
            if entry["state"] == "COMPLETED":
                return _json(400, {"status": "ALREADY_COMPLETED"})
            entry["cancelled"] = True
            return _json(202, {"status": "CANCELLATION_REQUESTED"})
        return _json(405, {"detail": "Method Not Allowed"})

    def _app(self, model_id: str) -> str:
        parts = model_id.split("/")
        return "/".join(parts[: 3 if parts[0] in NAMESPACES else 2])

    def _submit(self, request: Recorded, model_id: str) -> Response:
        if len(model_id.split("/")) < 2 or (self.model_ids and model_id not in self.model_ids):
            return _json(404, {"detail": f"Application '{model_id}' not found"})
        if "json" not in (request.header("Content-Type") or ""):
            return _json(422, {"detail": [{"loc": ["body"], "msg": "JSON body expected",
                                           "type": "value_error"}]})
        try:
            body = request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            return _json(422, {"detail": [{"loc": ["body", "prompt"], "msg": "field required",
                                           "type": "missing"}]})
        request_id = f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}"
        app = self._app(model_id)
        self.queue[request_id] = {"app": app, "model": model_id, "input": body, "polls": 0,
                                  "state": "IN_QUEUE", "cancelled": False}
        answer = {"request_id": request_id, "status": "IN_QUEUE",
                  "queue_position": self.queue_polls}
        if self.return_urls:
            answer.update(self._urls(app, request_id))
        return _json(200, answer)

    def _urls(self, app: str, request_id: str) -> dict:
        base = f"{self.url_base or self.url}/{app}/requests/{request_id}"
        return {"response_url": base, "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel"}

    def _status(self, request_id: str, entry: dict, request: Recorded) -> Response:
        with self._lock:
            failing = self._poll_script.popleft() if self._poll_script else None
        if isinstance(failing, tuple):
            if failing[1].get("status") in ("COMPLETED", "FAILED", "CANCELED"):
                entry["state"] = "COMPLETED"  # a scripted end ends the request
            return _json(*failing)
        if failing:
            return self.error(int(failing))
        entry["polls"] += 1
        polls = entry["polls"]
        urls = self._urls(entry["app"], request_id)
        if self.outcome == "never" or entry["cancelled"] or polls <= self.queue_polls:
            position = max(0, self.queue_polls - polls)
            return _json(202, {"status": "IN_QUEUE", "queue_position": position,
                               "request_id": request_id, **urls})
        if polls <= self.queue_polls + self.progress_polls:
            entry["state"] = "IN_PROGRESS"
            logs = [] if "logs=1" in request.path else None
            return _json(202, {"status": "IN_PROGRESS", "request_id": request_id, "logs": logs,
                               **urls})
        entry["state"] = "COMPLETED"
        return _json(200, {"status": "COMPLETED", "request_id": request_id, "logs": None,
                           "metrics": {"inference_time": 0.42}, **urls})

    def _result(self, entry: dict) -> Response:
        if entry["state"] != "COMPLETED":
            return _json(400, {"detail": "Request is still in progress"})
        if self.outcome == "refused":
            return _json(422, REFUSED, {"X-Fal-Retryable": "false"})
        if self.outcome == "invalid":
            return _json(422, INVALID, {"X-Fal-Retryable": "false"})
        if self.outcome == "failed":
            return _json(500, {"detail": "Runner disconnected", "error_type":
                               "runner_disconnected"}, {"X-Fal-Error-Type": "runner_disconnected"})
        body = entry["input"]
        if self.output == "video":
            return _json(200, {"video": {"url": self._file(mp4_bytes(), "video/mp4", "mp4"),
                                         "content_type": "video/mp4"}})
        size = body.get("image_size")
        width, height = (size["width"], size["height"]) if isinstance(size, dict) else (64, 64)
        count = int(body.get("num_images", 1))
        if self.max_images is not None:
            count = min(count, self.max_images)
        images = [{"url": self._file(png_bytes(width, height, (30 * i % 256, 90, 160)),
                                     "image/png", "png"),
                   "width": width, "height": height, "content_type": "image/png"}
                  for i in range(count)]
        return _json(200, {"images": images, "seed": body.get("seed", 1234),
                           "prompt": body.get("prompt"), "timings": {"inference": 0.4},
                           "has_nsfw_concepts": [self.outcome == "nsfw"] * count})

    def _file(self, data: bytes, content_type: str, ext: str) -> str:
        name = f"{secrets.token_hex(8)}.{ext}"
        server = self.cdn or self
        server.files[name] = (data, content_type)
        return f"{server.url}/files/{name}"

    # ------------------------------------------------------------ for tests

    def submitted(self) -> list[dict]:
        """The inputs of every accepted submit, in order."""
        return [entry["input"] for entry in self.queue.values()]

    def cancelled(self) -> list[str]:
        return [rid for rid, entry in self.queue.items() if entry["cancelled"]]
