"""A fake of Alibaba Cloud DashScope's asynchronous task API over real HTTP on
loopback, as its public API reference describes it (base path ``/api/v1``):

- ``POST /api/v1/services/aigc/text2image/image-synthesis`` (qwen-image) and
  ``POST /api/v1/services/aigc/video-generation/video-synthesis`` (Wan i2v):
  refuse a call without ``X-DashScope-Async: enable`` (403
  ``AccessDenied``), a wrong key (401 ``InvalidApiKey``), a body that is not
  ``{"model", "input", "parameters"}`` as documented (400
  ``InvalidParameter``); answer ``{"output": {"task_id", "task_status":
  "PENDING"}, "request_id"}``;
- ``GET /api/v1/tasks/<id>``: PENDING, then RUNNING, then (after
  ``polls_to_finish`` polls) SUCCEEDED with ``results[].url`` (images) or
  ``video_url`` (video), or FAILED with ``code``/``message`` (``outcome =
  "failed"``, ``failure``), or RUNNING forever (``outcome = "never"``); an
  unknown id is ``UNKNOWN``;
- ``POST /api/v1/tasks/<id>/cancel``: cancels a PENDING task, else 400
  ``UnsupportedOperation``;
- ``GET /oss/<file>``: the results (PNG or MP4); the real ones are signed
  OSS URLs on another host, which ``oss`` (another instance) stands for.

Errors use DashScope's flat body ``{"request_id", "code", "message"}``:
behaviour ``"refuse"`` is 400 ``DataInspectionFailed``, ``429`` is
``Throttling.RateQuota`` (with ``Retry-After`` when ``retry_after`` is set).
Every request is recorded (see tests/fakes/providers.py).
"""

from __future__ import annotations

import secrets
import uuid
from collections import deque
from urllib.parse import urlsplit

from tests.fakes.providers import FakeHTTPServer, Recorded, Response, _json, mp4_bytes, png_bytes

API = "/api/v1"
IMAGE_PATH = f"{API}/services/aigc/text2image/image-synthesis"
VIDEO_PATH = f"{API}/services/aigc/video-generation/video-synthesis"
QWEN_SIZES = {"1664*928", "1472*1104", "1328*1328", "1104*1472", "928*1664"}
ERROR_CODES = {400: "InvalidParameter", 401: "InvalidApiKey", 403: "AccessDenied",
               404: "ModelNotFound", 429: "Throttling.RateQuota", 500: "InternalError",
               503: "ServiceUnavailable"}


def _error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return _json(status, {"request_id": str(uuid.uuid4()), "code": code, "message": message},
                 headers)


