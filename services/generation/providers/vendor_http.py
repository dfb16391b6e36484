"""Small helpers the vendor adapters (``openrouter``, ``gemini``) share.

- :class:`VendorHttp`: :class:`ProviderHttp` plus the vendor's own reading of
  an error answer (``classify``), consulted before the generic status mapping
  of :func:`raise_for_status` (e.g. OpenRouter's 403 is its moderation
  refusal, not an auth failure; Google puts its retry hint in the body).
- :func:`conf_job_types`, :func:`conf_str`: config checks that name the key.
- :func:`decode_b64`, :func:`data_uri`, :func:`aspect_ratio`: payload pieces.
- :func:`one_request_per_image`: n images from a vendor that makes one per call.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from fractions import Fraction

import requests

from services.common.config import flag
from services.generation.providers.base import (
    ProgressCallback,
    ProviderError,
    ProviderOutput,
    ProviderRequest,
    TransientProviderError,
    report,
)
from services.generation.providers.http import ProviderHttp
from services.generation.providers.media import image_output

#: ``classify(response)`` → the error to raise for this non-2xx answer, or None
#: to let the generic mapping decide.
Classifier = Callable[[requests.Response], ProviderError | None]


class VendorHttp(ProviderHttp):
    """:class:`ProviderHttp` whose non-2xx answers first go to ``classify``."""

    def __init__(self, *args, classify: Classifier | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.classify = classify

    @classmethod
    def from_config(cls, name: str, conf: dict, default_base_url: str, *,
                    classify: Classifier | None = None, **kwargs) -> VendorHttp:
        return cls(name, str(conf.get("base_url") or default_base_url),
                   conf_str(conf, "api_key"), float(conf.get("timeout_s", 120)),
                   int(conf.get("max_download_bytes", 200 * 1024 * 1024)),
                   conf.get("result_url_allow") or (),
                   allow_private_network=flag(conf.get("allow_private_network", False)),
                   classify=classify, **kwargs)

    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        response = super()._send(method, url, **kwargs)
        if self.classify is not None and response.status_code >= 400:
            error = self.classify(response)
            if error is not None:
                response.close()
                raise error
        return response


def error_body(response: requests.Response) -> dict:
    """The ``error`` object of a JSON error answer, or ``{}``."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):  # not JSON, or not an object
        return {}
    return error if isinstance(error, dict) else {}


def conf_str(conf: dict, key: str, default: str | None = None) -> str:
    """A required non-empty string setting (``default`` when absent)."""
    value = conf.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} is required (a non-empty string)")
    return value.strip()


def conf_job_types(conf: dict, supported: Iterable[str]) -> frozenset[str]:
    """``job_types`` from config, each one the adapter can run (default: all of them)."""
    supported = tuple(supported)
    value = conf.get("job_types") or supported
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError("job_types must be a list of job types")
    unknown = sorted(set(value) - set(supported))
    if unknown:
        raise ValueError(f"job_types: {unknown[0]!r} is not one of {', '.join(supported)}")
    return frozenset(value)


def conf_choice(conf: dict, key: str, choices: Iterable[str]) -> str | None:
    """An optional setting that must be one of ``choices``."""
    value = conf.get(key)
    if value is None:
        return None
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}")
    return value


def decode_b64(data, provider: str, max_bytes: int) -> bytes:
    """Base64 from a vendor's answer, size-capped; anything else is malformed."""
    if not isinstance(data, str) or len(data) > max_bytes * 4 // 3 + 4:
        raise TransientProviderError("invalid_provider_output",
                                     f"{provider} sent an image that is missing or too large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise TransientProviderError("invalid_provider_output",
                                     f"{provider} sent invalid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, content_type: str | None) -> str:
    return f"data:{content_type or 'image/png'};base64,{b64(data)}"


def aspect_ratio(width: int | None, height: int | None, choices: Iterable[str]) -> str | None:
    """The supported ``"W:H"`` ratio closest to ``width``/``height``, or None."""
    if not width or not height:
        return None
    wanted = Fraction(width, height)

    def distance(choice: str) -> float:
        w, h = (int(part) for part in choice.split(":"))
        return abs(float(Fraction(w, h) / wanted) - 1.0)

    return min(choices, key=distance)


def one_request_per_image(request: ProviderRequest, progress: ProgressCallback | None,
                          fetch: Callable[[int], bytes], provider: str) -> list[ProviderOutput]:
    """For a vendor without ``n``: ``fetch(index)`` makes image ``index`` (its
    payload carries seed + index, so a seeded request still gives n different
    images); each result is checked as an image."""
    outputs = []
    for index in range(request.n):
        data = fetch(index)
        report(progress, (index + 0.5) / request.n, "downloading")
        outputs.append(image_output(data, provider))
    return outputs


def seed_for(request: ProviderRequest, index: int) -> int | None:
    """The seed of image ``index`` of a request (None: the vendor picks)."""
    return None if request.seed is None else request.seed + index
