"""The ``openrouter`` provider: image models on OpenRouter through chat completions.

``POST {base_url}/chat/completions`` (base ``https://openrouter.ai/api/v1``)
with ``Authorization: Bearer <api_key>``; the images come back in
``choices[0].message.images[]`` as ``{"type": "image_url", "image_url":
{"url": "data:image/png;base64,..."}}`` (an https URL is downloaded instead).

Config: ``base_url``, ``api_key`` (required), ``model`` (required, e.g.
``google/gemini-2.5-flash-image``), ``job_types`` (text-to-image and/or
image-to-image; default both), ``timeout_s`` (120), ``modalities``
(``["image", "text"]``; ``["image"]`` for image-only models), ``image_size``
(``1K``/``2K``/``4K``, sent as ``image_config.image_size``; default none),
``send_seed`` (true), ``max_download_bytes``. ``region``,
``max_concurrency``, ``enabled``, ``allow_private_network`` as for every provider.

What is sent
------------
One request per image::

    {"model": "<model>", "modalities": ["image", "text"],
     "messages": [{"role": "user", "content": [
         {"type": "text", "text": "<prompt>"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}],
     "image_config": {"aspect_ratio": "16:9", "image_size": "2K"},
     "seed": 7}

The source image part only for image-to-image (a data URI of its bytes; for
text-to-image ``content`` is the prompt string); ``image_config.aspect_ratio``
only when a size was asked (the supported ratio nearest to width/height),
``image_size`` only when configured, ``seed`` only when given. No ``user``,
no attribution headers (``HTTP-Referer``, ``X-Title``), no request id.

Limits
------
- No ``n`` on this route: n images are n requests; image i gets seed + i (when
  a seed was given), so a seeded request still gives n different images.
- No negative prompt: it is not sent.
- No exact size: width/height become the nearest supported aspect ratio; the
  output's real size is measured from the image.
- ``strength`` is not sent (no such field).

Errors
------
OpenRouter's ``{"error": {"code", "message", "metadata"}}``: 403 is its
moderation refusal (``content_refused``, never failed over); 401 auth; 402
out of credits and other 4xx permanent; 408, 429 (with ``Retry-After``) and
5xx transient. An error after the model started comes in a 200 body (top level
or in the choice) and is classified by its ``code`` the same way; a
``finish_reason`` of ``content_filter`` (or a native one naming safety) is a refusal.
"""

from __future__ import annotations

from services.common.config import flag
from services.generation.providers import base, common
from services.generation.providers.http import ProviderHttp

BASE_URL = "https://openrouter.ai/api/v1"
PATH = "/chat/completions"
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
IMAGE_SIZES = ("1K", "2K", "4K")
REFUSAL_REASONS = ("content_filter", "safety", "prohibited", "blocklist", "spii")


def error_for(code, provider: str, *, status: int | None = None) -> base.ProviderError:
    """OpenRouter's ``error.code`` (an HTTP status number) as a provider error."""
    code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    where = f"{provider} answered error {code}" if code else f"{provider} answered an error"
    status = status or code or None
    if code == 403:
        return base.PermanentProviderError(base.CONTENT_REFUSED, f"{where} (moderation)", status=status)
    if code == 401:
        return base.PermanentProviderError("provider_auth_failed", where, status=status)
    if code == 429:
        return base.TransientProviderError("provider_rate_limited", where, status=status)
    if code == 408:
        return base.TransientProviderError("provider_timeout", where, status=status)
    if 400 <= code < 500:
        return base.PermanentProviderError("provider_rejected_request", where, status=status)
    return base.TransientProviderError("provider_server_error", where, status=status)


def classify(provider: str):
    def check(status: int, code, where: str, response) -> base.ProviderError | None:
        if status == 403:  # documented: "your input was flagged"
            return error_for(403, provider, status=403)
        return None  # the generic mapping (429 Retry-After, 5xx, 401...)
    return check