class FakeDashScope(FakeHTTPServer):
    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 polls_to_finish: int = 2):
        super().__init__(api_key, hang_s)
        self.polls_to_finish = polls_to_finish
        self.outcome = "succeeded"  # "failed", "never" or "partial" (items fail)
        self.failure = {"code": "InternalError", "message": "the fake broke"}
        self.retry_after: str | None = None
        self.tasks: dict[str, dict] = {}
        self.files: dict[str, tuple[str, bytes]] = {}
        self.oss: FakeDashScope | None = None  # where results are served (default: here)
        self._poll_script: deque = deque()

    def fail_polls(self, *behaviours) -> None:
        with self._lock:
            self._poll_script.extend(behaviours)

    @property
    def base_url(self) -> str:
        return self.url + API

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST" and request.path in (IMAGE_PATH, VIDEO_PATH)

    def error(self, status: int) -> Response:
        headers = {"Retry-After": self.retry_after} if status == 429 and self.retry_after else {}
        return _error(status, ERROR_CODES.get(status, "InternalError"), f"fake error {status}",
                      headers)

    def garbage(self, request: Recorded) -> Response:
        return _json(200, {"request_id": "r", "output": {"task_status": "PENDING"}})

    def _handle(self, handler) -> None:
        # the "refuse" behaviour is DashScope's moderation answer, not OpenAI's
        with self._lock:
            if self._script and self._script[0] == "refuse":
                self._script[0] = (400, {"request_id": str(uuid.uuid4()),
                                         "code": "DataInspectionFailed",
                                         "message": "Input data may contain inappropriate "
                                                    "content."})
        super()._handle(handler)

    # ------------------------------------------------------------ routes

    def route(self, request: Recorded) -> Response:
        path = urlsplit(request.path).path
        if path.startswith("/oss/") and request.method == "GET":
            found = self.files.get(path[len("/oss/"):])
            if found is None:
                return 404, {"Content-Type": "application/xml"}, b"<Error>NoSuchKey</Error>"
            return 200, {"Content-Type": found[0]}, found[1]
        if not path.startswith(API + "/"):
            return _error(404, "NotFound", "no such path")
        if self.api_key and request.header("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "InvalidApiKey", "Invalid API-key provided.")
        if self.scripted(request):
            return self._submit(request, video=path == VIDEO_PATH)
        if path.startswith(f"{API}/tasks/"):
            rest = path[len(f"{API}/tasks/"):]
            if request.method == "POST" and rest.endswith("/cancel"):
                return self._cancel(rest[: -len("/cancel")])
            if request.method == "GET" and "/" not in rest:
                return self._poll(rest)
        return _error(404, "NotFound", "no such path")

    def _submit(self, request: Recorded, video: bool) -> Response:
        if request.header("X-DashScope-Async") != "enable":
            return _error(403, "AccessDenied", "current user api does not support synchronous "
                                               "calls")
        if (request.header("Content-Type") or "").split(";")[0] != "application/json":
            return _error(400, "InvalidParameter", "content type must be application/json")
        try:
            body = request.json()
        except ValueError:
            return _error(400, "InvalidParameter", "body is not JSON")
        problem = self.check(body, video)
        if problem:
            return _error(400, "InvalidParameter", problem)
        task_id = str(uuid.uuid4())
        self.tasks[task_id] = {"polls": 0, "body": body, "video": video, "status": "PENDING"}
        return _json(200, {"output": {"task_status": "PENDING", "task_id": task_id},
                           "request_id": str(uuid.uuid4())})

    @staticmethod
    def check(body, video: bool) -> str | None:
        """What DashScope would refuse as an invalid parameter."""
        if not isinstance(body, dict) or set(body) - {"model", "input", "parameters"}:
            return "body must be {model, input, parameters}"
        model, inputs = body.get("model"), body.get("input")
        params = body.get("parameters", {})
        if not isinstance(model, str) or not model:
            return "Model not specified"
        if not isinstance(inputs, dict) or not isinstance(params, dict):
            return "input and parameters must be objects"
        seed = params.get("seed")
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**31):
            return "seed must be in [0, 2147483647]"
        if video:
            allowed_in = {"prompt", "negative_prompt", "img_url", "audio_url", "template"}
            allowed_params = {"resolution", "duration", "seed", "prompt_extend", "watermark",
                              "audio", "shot_type"}
            image = inputs.get("img_url")
            if not isinstance(image, str) or not image.startswith(("data:image/", "http")):
                return "img_url must be a URL or a base64 data URI"
            if params.get("resolution") not in (None, "480P", "720P", "1080P"):
                return "resolution must be 480P, 720P or 1080P"
        else:
            allowed_in = {"prompt", "negative_prompt"}
            allowed_params = {"negative_prompt", "size", "n", "seed", "prompt_extend",
                              "watermark"}
            if not isinstance(inputs.get("prompt"), str) or not inputs["prompt"]:
                return "input.prompt is required"
            if model.startswith("qwen-image"):
                if params.get("n", 1) != 1:
                    return "n must be 1"
                if params.get("size", "1664*928") not in QWEN_SIZES:
                    return "size is not supported"
            elif not 1 <= params.get("n", 1) <= 4:
                return "n must be between 1 and 4"
        if set(inputs) - allowed_in or set(params) - allowed_params:
            return "unknown field"
        return None

    def _poll(self, task_id: str) -> Response:
        with self._lock:
            failing = self._poll_script.popleft() if self._poll_script else None
        if failing:
            return self.error(failing)
        task = self.tasks.get(task_id)
        if task is None:
            return _json(200, {"request_id": str(uuid.uuid4()),
                               "output": {"task_id": task_id, "task_status": "UNKNOWN"}})
        if task["status"] == "CANCELED":
            return self._task(task_id, "CANCELED")
        task["polls"] += 1
        if self.outcome == "never" or task["polls"] < self.polls_to_finish:
            task["status"] = "PENDING" if task["polls"] == 1 else "RUNNING"
            return self._task(task_id, task["status"])
        task["status"] = "FAILED" if self.outcome == "failed" else "SUCCEEDED"
        if self.outcome == "failed":
            return self._task(task_id, "FAILED", **self.failure)
        if task["video"]:
            return self._task(task_id, "SUCCEEDED", video_url=self._file("video/mp4",
                                                                          mp4_bytes(), "mp4"),
                              usage={"video_duration": 5, "video_count": 1})
        params = task["body"].get("parameters", {})
        w, h = (int(v) for v in str(params.get("size", "1664*928")).split("*"))
        results = []
        for i in range(int(params.get("n", 1))):
            if self.outcome == "partial":
                results.append({"code": "DataInspectionFailed",
                                "message": "Output data may contain inappropriate content."})
                continue
            image = png_bytes(w, h, (40 * i % 256, 120, 200))
            results.append({"orig_prompt": task["body"]["input"]["prompt"],
                            "actual_prompt": task["body"]["input"]["prompt"],
                            "url": self._file("image/png", image, "png")})
        return self._task(task_id, "SUCCEEDED", results=results,
                          task_metrics={"TOTAL": len(results), "SUCCEEDED": len(results),
                                        "FAILED": 0},
                          usage={"image_count": len(results)})

    def _task(self, task_id: str, status: str, usage: dict | None = None, **output) -> Response:
        body = {"request_id": str(uuid.uuid4()),
                "output": {"task_id": task_id, "task_status": status,
                           "submit_time": "2026-01-01 00:00:00.000", **output}}
        if usage:
            body["usage"] = usage
        return _json(200, body)

    def _cancel(self, task_id: str) -> Response:
        task = self.tasks.get(task_id)
        if task is None or task["status"] != "PENDING":
            return _error(400, "UnsupportedOperation", "Failed to cancel the task, please "
                                                       "confirm if the task is in PENDING status.")
        task["status"] = "CANCELED"
        return _json(200, {"request_id": str(uuid.uuid4())})

    def _file(self, content_type: str, data: bytes, ext: str) -> str:
        name = f"{secrets.token_hex(8)}.{ext}?Expires=1700000000&Signature=x"
        host = self.oss or self
        host.files[name.split("?")[0]] = (content_type, data)
        return f"{host.url}/oss/{name}"
