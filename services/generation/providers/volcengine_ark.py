"""The ``volcengine_ark`` provider: Seedream images and Seedance videos on
Volcano Engine Ark (火山方舟), through Ark's public HTTP API (v3).

Configuration (one entry of the providers file)::

    seedream:
      type: volcengine_ark
      base_url: https://ark.cn-beijing.volces.com/api/v3   # the default
      api_key: ${ARK_API_KEY}
      model: doubao-seedream-4-5-251128      # a model id, or an endpoint id ep-...
      video_model: doubao-seedance-1-0-pro-250528   # image-to-video; default: model
      job_types: [text-to-image, image-to-image]    # the default; image-to-video too
      region: cn
      timeout_s: 120                         # per HTTP call
      # optional: response_format (url | b64_json, default url), size (a fixed
      # size such as 2K; default: the request's), min_pixels (3686400),
      # max_pixels (16777216),
      # watermark (unset: Ark's default), resolution (480p | 720p | 1080p),
      # ratio (adaptive), min_duration_s (2), max_duration_s (12),
      # poll_interval_s (5), task_timeout_s (900), max_poll_errors (3),
      # max_download_bytes, result_url_allow, allow_private_network

Every call carries ``Authorization: Bearer <api_key>``; the key goes to
``base_url``'s origin only, never to the storage host of a result URL.

What is sent
------------
Images (text-to-image, image-to-image): ``POST {base_url}/images/generations``
with ``{"model", "prompt", "size", "response_format"}``, plus ``"seed"`` when
the request has one, ``"image": "data:<type>;base64,<source bytes>"`` for
image-to-image and ``"watermark"`` when configured. The answer's
``data[].url`` is downloaded (through the SSRF guard, size capped) or its
``data[].b64_json`` decoded.

Video (image-to-video): ``POST {base_url}/contents/generations/tasks`` with
``{"model": video_model, "content": [{"type": "text", "text"}, {"type":
"image_url", "image_url": {"url": "data:<type>;base64,<source bytes>"},
"role": "first_frame"}], "ratio"}``, plus ``"duration"`` (whole seconds),
``"seed"``, ``"resolution"`` and ``"watermark"`` when there are values for
them → ``{"id": "cgt-..."}``. Then ``GET
{base_url}/contents/generations/tasks/{id}`` every ``poll_interval_s`` until
the task is ``succeeded`` (``content.video_url`` is downloaded), ``failed``,
``cancelled`` or ``expired``. A task not done after ``task_timeout_s`` is
cancelled with ``DELETE {base_url}/contents/generations/tasks/{id}`` (Ark
cancels a queued task; best effort) and the attempt fails with the transient
``provider_timeout``.

Nothing else: no user, job or request id of ours (Ark needs none), no
callback URL, no ``safety_identifier``.

Limits
------
- No ``n``: Seedream makes one image per request (``sequential_image_generation``
  stays at its default, ``disabled``), so ``n`` images are ``n`` requests, one
  after the other. With a seed, image ``i`` gets ``seed + i`` (the same seed
  would give the same picture ``n`` times).
- No negative prompt and no ``strength``: neither is sent. Image-to-image
  follows the prompt and the source image as Seedream weighs them.
- Size: Seedream takes ``WxH`` within ``[min_pixels, max_pixels]`` pixels
  (3686400 = 2560x1440 to 4096x4096 for Seedream 4.5 and 5.0; 4.0 from
  921600; 3.0 from 262144 to 4194304), so a request outside is scaled
  keeping its aspect ratio (1024x1024 asks for 1920x1920). Outputs are
  measured as they come, so the job records the size Ark made.
- Video: one video per request (``n`` must be 1). The request's size is not
  sent; ``ratio`` (default ``adaptive``: the source image's aspect ratio)
  is. The duration is rounded to whole seconds and kept within
  ``[min_duration_s, max_duration_s]`` (Seedance 1.0 pro: 2-12 s). Seedance
  takes one text: a storyboard's shots are written into it, one line each
  (``[0-2s] a boat drifts, camera pan left``), after the prompt.
- Result URLs live 24 hours on Ark's side; they are downloaded at once.

Errors: 429, 5xx, timeouts and connection failures are transient (Ark documents
no Retry-After; one sent is honoured). Ark's content refusals (``*SensitiveContentDetected*``,
``*RiskDetection``, at submission or as a failed task, or as a per-image
``error`` in a 200 answer) are the permanent ``CONTENT_REFUSED``.
``ContentSecurityDetectionError`` (Ark's moderation service failed) and
``InvalidEndpoint.ClosedEndpoint`` (an endpoint temporarily closed) are
transient although Ark answers 400. Other 4xx are permanent.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from urllib.parse import quote

from services.common.config import flag
from services.common.contracts.generation import JOB_TYPES
from services.generation.providers import base, common
from services.generation.providers.http import ProviderHttp, error_code
from services.generation.providers.media import video_output

DEFAULT_BASE_URL = "https://ark.cn-beijing.volces.com/api/v3"
IMAGES_PATH = "/images/generations"
TASKS_PATH = "/contents/generations/tasks"
DEFAULT_SIZE = "2K"
MIN_PIXELS = 2560 * 1440  # Seedream 4.5 and 5.0; 4.0 takes from 1280x720
MAX_PIXELS = 4096 * 4096
SEED_LIMIT = 2**31  # Ark's seeds are within [-1, 2147483647]
RATIO = re.compile(r"[0-9]{1,2}:[0-9]{1,2}|adaptive|keep_ratio")

#: Ark's error codes of a content refusal: Input/Output Text/Image/Video
#: SensitiveContentDetected (with .PrivacyInformation, .SevereViolation ...
#: suffixes) and the risk-detection service's Input/Output*RiskDetection.
REFUSAL_MARKS = ("sensitivecontentdetected", "riskdetection")
#: 400 answers that are not about the request: retry, or try another vendor.
TRANSIENT_CODES = frozenset({"ContentSecurityDetectionError", "InvalidEndpoint.ClosedEndpoint"})
#: A failed task's codes that say the request itself was wrong.
REJECTED_PREFIXES = ("InvalidParameter", "MissingParameter", "InvalidArgument")
TASK_FRACTION = {"queued": 0.1, "running": 0.4}


def refused(code: str | None) -> bool:
    """Is ``code`` one of Ark's content-refusal codes?"""
    lowered = (code or "").lower()
    return any(mark in lowered for mark in REFUSAL_MARKS)