class OpenRouterProvider:
    def __init__(self, name: str, http: ProviderHttp, model: str, *,
                 job_types=frozenset({base.TEXT_TO_IMAGE, base.IMAGE_TO_IMAGE}),
                 modalities=("image", "text"), image_size: str | None = None,
                 send_seed: bool = True):
        self.name = name
        self.http = http
        self.model = model
        self.job_types = frozenset(job_types)
        self.modalities = list(modalities)
        self.image_size = image_size
        self.send_seed = send_seed

    @classmethod
    def from_config(cls, name: str, conf: dict) -> OpenRouterProvider:
        modalities = conf.get("modalities") or ["image", "text"]
        if isinstance(modalities, str) or "image" not in modalities \
                or not set(modalities) <= {"image", "text"}:
            raise ValueError('modalities must be ["image", "text"] or ["image"]')
        http = ProviderHttp.from_config(name, conf, BASE_URL, errors=classify(name))
        return cls(name, http, common.conf_str(conf, "model"),
                   job_types=common.conf_job_types(conf, (base.TEXT_TO_IMAGE, base.IMAGE_TO_IMAGE)),
                   modalities=modalities, image_size=common.conf_choice(conf, "image_size", IMAGE_SIZES),
                   send_seed=flag(conf.get("send_seed", True)))

    def payload(self, request: base.ProviderRequest, index: int = 0) -> dict:
        """Exactly what is sent for image ``index``: prompt, parameters, source image."""
        content: str | list = request.prompt
        if request.source_image is not None and request.job_type == base.IMAGE_TO_IMAGE:
            content = [{"type": "text", "text": request.prompt},
                       {"type": "image_url", "image_url": {
                           "url": common.data_uri(request.source_image, request.source_content_type)}}]
        body = {"model": self.model, "modalities": self.modalities,
                "messages": [{"role": "user", "content": content}]}
        image_config = {}
        ratio = common.aspect_ratio(request.width, request.height, ASPECT_RATIOS)
        if ratio:
            image_config["aspect_ratio"] = ratio
        if self.image_size:
            image_config["image_size"] = self.image_size
        if image_config:
            body["image_config"] = image_config
        if self.send_seed and request.seed is not None:
            body["seed"] = common.seed_for(request, index)
        return body

    def generate(self, request: base.ProviderRequest,
                 progress: base.ProgressCallback | None = None) -> base.ProviderResult:
        base.submitting(self, request, progress)
        outputs = common.one_request_per_image(
            request, progress,
            lambda index: self.image_bytes(self.http.call("POST", PATH, self.payload(request, index))),
            self.name)
        base.report(progress, 1.0, "downloaded")
        return base.ProviderResult(tuple(outputs))

    def image_bytes(self, answer: dict) -> bytes:
        """The first image of a chat completion, or the error it carries."""
        if isinstance(answer.get("error"), dict):
            raise error_for(answer["error"].get("code"), self.name)
        choices = answer.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} answered without a choice")
        if isinstance(choice.get("error"), dict):
            raise error_for(choice["error"].get("code"), self.name)
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        for image in message.get("images") or ():
            url = (image.get("image_url") or {}).get("url") if isinstance(image, dict) else None
            if isinstance(url, str) and url.startswith("data:"):
                if url.partition(",")[0].endswith(";base64"):
                    return common.data_uri_bytes(url, self.name, self.http.max_download_bytes)
            elif isinstance(url, str) and url.startswith("https://"):
                return self.http.download(url)[0]
        reasons = f"{choice.get('finish_reason')} {choice.get('native_finish_reason')}".lower()
        if any(reason in reasons for reason in REFUSAL_REASONS):
            raise base.PermanentProviderError(base.CONTENT_REFUSED,
                                              f"{self.name}: the model refused (content filter)")
        raise base.TransientProviderError("invalid_provider_output",
                                          f"{self.name} answered without an image")
