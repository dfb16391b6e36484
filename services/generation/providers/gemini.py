"""The ``gemini`` provider: Google's Gemini API (Developer API).

Base ``https://generativelanguage.googleapis.com/v1beta``; the key goes in the
``x-goog-api-key`` header (never in the URL). Which call is made follows the
model (or ``method`` in config):

- Gemini image models (``gemini-2.5-flash-image``, ``gemini-3-pro-image-preview``...):
  ``POST /models/{model}:generateContent``, the image in
  ``candidates[0].content.parts[].inlineData``. text-to-image, image-to-image.
- Imagen (``imagen-*``): ``POST /models/{model}:predict``, images in
  ``predictions[].bytesBase64Encoded``. text-to-image only (Google has been
  retiring Imagen on the Developer API; prefer a Gemini image model).
- Veo (``veo-*``): ``POST /models/{model}:predictLongRunning`` → an operation
  ``{"name": "models/{model}/operations/{id}"}``, polled with ``GET
  /v1beta/{name}`` every ``poll_interval_s`` until ``done``; the video is
  downloaded from ``response.generateVideoResponse.generatedSamples[].video.uri``
  with the key (the URI is on the API's own host; redirects elsewhere go
  without it), or decoded from ``video.encodedVideo`` when it comes inline.
  image-to-video.

Config: ``base_url``, ``api_key`` (required), ``model`` (required),
``method`` (``generateContent`` | ``predict`` | ``predictLongRunning``;
default from the model name), ``job_types`` (default: what the method can
run), ``timeout_s`` (120, per HTTP call), ``image_size`` (``1K``/``2K``/``4K``
for Gemini, ``1K``/``2K`` for Imagen; default none), ``person_generation``
(Imagen/Veo ``personGeneration``, default none), ``resolution`` (Veo
``720p``/``1080p``, default none), ``send_seed`` (true; Gemini only),
``send_negative_prompt`` (true; Veo only: some Veo models refuse it with a 400),
``poll_interval_s`` (10), ``task_timeout_s`` (900), ``max_poll_errors`` (3),
``max_download_bytes``. ``region``, ``max_concurrency``, ``enabled``,
``allow_private_network`` as for every provider.

What is sent
------------
generateContent, one request per image::

    {"contents": [{"role": "user", "parts": [{"text": "<prompt>"},
        {"inlineData": {"mimeType": "image/png", "data": "<base64>"}}]}],
     "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "seed": 7,
                          "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}}}

(the ``inlineData`` part only for image-to-image; ``seed``, ``aspectRatio``,
``imageSize`` only when given/configured).

predict::

    {"instances": [{"prompt": "<prompt>"}],
     "parameters": {"sampleCount": n, "aspectRatio": "16:9", "sampleImageSize": "2K",
                    "personGeneration": "...", "includeRaiReason": true}}

predictLongRunning::

    {"instances": [{"prompt": "<prompt>", "image": {"bytesBase64Encoded": "<base64>",
                                                    "mimeType": "image/png"}}],
     "parameters": {"aspectRatio": "16:9", "durationSeconds": 8,
                    "negativePrompt": "...", "resolution": "720p",
                    "personGeneration": "...", "sampleCount": n}}

Nothing else: no request id, no user or job reference, no query-string key.

Limits
------
- Gemini: no ``n`` for image output (n images are n requests, image i with
  seed + i when a seed was given) and no negative
  prompt (not sent); width/height become the nearest supported ``aspectRatio``.
- Imagen: the Developer API takes no seed and no negative prompt (neither is
  sent); n is ``sampleCount`` (1-4); no image-to-image.
- Veo: no seed on the Developer API (not sent); ``aspectRatio`` is 16:9 or
  9:16 (by width ≥ height); ``durationSeconds`` is the requested duration
  rounded (the model decides which lengths it accepts; omitted → its default);
  a storyboard's shots are not sent (one prompt); ``strength`` is not sent.
  No cancel call is documented for Veo operations: one that does not finish
  within ``task_timeout_s`` is abandoned (transient ``provider_timeout``).

Errors
------
Google's ``{"error": {"code", "message", "status", "details"}}`` by HTTP
status (429 and 5xx transient; a 429's ``RetryInfo.retryDelay`` counts as
``Retry-After`` when the header is absent). Refusals come as HTTP 200:
``promptFeedback.blockReason``, a ``finishReason`` of SAFETY / PROHIBITED /
BLOCKLIST / SPII / RECITATION (and their IMAGE_ forms), Imagen's
``raiFilteredReason``, Veo's ``raiMediaFilteredCount`` → ``content_refused``.
A failed operation is classified by its ``error.code``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from services.common.config import flag
from services.generation.providers import base, common
from services.generation.providers.http import REFUSAL_HINTS, ProviderHttp, error_body
from services.generation.providers.media import image_output, video_output

BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
GENERATE, PREDICT, LONG_RUNNING = "generateContent", "predict", "predictLongRunning"
JOB_TYPES = {GENERATE: (base.TEXT_TO_IMAGE, base.IMAGE_TO_IMAGE), PREDICT: (base.TEXT_TO_IMAGE,),
             LONG_RUNNING: (base.IMAGE_TO_VIDEO,)}
ASPECT_RATIOS = {GENERATE: ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9",
                            "21:9"),
                 PREDICT: ("1:1", "3:4", "4:3", "9:16", "16:9"),
                 LONG_RUNNING: ("16:9", "9:16")}
IMAGE_SIZES = {GENERATE: ("1K", "2K", "4K"), PREDICT: ("1K", "2K")}
REFUSED_FINISH = ("SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION",
                  "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION")
# google.rpc.Code values worth retrying: UNKNOWN, DEADLINE_EXCEEDED,
# RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE (and their HTTP forms)
TRANSIENT_CODES = {2, 4, 8, 10, 13, 14, 408, 429, 500, 502, 503, 504}
# how a failed Veo operation's message says it was a policy refusal
OPERATION_REFUSAL_HINTS = (*REFUSAL_HINTS, "usage guidelines", "responsible ai", "violat",
                           "filtered")
OPERATION_NAME = re.compile(r"^(?:models/[A-Za-z0-9._-]+/)?operations/[A-Za-z0-9._-]+$")
MODEL = re.compile(r"^(?:models/)?[A-Za-z0-9._-]+$")


def retry_delay(error: dict) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "37s"``)."""
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def google_errors(status: int, code: str | None, where: str, response) -> base.ProviderError | None:
    """Google's retry hint in the body of a 429 without ``Retry-After``; the
    rest is the generic mapping (providers/http.py)."""
    if status == 429 and "Retry-After" not in response.headers:
        delay = retry_delay(error_body(response))
        if delay is not None:
            return base.TransientProviderError("provider_rate_limited", f"{where} (RESOURCE_EXHAUSTED)",
                                               status=429, retry_after=delay)
    return None


