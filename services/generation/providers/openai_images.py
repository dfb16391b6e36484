"""The ``openai_images`` provider: OpenAI's images API, or any server speaking it.

Text-to-image: ``POST {base_url}/v1/images/generations`` with JSON ``{model,
prompt, n, size, response_format}``. Image-to-image: ``POST
{base_url}/v1/images/edits`` as OpenAI documents it, ``multipart/form-data``
with the source image as the file part ``image`` and the text parts
``prompt``, ``model``, ``n``, ``size`` (and ``response_format``); no
``mask``. Both with ``Authorization: Bearer <api_key>``.

``response_format`` is sent unless the model is a GPT image model
(``gpt-image-*``): those always answer ``b64_json`` and OpenAI refuses the
parameter for them. The answer's ``data`` holds one item per image, either
``b64_json`` or a ``url`` that is downloaded (see providers/http.py for how
safely). The OpenAI API has no negative prompt, seed or strength; servers
that accept them (many self-hosted ones do) get them when the provider's
config sets ``extended_params: true``.
"""

from __future__ import annotations

from services.common.config import flag
from services.common.contracts.generation import DEFAULT_SIZE
from services.generation.providers import base, common
from services.generation.providers.http import ProviderHttp
from services.generation.providers.media import image_output

PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
RESPONSE_FORMATS = ("b64_json", "url")
#: The file name the source image is sent under, by its type (OpenAI reads the type from it).
SOURCE_NAMES = {"image/png": "image.png", "image/jpeg": "image.jpg", "image/webp": "image.webp"}


def gpt_image_model(model: str | None) -> bool:
    """A GPT image model (``gpt-image-1``, ``gpt-image-1.5``, ...): answers
    ``b64_json`` only and takes no ``response_format``."""
    return bool(model) and str(model).startswith("gpt-image")


class OpenAIImagesProvider:
    def __init__(self, name: str, base_url: str, api_key: str | None = None,
                 model: str | None = None, timeout_s: float = 120.0,
                 response_format: str = "b64_json", default_size: str = DEFAULT_SIZE,
                 extended_params: bool = False, max_download_bytes: int = 50 * 1024 * 1024,
                 result_url_allow: tuple[str, ...] = (), resolver=None,
                 allow_private_network: bool = False,
                 job_types: tuple[str, ...] = (base.TEXT_TO_IMAGE, base.IMAGE_TO_IMAGE)):
        if response_format not in RESPONSE_FORMATS:
            raise ValueError("response_format must be b64_json or url")
        if response_format == "url" and gpt_image_model(model):
            raise ValueError(f"response_format: {model} answers b64_json only")
        self.name = name
        self.model = model or None
        self.job_types = common.job_types_of(job_types, (base.TEXT_TO_IMAGE,
                                                         base.IMAGE_TO_IMAGE))
        self.response_format = response_format
        self.default_size = default_size
        self.extended_params = extended_params
        self.http = ProviderHttp(name, base_url, api_key, timeout_s, max_download_bytes,
                                 result_url_allow, resolver,
                                 allow_private_network=allow_private_network)

    @classmethod
    def from_config(cls, name: str, conf: dict) -> OpenAIImagesProvider:
        return cls(
            name, str(conf.get("base_url") or ""), api_key=conf.get("api_key") or None,
            model=conf.get("model") or None, timeout_s=common.conf_number(conf, "timeout_s", 120),
            response_format=str(conf.get("response_format", "b64_json")),
            default_size=str(conf.get("default_size", DEFAULT_SIZE)),
            extended_params=flag(conf.get("extended_params", False)),
            max_download_bytes=int(common.conf_number(conf, "max_download_bytes",
                                                      50 * 1024 * 1024, minimum=1, whole=True)),
            result_url_allow=conf.get("result_url_allow") or (),
            allow_private_network=flag(conf.get("allow_private_network", False)),
            job_types=conf.get("job_types") or (base.TEXT_TO_IMAGE, base.IMAGE_TO_IMAGE),
        )

    def payload(self, request: base.ProviderRequest) -> dict:
        """Exactly what is sent (as JSON, or as an edit's text parts): the
        prompt and parameters, nothing else."""
        body = {"prompt": request.prompt, "n": request.n,
                "size": request.size or self.default_size}
        if not gpt_image_model(self.model):
            body["response_format"] = self.response_format
        if self.model:
            body["model"] = self.model
        if self.extended_params:
            if request.negative_prompt:
                body["negative_prompt"] = request.negative_prompt
            if request.seed is not None:
                body["seed"] = request.seed
            if request.strength is not None and request.job_type == base.IMAGE_TO_IMAGE:
                body["strength"] = request.strength
        return body

    def edit_form(self, request: base.ProviderRequest) -> tuple[dict, dict]:
        """An edit's multipart form: ``(text parts, file parts)``; the file is
        the source image, under a name that carries its type."""
        content_type = request.source_content_type or "image/png"
        files = {"image": (SOURCE_NAMES.get(content_type, "image.png"), request.source_image,
                           content_type)}
        return {key: str(value) for key, value in self.payload(request).items()}, files

    def generate(self, request: base.ProviderRequest,
                 progress: base.ProgressCallback | None = None) -> base.ProviderResult:
        base.submitting(self, request, progress)
        if request.job_type == base.IMAGE_TO_IMAGE:
            data, files = self.edit_form(request)
            answer = self.http.answer(self.http.send(
                "POST", f"{self.http.base_url}{EDITS_PATH}", data=data, files=files))
        else:
            answer = self.http.call("POST", PATH, self.payload(request))
        items = answer.get("data")
        if not isinstance(items, list) or len(items) < request.n:
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} answered with fewer images than asked")
        outputs = []
        for index, item in enumerate(items[: request.n]):
            base.report(progress, 0.5 + 0.5 * index / len(items), "downloading")
            outputs.append(image_output(self._image_bytes(item), self.name))
        base.report(progress, 1.0, "downloaded")
        return base.ProviderResult(tuple(outputs))

    def _image_bytes(self, item) -> bytes:
        if isinstance(item, dict) and isinstance(item.get("b64_json"), str):
            return common.base64_bytes(item["b64_json"], self.name, self.http.max_download_bytes)
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            data, _ = self.http.download(item["url"])
            return data
        raise base.TransientProviderError("invalid_provider_output",
                                          f"{self.name} sent an image without b64_json or url")