def ark_errors(status: int, code: str | None, where: str,
               response=None) -> base.ProviderError | None:
    """How Ark's error codes differ from the common mapping (providers/http.py)."""
    if refused(code):
        return base.PermanentProviderError(base.CONTENT_REFUSED, where, status=status)
    if status < 500 and code in TRANSIENT_CODES:
        return base.TransientProviderError("provider_server_error", where, status=status)
    return None


def failure(name: str, error, what: str) -> base.ProviderError:
    """A generation that Ark reports as failed inside a 2xx answer: a failed
    task, or an image's ``error``. Classified by the code alone (Ark's
    message may repeat the prompt)."""
    error = error if isinstance(error, dict) else {}
    code = error_code(error.get("code"))
    message = f"{name} {what} failed" + (f": {code}" if code else "")
    if refused(code):
        return base.PermanentProviderError(base.CONTENT_REFUSED, message)
    if code and code.startswith(REJECTED_PREFIXES):
        return base.PermanentProviderError("provider_rejected_request", message)
    return base.TransientProviderError("provider_task_failed", message)


def scaled_size(width: int, height: int, min_pixels: int, max_pixels: int = MAX_PIXELS) -> str:
    """``"WxH"`` of the same aspect ratio with at least ``min_pixels`` and at
    most ``max_pixels`` pixels (Seedream refuses sizes outside its range)."""
    pixels = width * height
    if min_pixels and pixels < min_pixels:
        scale = math.sqrt(min_pixels / pixels)
        width, height = math.ceil(width * scale), math.ceil(height * scale)
    elif pixels > max_pixels:
        scale = math.sqrt(max_pixels / pixels)
        width, height = math.floor(width * scale), math.floor(height * scale)
    return f"{width}x{height}"


def source_uri(request: base.ProviderRequest) -> str:
    """The source image as Ark takes it inline: ``data:image/png;base64,...``."""
    return common.data_uri(request.source_image, (request.source_content_type or "image/png").lower())


def video_text(request: base.ProviderRequest) -> str:
    """The prompt, then one line per storyboard shot with its time span."""
    lines = [request.prompt.strip()] if request.prompt and request.prompt.strip() else []
    start = 0.0
    for shot in request.shots:
        end = start + shot.duration_s
        if shot.prompt and shot.prompt.strip():
            camera = "" if shot.camera == "static" else f", camera {shot.camera.replace('_', ' ')}"
            lines.append(f"[{start:g}-{end:g}s] {shot.prompt.strip()}{camera}")
        start = end
    return "\n".join(lines)