def method_for(model: str) -> str:
    bare = model.removeprefix("models/")
    if bare.startswith("imagen"):
        return PREDICT
    if bare.startswith("veo"):
        return LONG_RUNNING
    return GENERATE


class GeminiProvider:
    def __init__(self, name: str, http: ProviderHttp, model: str, *, method: str | None = None,
                 job_types=None, image_size: str | None = None,
                 person_generation: str | None = None, resolution: str | None = None,
                 send_seed: bool = True, send_negative_prompt: bool = True,
                 poll_interval_s: float = 10.0,
                 task_timeout_s: float = 900.0, max_poll_errors: int = 3,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        if not MODEL.match(model):
            raise ValueError("model must be a model name such as gemini-2.5-flash-image")
        self.name = name
        self.http = http
        self.model = model.removeprefix("models/")
        self.method = method or method_for(self.model)
        self.job_types = frozenset(job_types or JOB_TYPES[self.method])
        self.image_size = image_size
        self.person_generation = person_generation
        self.resolution = resolution
        self.send_seed = send_seed
        self.send_negative_prompt = send_negative_prompt
        base.keep_polling(self, poll_interval_s, task_timeout_s, max_poll_errors, sleep, clock)

    @classmethod
    def from_config(cls, name: str, conf: dict, **kwargs) -> GeminiProvider:
        model = common.conf_str(conf, "model")
        method = common.conf_choice(conf, "method", JOB_TYPES) or method_for(model)
        http = ProviderHttp.from_config(name, conf, BASE_URL, errors=google_errors,
                                        auth_header="x-goog-api-key", auth_scheme=None)
        return cls(name, http, model, method=method,
                   job_types=common.conf_job_types(conf, JOB_TYPES[method]),
                   image_size=common.conf_choice(conf, "image_size", IMAGE_SIZES.get(method, ())),
                   person_generation=conf.get("person_generation") or None,
                   resolution=common.conf_choice(conf, "resolution", ("720p", "1080p")),
                   send_seed=flag(conf.get("send_seed", True)),
                   send_negative_prompt=flag(conf.get("send_negative_prompt", True)),
                   poll_interval_s=common.conf_number(conf, "poll_interval_s", 10),
                   task_timeout_s=common.conf_number(conf, "task_timeout_s", 900),
                   max_poll_errors=int(common.conf_number(conf, "max_poll_errors", 3, whole=True)),
                   **kwargs)

    @property
    def path(self) -> str:
        return f"/models/{self.model}:{self.method}"

    # ------------------------------------------------------------ payloads

    def payload(self, request: base.ProviderRequest, index: int = 0) -> dict:
        """Exactly what is sent (generateContent: for image ``index``, one call each)."""
        ratio = common.aspect_ratio(request.width, request.height, ASPECT_RATIOS[self.method])
        if self.method == GENERATE:
            parts = [{"text": request.prompt}]
            if request.source_image is not None and request.job_type == base.IMAGE_TO_IMAGE:
                parts.append({"inlineData": {"mimeType": request.source_content_type
                                             or "image/png", "data": common.b64(request.source_image)}})
            config: dict = {"responseModalities": ["TEXT", "IMAGE"]}
            if self.send_seed and request.seed is not None:
                config["seed"] = common.seed_for(request, index)
            image_config = {"aspectRatio": ratio, "imageSize": self.image_size}
            image_config = {k: v for k, v in image_config.items() if v}
            if image_config:
                config["imageConfig"] = image_config
            return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}
        instance: dict = {"prompt": request.prompt}
        if self.method == PREDICT:
            parameters = {"sampleCount": request.n, "aspectRatio": ratio,
                          "sampleImageSize": self.image_size,
                          "personGeneration": self.person_generation, "includeRaiReason": True}
        else:
            if request.source_image is not None:
                instance["image"] = {"bytesBase64Encoded": common.b64(request.source_image),
                                     "mimeType": request.source_content_type or "image/png"}
            duration = round(request.duration_s) if request.duration_s else None
            parameters = {"aspectRatio": ratio, "durationSeconds": duration,
                          "negativePrompt": (request.negative_prompt or None)
                          if self.send_negative_prompt else None,
                          "resolution": self.resolution,
                          "personGeneration": self.person_generation,
                          "sampleCount": request.n if request.n > 1 else None}
        parameters = {k: v for k, v in parameters.items() if v is not None}
        return {"instances": [instance], "parameters": parameters}

    # ------------------------------------------------------------ running

    def generate(self, request: base.ProviderRequest,
                 progress: base.ProgressCallback | None = None) -> base.ProviderResult:
        base.submitting(self, request, progress)
        if self.method == GENERATE:
            outputs = common.one_request_per_image(
                request, progress, lambda index: self.content_image(
                    self.http.call("POST", self.path, self.payload(request, index))), self.name)
        elif self.method == PREDICT:
            answer = self.http.call("POST", self.path, self.payload(request))
            base.report(progress, 0.5, "downloading")
            outputs = [image_output(data, self.name)
                       for data in self.predicted_images(answer, request.n)]
        else:
            outputs = self.video(self.payload(request), request.n, progress)
        base.report(progress, 1.0, "downloaded")
        return base.ProviderResult(tuple(outputs))

    def refused(self, why: str) -> base.PermanentProviderError:
        return base.PermanentProviderError(base.CONTENT_REFUSED, f"{self.name}: {why}")

    def content_image(self, answer: dict) -> bytes:
        """The image of a generateContent answer, or why there is none."""
        feedback = answer.get("promptFeedback") or {}
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            raise self.refused(f"prompt blocked ({_token(feedback['blockReason'])})")
        candidates = answer.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else {}
        candidate = candidate if isinstance(candidate, dict) else {}
        content = candidate.get("content") if isinstance(candidate.get("content"), dict) else {}
        for part in content.get("parts") or ():
            inline = part.get("inlineData") if isinstance(part, dict) else None
            if isinstance(inline, dict) and not part.get("thought") \
                    and str(inline.get("mimeType", "image/")).startswith("image/"):
                return common.base64_bytes(inline.get("data"), self.name, self.http.max_download_bytes)
        finish = str(candidate.get("finishReason") or "")
        if finish in REFUSED_FINISH:
            raise self.refused(f"no image ({_token(finish)})")
        raise base.TransientProviderError(
            "invalid_provider_output",
            f"{self.name} answered without an image" + (f" ({_token(finish)})" if finish else ""))

    def predicted_images(self, answer: dict, n: int) -> list[bytes]:
        """The images of an Imagen ``predict`` answer (n of them), or a refusal."""
        images, filtered = [], 0
        for prediction in answer.get("predictions") or ():
            if not isinstance(prediction, dict):
                continue
            if prediction.get("bytesBase64Encoded"):
                images.append(common.base64_bytes(prediction["bytesBase64Encoded"], self.name,
                                         self.http.max_download_bytes))
            elif prediction.get("raiFilteredReason"):
                filtered += 1
        if len(images) >= n:
            return images[:n]
        if filtered or not images:  # Imagen drops filtered images (all: no predictions)
            raise self.refused("images filtered by the safety filter")
        raise base.TransientProviderError("invalid_provider_output",
                                          f"{self.name} answered with fewer images than asked")

    # ------------------------------------------------------------ Veo

    def video(self, body: dict, n: int, progress: base.ProgressCallback | None) -> list:
        operation = self.http.call("POST", self.path, body)
        name = operation.get("name")
        if not isinstance(name, str) or not OPERATION_NAME.match(name):
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} answered without an operation name")
        if not operation.get("done"):
            base.report(progress, 0.05, "queued")
            operation = self.wait(f"/{name}", progress, operation)
        response = self.finished(operation)
        result = response.get("generateVideoResponse") or {}
        samples = [s["video"] for s in (result.get("generatedSamples") or ())
                   if isinstance(s, dict) and isinstance(s.get("video"), dict)
                   and (s["video"].get("uri") or s["video"].get("encodedVideo"))]
        if len(samples) < n:
            if result.get("raiMediaFilteredCount") or result.get("raiMediaFilteredReasons"):
                raise self.refused("video filtered by the safety filter")
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} finished without a video")
        outputs = []
        for index, video in enumerate(samples[:n]):
            base.report(progress, 0.9 + 0.1 * index / n, "downloading")
            if isinstance(video.get("uri"), str):
                data, _ = self.http.download(video["uri"])
            else:  # the video inline instead of a URI
                data = common.base64_bytes(video["encodedVideo"], self.name, self.http.max_download_bytes)
            outputs.append(video_output(data, self.name))
        return outputs

    def wait(self, path: str, progress: base.ProgressCallback | None, first: dict) -> dict:
        """Poll the operation until it is done, tolerating ``max_poll_errors``
        transient poll failures in a row; past ``task_timeout_s`` it is
        abandoned (Veo documents no cancel call)."""
        start = self.clock()

        def read(operation: dict) -> dict | None:
            if operation.get("done"):
                return operation
            if operation is not first:
                elapsed = (self.clock() - start) / self.task_timeout_s
                base.report(progress, 0.05 + 0.8 * elapsed, "running")
            return None

        return base.wait_for_task(
            lambda: self.http.call("GET", path), read, who=self.name, first=first,
            what="the video", **base.polling(self))

    def finished(self, operation: dict) -> dict:
        """The ``response`` of a done operation, or its error as a provider error."""
        error = operation.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            shown = f"{self.name} video failed (code {code})"
            message = str(error.get("message") or "").lower()
            if any(hint in message for hint in OPERATION_REFUSAL_HINTS):
                return_error: base.ProviderError = base.PermanentProviderError(base.CONTENT_REFUSED, shown)
            elif code in TRANSIENT_CODES:
                return_error = base.TransientProviderError("provider_task_failed", shown)
            else:
                return_error = base.PermanentProviderError("provider_rejected_request", shown)
            raise return_error
        response = operation.get("response")
        if not isinstance(response, dict):
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} finished without a response")
        return response


def _token(value) -> str:
    value = str(value)
    return value if re.fullmatch(r"[A-Z_]{1,40}", value) else "other"
