"""The ``openai_images`` provider: any OpenAI-compatible images API.

``POST {base_url}/v1/images/generations`` with ``{model, prompt, n, size,
response_format}`` and ``Authorization: Bearer <api_key>``; the answer's
``data`` holds one item per image, either ``b64_json`` or a ``url`` that is
downloaded (see providers/http.py for how safely). The OpenAI API has no
negative prompt or seed; servers that accept them (many self-hosted ones do)
get them when the provider's config sets ``extended_params: true``.

Only text-to-image: image edits (``/v1/images/edits``) are not wired.
"""

from __future__ import annotations

from services.common.config import flag
from services.common.contracts.generation import DEFAULT_SIZE
from services.generation.providers.base import (
    TEXT_TO_IMAGE,
    ProgressCallback,
    ProviderRequest,
    ProviderResult,
    TransientProviderError,
    report,
    submitting,
)
from services.generation.providers.common import base64_bytes
from services.generation.providers.http import ProviderHttp
from services.generation.providers.media import image_output

PATH = "/v1/images/generations"


class OpenAIImagesProvider:
    job_types = frozenset({TEXT_TO_IMAGE})

    def __init__(self, name: str, base_url: str, api_key: str | None = None,
                 model: str | None = None, timeout_s: float = 120.0,
                 response_format: str = "b64_json", default_size: str = DEFAULT_SIZE,
                 extended_params: bool = False, max_download_bytes: int = 50 * 1024 * 1024,
                 result_url_allow: tuple[str, ...] = (), resolver=None,
                 allow_private_network: bool = False):
        if response_format not in ("b64_json", "url"):
            raise ValueError(f"provider {name}: response_format must be b64_json or url")
        self.name = name
        self.model = model or None
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
            model=conf.get("model") or None, timeout_s=float(conf.get("timeout_s", 120)),
            response_format=str(conf.get("response_format", "b64_json")),
            default_size=str(conf.get("default_size", DEFAULT_SIZE)),
            extended_params=flag(conf.get("extended_params", False)),
            max_download_bytes=int(conf.get("max_download_bytes", 50 * 1024 * 1024)),
            result_url_allow=conf.get("result_url_allow") or (),
            allow_private_network=flag(conf.get("allow_private_network", False)),
        )

    def payload(self, request: ProviderRequest) -> dict:
        """Exactly what is sent: the prompt and parameters, nothing else."""
        body = {"prompt": request.prompt, "n": request.n,
                "size": request.size or self.default_size,
                "response_format": self.response_format}
        if self.model:
            body["model"] = self.model
        if self.extended_params:
            if request.negative_prompt:
                body["negative_prompt"] = request.negative_prompt
            if request.seed is not None:
                body["seed"] = request.seed
        return body

    def generate(self, request: ProviderRequest,
                 progress: ProgressCallback | None = None) -> ProviderResult:
        submitting(self, request, progress)
        answer = self.http.call("POST", PATH, self.payload(request))
        items = answer.get("data")
        if not isinstance(items, list) or len(items) < request.n:
            raise TransientProviderError("invalid_provider_output",
                                         f"{self.name} answered with fewer images than asked")
        outputs = []
        for index, item in enumerate(items[: request.n]):
            report(progress, 0.5 + 0.5 * index / len(items), "downloading")
            outputs.append(image_output(self._image_bytes(item), self.name))
        report(progress, 1.0, "downloaded")
        return ProviderResult(tuple(outputs))

    def _image_bytes(self, item) -> bytes:
        if isinstance(item, dict) and isinstance(item.get("b64_json"), str):
            return base64_bytes(item["b64_json"], self.name, self.http.max_download_bytes)
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            data, _ = self.http.download(item["url"])
            return data
        raise TransientProviderError("invalid_provider_output",
                                     f"{self.name} sent an image without b64_json or url")