class ArkProvider:
    def __init__(self, name: str, *, api_key: str, model: str, base_url: str = DEFAULT_BASE_URL,
                 video_model: str | None = None,
                 job_types: tuple[str, ...] = (base.TEXT_TO_IMAGE, base.IMAGE_TO_IMAGE),
                 timeout_s: float = 120.0, response_format: str = "url",
                 size: str | None = None, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS,
                 watermark: bool | None = None, resolution: str | None = None,
                 ratio: str = "adaptive", min_duration_s: int = 2, max_duration_s: int = 12,
                 poll_interval_s: float = 5.0, task_timeout_s: float = 900.0,
                 max_poll_errors: int = 3, max_download_bytes: int = 200 * 1024 * 1024,
                 result_url_allow: tuple[str, ...] | str = (), allow_private_network: bool = False,
                 resolver=None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        if not api_key:
            raise ValueError("api_key is required (Ark takes a bearer key)")
        if not model:
            raise ValueError("model is required (a Seedream/Seedance model id or endpoint id)")
        job_types = common.job_types_of(job_types, JOB_TYPES)
        images = {base.TEXT_TO_IMAGE, base.IMAGE_TO_IMAGE} & set(job_types)
        if images and base.IMAGE_TO_VIDEO in job_types and not video_model:
            raise ValueError("video_model is required when one entry runs images and "
                             "image-to-video (model is the image model)")
        if response_format not in ("url", "b64_json"):
            raise ValueError("response_format must be url or b64_json")
        if not RATIO.fullmatch(ratio):
            raise ValueError("ratio must be W:H (e.g. 16:9), adaptive or keep_ratio")
        if not 1 <= min_duration_s <= max_duration_s:
            raise ValueError("min_duration_s and max_duration_s: 1 <= min <= max")
        if not 0 <= min_pixels < max_pixels:
            raise ValueError("min_pixels and max_pixels: 0 <= min_pixels < max_pixels")
        self.name = name
        self.model = model
        self.video_model = video_model or model
        self.job_types = frozenset(job_types)
        self.response_format = response_format
        self.size = size or None
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.watermark = watermark
        self.resolution = resolution or None
        self.ratio = ratio
        self.min_duration_s, self.max_duration_s = int(min_duration_s), int(max_duration_s)
        base.keep_polling(self, poll_interval_s, task_timeout_s, max_poll_errors, sleep, clock)
        self.http = ProviderHttp(name, base_url, api_key, timeout_s, max_download_bytes,
                                 result_url_allow, resolver,
                                 allow_private_network=allow_private_network,
                                 errors=ark_errors)

    @classmethod
    def from_config(cls, name: str, conf: dict, **kwargs) -> ArkProvider:
        """The provider from its providers-file entry. ``region``,
        ``max_concurrency``, ``enabled`` and ``base_dir`` are the router's."""
        watermark = conf.get("watermark")
        try:
            integers = {key: int(conf.get(key, default)) for key, default in (
                ("min_pixels", MIN_PIXELS), ("max_pixels", MAX_PIXELS), ("min_duration_s", 2), ("max_duration_s", 12),
                ("max_poll_errors", 3), ("max_download_bytes", 200 * 1024 * 1024))}
        except (TypeError, ValueError):
            raise ValueError("min_pixels, max_pixels, min/max_duration_s, max_poll_errors "
                             "and max_download_bytes are whole numbers") from None
        return cls(
            name, api_key=str(conf.get("api_key") or ""), model=str(conf.get("model") or ""),
            base_url=str(conf.get("base_url") or DEFAULT_BASE_URL),
            video_model=str(conf.get("video_model") or "") or None,
            job_types=conf.get("job_types") or (base.TEXT_TO_IMAGE, base.IMAGE_TO_IMAGE),
            timeout_s=common.conf_number(conf, "timeout_s", 120),
            response_format=str(conf.get("response_format") or "url"),
            size=str(conf.get("size") or "") or None,
            watermark=None if watermark is None else flag(watermark),
            resolution=str(conf.get("resolution") or "") or None,
            ratio=str(conf.get("ratio") or "adaptive"),
            poll_interval_s=common.conf_number(conf, "poll_interval_s", 5),
            task_timeout_s=common.conf_number(conf, "task_timeout_s", 900),
            result_url_allow=conf.get("result_url_allow") or (),
            allow_private_network=flag(conf.get("allow_private_network", False)),
            **integers, **kwargs,
        )

    # ------------------------------------------------------------------ payloads

    def payload(self, request: base.ProviderRequest, index: int = 0) -> dict:
        """Exactly what is sent for image ``index`` of an image request."""
        if self.size:
            size = self.size
        elif request.width and request.height:
            size = scaled_size(request.width, request.height, self.min_pixels, self.max_pixels)
        else:
            size = DEFAULT_SIZE
        body = {"model": self.model, "prompt": request.prompt, "size": size,
                "response_format": self.response_format}
        if request.seed is not None:
            body["seed"] = common.seed_for(request, index) % SEED_LIMIT
        if request.job_type == base.IMAGE_TO_IMAGE:
            body["image"] = source_uri(request)
        if self.watermark is not None:
            body["watermark"] = self.watermark
        return body

    def task_payload(self, request: base.ProviderRequest) -> dict:
        """Exactly what is sent to create an image-to-video task."""
        content = []
        text = video_text(request)
        if text:
            content.append({"type": "text", "text": text})
        content.append({"type": "image_url", "image_url": {"url": source_uri(request)},
                        "role": "first_frame"})
        body = {"model": self.video_model, "content": content, "ratio": self.ratio}
        seconds = request.duration_s or sum(shot.duration_s for shot in request.shots)
        if seconds:
            body["duration"] = max(self.min_duration_s,
                                   min(self.max_duration_s, round(seconds)))
        if request.seed is not None:
            body["seed"] = request.seed % SEED_LIMIT
        if self.resolution:
            body["resolution"] = self.resolution
        if self.watermark is not None:
            body["watermark"] = self.watermark
        return body

    # ------------------------------------------------------------------ generate

    def generate(self, request: base.ProviderRequest,
                 progress: base.ProgressCallback | None = None) -> base.ProviderResult:
        base.submitting(self, request, progress)
        if request.job_type == base.IMAGE_TO_VIDEO:
            return base.ProviderResult((self._video(request, progress),))
        outputs = common.one_request_per_image(
            request, progress, lambda index: self._image_bytes(
                self.http.call("POST", IMAGES_PATH, self.payload(request, index))), self.name,
            stage="generating")
        base.report(progress, 1.0, "downloaded")
        return base.ProviderResult(tuple(outputs))

    def _image_bytes(self, answer: dict) -> bytes:
        """The first image of an answer; a per-image or top-level ``error``
        (Ark reports a refused output that way, inside a 200) is raised."""
        items = answer.get("data")
        items = [item for item in items if isinstance(item, dict)] \
            if isinstance(items, list) else []
        for item in items:
            if isinstance(item.get("b64_json"), str) and item["b64_json"]:
                return common.base64_bytes(item["b64_json"], self.name, self.http.max_download_bytes)
            if isinstance(item.get("url"), str) and item["url"]:
                return self.http.download(item["url"])[0]
        errors = [item["error"] for item in items if item.get("error")]
        if errors or answer.get("error"):
            raise failure(self.name, errors[0] if errors else answer["error"], "image")
        raise base.TransientProviderError("invalid_provider_output",
                                          f"{self.name} answered without an image")

    def _video(self, request: base.ProviderRequest, progress: base.ProgressCallback | None) -> base.ProviderOutput:
        if request.n != 1:
            raise base.PermanentProviderError("provider_rejected_request",
                                              f"{self.name} makes one video per request")
        created = self.http.call("POST", TASKS_PATH, self.task_payload(request))
        task_id = common.answer_id(created.get("id"), self.name, "a task id")
        path = f"{TASKS_PATH}/{quote(task_id, safe='')}"
        task = self._until_done(path, progress)
        content = task.get("content")
        url = content.get("video_url") if isinstance(content, dict) else None
        if not isinstance(url, str) or not url:
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} finished the task without a video URL")
        base.report(progress, 0.9, "downloading")
        data, _ = self.http.download(url)
        output = video_output(data, self.name)
        base.report(progress, 1.0, "downloaded")
        return output

    def _until_done(self, path: str, progress: base.ProgressCallback | None) -> dict:
        """The task once it succeeded; how it ended otherwise, raised."""

        def read(task: dict) -> dict | None:
            state = task.get("status")
            if state == "succeeded":
                return task
            if state == "failed":
                raise failure(self.name, task.get("error"), "task")
            if state in ("cancelled", "expired"):
                raise base.task_ended(self.name, "task", state)
            if state not in TASK_FRACTION:
                raise base.unknown_status(self.name, "task")
            base.report(progress, TASK_FRACTION[state], state)
            return None

        return base.wait_for_task(
            lambda: self.http.call("GET", path), read, who=self.name, **base.polling(self),
            # Ark cancels a queued task; a running one cannot be, and expires
            cancel=lambda: self.http.call("DELETE", path))
