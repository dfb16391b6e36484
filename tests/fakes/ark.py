"""A fake of Volcano Engine Ark's public HTTP API (v3) over real HTTP on
loopback: Seedream images and Seedance video tasks, as Ark documents them
(volcengine-python-sdk ``volcenginesdkarkruntime``; docs 82379/1299023 for
the error codes).

- ``POST /api/v3/images/generations``: ``model`` and ``prompt`` required;
  only the documented fields (anything else, ``n`` or ``negative_prompt``
  included, is 400 ``InvalidParameter``); ``size`` a preset (1K/2K/4K) or
  ``WxH`` within ``[min_pixels, 4096*4096]`` pixels and an aspect ratio
  within 1/16..16; ``image`` a URL or ``data:image/<type>;base64,...``.
  Answers one PNG of that size, as ``url`` or ``b64_json``. Result files
  are served from ``/tos/<id>`` under ``result_base``, by default this
  server named ``localhost``: another origin than the API's ``127.0.0.1``,
  as Ark's storage host (TOS) is another origin than its API.
- ``POST /api/v3/contents/generations/tasks``: ``model`` and ``content``
  (``text`` / ``image_url`` items with their ``role``) and the documented
  top-level parameters → ``{"id": "cgt-..."}``.
  ``GET /api/v3/contents/generations/tasks/<id>``: ``queued`` at the first
  poll, ``running`` until ``polls_to_finish``, then ``outcome``:
  ``succeeded`` (``content.video_url`` → an MP4 under ``/tos/``), ``failed``
  (``error`` = ``failure``), ``expired``, or ``never`` (stays in
  ``never_state``). ``DELETE`` cancels a queued task, deletes a finished
  one, and refuses a running one.

Every call under ``/api/v3`` needs ``Authorization: Bearer <api_key>``
(401 ``AuthenticationError`` otherwise). Errors have Ark's shape
``{"error": {"code", "message", "param", "type"}}``. ``fail_next`` scripts
the two create calls (see tests/fakes/providers.py), e.g.
``fake.fail_next(429, REFUSAL)``; ``fail_polls`` scripts task polls.
``retry_after`` (None: Ark documents no Retry-After) is sent with a 429.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections import deque
from urllib.parse import urlsplit

from tests.fakes.providers import FakeHTTPServer, Recorded, Response, _json, mp4_bytes, png_bytes

API = "/api/v3"
IMAGES = f"{API}/images/generations"
TASKS = f"{API}/contents/generations/tasks"

IMAGE_FIELDS = {"model", "prompt", "image", "response_format", "size", "seed", "guidance_scale",
                "watermark", "optimize_prompt", "optimize_prompt_options",
                "sequential_image_generation", "sequential_image_generation_options", "tools",
                "output_format", "stream"}
TASK_FIELDS = {"model", "content", "safety_identifier", "callback_url", "return_last_frame",
               "service_tier", "execution_expires_after", "priority", "generate_audio", "draft",
               "camera_fixed", "watermark", "seed", "resolution", "ratio", "duration", "frames",
               "tools"}
PRESETS = {"1K": 1024, "2K": 2048, "4K": 4096}
RATIOS = {"16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive", "keep_ratio"}
ROLES = {"first_frame", "last_frame", "reference_image"}
DATA_URI = re.compile(r"data:image/(png|jpeg|jpg|webp|bmp|tiff|gif);base64,(.+)", re.S)
CODES = {400: ("InvalidParameter", "BadRequest"), 401: ("AuthenticationError", "Unauthorized"),
         403: ("AccessDenied", "Forbidden"),
         404: ("InvalidEndpointOrModel.NotFound", "NotFound"),
         429: ("RateLimitExceeded.EndpointRPMExceeded", "TooManyRequests"),
         500: ("InternalServiceError", "InternalServerError"),
         503: ("ServiceUnavailable", "ServiceUnavailable")}


def ark_error(status: int, code: str, message: str = "", param: str = "",
              error_type: str = "BadRequest", headers: dict | None = None) -> Response:
    message = message or f"The request failed ({code}). Request ID: fake"
    return _json(status, {"error": {"code": code, "message": message, "param": param,
                                    "type": error_type}}, headers)


#: ``fail_next`` behaviours: Ark's documented content refusals.
REFUSAL = (400, {"error": {
    "code": "OutputImageSensitiveContentDetected", "param": "", "type": "BadRequest",
    "message": "The request failed because the output image may contain sensitive "
               "information. Request ID: fake"}})
INPUT_REFUSAL = (400, {"error": {
    "code": "InputTextSensitiveContentDetected", "param": "", "type": "BadRequest",
    "message": "The request failed because the input text may contain sensitive "
               "information. Request ID: fake"}})
RISK_REFUSAL = (400, {"error": {
    "code": "InputImageRiskDetection", "param": "", "type": "BadRequest",
    "message": "The request could not be processed because the input image includes "
               "sensitive content that violates ContentSecurityDetection."}})


class Invalid(Exception):
    def __init__(self, code: str, param: str, message: str):
        super().__init__(message)
        self.code, self.param, self.message = code, param, message


def _image_input(value, param: str) -> bytes | str:
    """A documented image input: an http(s) URL, or a data URI (decoded)."""
    if not isinstance(value, str) or not value:
        raise Invalid("InvalidParameter", param, f"{param} must be a URL or a base64 data URI")
    if value.startswith(("http://", "https://")):
        return value
    match = DATA_URI.fullmatch(value)
    if not match:
        raise Invalid("InvalidParameter", param,
                      f"{param}: expected data:image/<format>;base64,<data>")
    try:
        return base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("InvalidParameter", param, f"{param}: invalid base64") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FakeArk(FakeHTTPServer):
    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 result_base: str | None = None, min_pixels: int = 2560 * 1440):
        super().__init__(api_key, hang_s)
        self.result_base = result_base
        self.min_pixels = min_pixels
        self.retry_after: str | None = None
        self.image_error: dict | None = None  # a per-image error inside a 200
        self.files: dict[str, tuple[str, bytes]] = {}
        self.sources: list = []  # decoded image inputs, in order
        self.polls_to_finish = 2
        self.outcome = "succeeded"
        self.never_state = "queued"
        self.failure: dict = {"code": "InternalServiceError", "message": "the fake broke"}
        self.video: bytes | None = None
        self.video_url: str | None = None  # overrides the task's video URL
        self.tasks: dict[str, dict] = {}
        self._poll_script: deque = deque()

    @property
    def files_url(self) -> str:
        return self.result_base or self.url.replace("://127.0.0.1:", "://localhost:")

    def fail_polls(self, *statuses: int) -> None:
        with self._lock:
            self._poll_script.extend(statuses)

    # ------------------------------------------------------------ protocol

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST" and urlsplit(request.path).path in (IMAGES, TASKS)

    def error(self, status: int) -> Response:
        code, error_type = CODES.get(status, ("InternalServiceError", "InternalServerError"))
        headers = {"Retry-After": self.retry_after} if status == 429 and self.retry_after else {}
        return ark_error(status, code, error_type=error_type, headers=headers)

    def garbage(self, request: Recorded) -> Response:
        if urlsplit(request.path).path == TASKS:
            return _json(200, {"task": "no id here"})
        return _json(200, {"model": "x", "created": int(time.time()),
                           "data": [{"b64_json": base64.b64encode(b"not an image").decode()}]})

    def route(self, request: Recorded) -> Response:
        path = urlsplit(request.path).path
        if path.startswith(API + "/"):
            if self.api_key and request.header("Authorization") != f"Bearer {self.api_key}":
                return ark_error(401, "AuthenticationError", "The API key in the request is "
                                 "missing or invalid.", error_type="Unauthorized")
            try:
                if request.method == "POST" and path == IMAGES:
                    return self._images(request)
                if request.method == "POST" and path == TASKS:
                    return self._create_task(request)
                if path.startswith(TASKS + "/") and request.method in ("GET", "DELETE"):
                    return self._task(request, path[len(TASKS) + 1:])
            except Invalid as exc:
                return ark_error(400, exc.code, exc.message, exc.param)
        if request.method == "GET" and path.startswith("/tos/"):
            found = self.files.get(path[len("/tos/"):])
            if found is not None:
                return 200, {"Content-Type": found[0]}, found[1]
            return 403, {"Content-Type": "application/xml"}, b"<Error>AccessDenied</Error>"
        return ark_error(404, "NotFound", "not found", error_type="NotFound")

    def _body(self, request: Recorded, fields: set[str]) -> dict:
        if "application/json" not in (request.header("Content-Type") or ""):
            raise Invalid("InvalidParameter", "", "the body must be JSON")
        try:
            body = request.json()
        except ValueError:
            raise Invalid("InvalidParameter", "", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Invalid("InvalidParameter", "", "the body must be an object")
        for key in ("model",):
            if not isinstance(body.get(key), str) or not body[key]:
                raise Invalid("MissingParameter", key, f"{key} is required")
        unknown = sorted(set(body) - fields)
        if unknown:
            raise Invalid("InvalidParameter", unknown[0], f"unknown parameter {unknown[0]}")
        seed = body.get("seed")
        if seed is not None and not (_is_int(seed) and -1 <= seed <= 2**31 - 1):
            raise Invalid("InvalidParameter", "seed", "seed must be within [-1, 2147483647]")
        if "watermark" in body and not isinstance(body["watermark"], bool):
            raise Invalid("InvalidParameter", "watermark", "watermark must be a boolean")
        return body

    def _size(self, value) -> tuple[int, int]:
        if value is None:
            return 2048, 2048
        if value in PRESETS:
            return PRESETS[value], PRESETS[value]
        match = re.fullmatch(r"([0-9]+)x([0-9]+)", str(value))
        if not match:
            raise Invalid("InvalidParameter", "size", "size must be 1K, 2K, 4K or WxH")
        width, height = int(match.group(1)), int(match.group(2))
        if not self.min_pixels <= width * height <= 4096 * 4096 \
                or not 1 / 16 <= width / height <= 16:
            raise Invalid("InvalidParameter", "size", "size out of the supported range")
        return width, height

    def _images(self, request: Recorded) -> Response:
        body = self._body(request, IMAGE_FIELDS)
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            raise Invalid("MissingParameter", "prompt", "prompt is required")
        response_format = body.get("response_format", "url")
        if response_format not in ("url", "b64_json"):
            raise Invalid("InvalidParameter", "response_format", "url or b64_json")
        width, height = self._size(body.get("size"))
        images = body.get("image")
        for index, image in enumerate(images if isinstance(images, list) else
                                      ([images] if images is not None else [])):
            self.sources.append(_image_input(image, f"image[{index}]"))
        created = int(time.time())
        if self.image_error:
            return _json(200, {"model": body["model"], "created": created,
                               "data": [{"error": self.image_error}],
                               "usage": {"generated_images": 0, "output_tokens": 0,
                                         "total_tokens": 0}})
        colour = ((body.get("seed") or 0) * 37 % 256, 120, 200)
        image = png_bytes(width, height, colour)
        item = {"size": f"{width}x{height}"}
        if response_format == "url":
            name = secrets.token_hex(8) + ".png"
            self.files[name] = ("image/png", image)
            item["url"] = f"{self.files_url}/tos/{name}?X-Tos-Expires=86400"
        else:
            item["b64_json"] = base64.b64encode(image).decode()
        tokens = width * height // 256
        return _json(200, {"model": body["model"], "created": created, "data": [item],
                           "usage": {"generated_images": 1, "output_tokens": tokens,
                                     "total_tokens": tokens}})

    def _create_task(self, request: Recorded) -> Response:
        body = self._body(request, TASK_FIELDS)
        content = body.get("content")
        if not isinstance(content, list) or not content:
            raise Invalid("MissingParameter", "content", "content is required")
        for index, item in enumerate(content):
            where = f"content[{index}]"
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                if not isinstance(item.get("text"), str):
                    raise Invalid("InvalidParameter", where, "a text item needs text")
            elif kind == "image_url":
                url = item.get("image_url")
                if not isinstance(url, dict):
                    raise Invalid("InvalidParameter", where, "image_url must be {url}")
                self.sources.append(_image_input(url.get("url"), f"{where}.image_url.url"))
                if "role" in item and item["role"] not in ROLES:
                    raise Invalid("InvalidParameter", f"{where}.role", "unknown role")
            else:
                raise Invalid("InvalidParameter", f"{where}.type", "text or image_url")
        if "ratio" in body and body["ratio"] not in RATIOS:
            raise Invalid("InvalidParameter", "ratio", "unsupported ratio")
        if "duration" in body and not (_is_int(body["duration"]) and 2 <= body["duration"] <= 12):
            raise Invalid("InvalidParameter", "duration", "duration must be 2 to 12 seconds")
        if "resolution" in body and body["resolution"] not in ("480p", "720p", "1080p"):
            raise Invalid("InvalidParameter", "resolution", "480p, 720p or 1080p")
        task_id = f"cgt-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
        self.tasks[task_id] = {"polls": 0, "status": "queued", "request": body,
                               "created_at": int(time.time())}
        return _json(200, {"id": task_id})

    def _task(self, request: Recorded, task_id: str) -> Response:
        task = self.tasks.get(task_id)
        if task is None:
            return ark_error(404, "ResourceNotFound", "the task does not exist",
                             "task_id", "NotFound")
        if request.method == "DELETE":
            if task["status"] == "running":
                return ark_error(400, "InvalidAction", "a running task cannot be cancelled",
                                 "task_id")
            if task["status"] == "queued":
                task["status"] = "cancelled"
            else:
                del self.tasks[task_id]
            return _json(200, {})
        with self._lock:
            failing = self._poll_script.popleft() if self._poll_script else None
        if failing:
            return self.error(failing)
        task["polls"] += 1
        if task["status"] in ("queued", "running"):
            if self.outcome == "never":
                task["status"] = self.never_state
            elif task["polls"] < self.polls_to_finish:
                task["status"] = "queued" if task["polls"] == 1 else "running"
            else:
                task["status"] = self.outcome
        body = task["request"]
        answer = {"id": task_id, "model": body["model"], "status": task["status"],
                  "error": None, "created_at": task["created_at"],
                  "updated_at": int(time.time()), "seed": body.get("seed", 12345),
                  "resolution": body.get("resolution", "720p"),
                  "ratio": body.get("ratio", "adaptive"), "duration": body.get("duration", 5),
                  "framespersecond": 24}
        if task["status"] == "succeeded":
            name = f"{task_id}.mp4"
            self.files[name] = ("video/mp4", self.video if self.video is not None else mp4_bytes())
            answer["content"] = {
                "video_url": self.video_url or f"{self.files_url}/tos/{name}?X-Tos-Expires=86400"}
            answer["usage"] = {"completion_tokens": 108900, "total_tokens": 108900}
        elif task["status"] == "failed":
            answer["error"] = self.failure
        return _json(200, answer)
