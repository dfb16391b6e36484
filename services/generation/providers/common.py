"""What the vendor adapters share besides HTTP (that is providers/http.py):

- config checks that name the key: :func:`conf_str`, :func:`job_types_of`
  and :func:`conf_job_types`, :func:`conf_choice`, :func:`conf_number`,
  :func:`download_settings`;
- base64 both ways: :func:`b64`, :func:`data_uri` (a source image inline),
  :func:`base64_bytes` and :func:`data_uri_bytes` (an output a vendor sent
  inline, size-capped);
- payload pieces: :func:`aspect_ratio`, :func:`seed_for`;
- :func:`one_request_per_image`: n images from a vendor that makes one per call;
- :func:`retry_after_polls`: polls that honour a vendor's ``Retry-After``;
- :func:`media_output`: a result that may be an image or a video;
- :func:`answer_id`: the task id an answer must carry.

Polling a task until it is done is :func:`services.generation.providers.base.wait_for_task`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction

from services.common.config import flag
from services.generation.providers.base import (
    ProgressCallback,
    ProviderOutput,
    ProviderRequest,
    TransientProviderError,
    report,
)
from services.generation.providers.media import image_output, video_output

# ------------------------------------------------------------------ config


def conf_str(conf: dict, key: str, default: str | None = None) -> str:
    """A required non-empty string setting (``default`` when absent)."""
    value = conf.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} is required (a non-empty string)")
    return value.strip()


def job_types_of(value, supported: Iterable[str]) -> frozenset[str]:
    """Job types (a list, or a comma-separated string), each one the adapter
    can run (``supported``), at least one."""
    supported = tuple(supported)
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple | set | frozenset) \
            or not all(isinstance(v, str) for v in value):
        raise ValueError("job_types must be a list of job types")
    if not value:
        raise ValueError(f"job_types: none given (one of {', '.join(supported)})")
    unknown = sorted(set(value) - set(supported))
    if unknown:
        raise ValueError(f"job_types: {unknown[0]!r} is not one of {', '.join(supported)}")
    return frozenset(value)


def conf_job_types(conf: dict, supported: Iterable[str]) -> frozenset[str]:
    """``job_types`` from config (default: all ``supported``)."""
    supported = tuple(supported)
    return job_types_of(conf.get("job_types") or supported, supported)


def conf_choice(conf: dict, key: str, choices: Iterable[str]) -> str | None:
    """An optional setting that must be one of ``choices``."""
    value = conf.get(key)
    if value is None:
        return None
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}")
    return value


def conf_number(conf: dict, key: str, default: float, *, minimum: float = 0.0,
                whole: bool = False) -> float:
    """``conf[key]`` as a number above ``minimum`` (at least it, for a ``whole`` one)."""
    try:
        value = (int if whole else float)(conf.get(key, default))
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a {'whole ' if whole else ''}number") from None
    if value < minimum or (not whole and value == minimum):
        raise ValueError(f"{key} must be {'at least' if whole else 'above'} {minimum:g}")
    return value


def download_settings(conf: dict, max_download_bytes: int) -> dict:
    """The adapter keyword arguments of the HTTP side's shared settings:
    ``max_download_bytes`` (a whole number >= 1; the adapter's default),
    ``result_url_allow``, ``allow_private_network`` (see providers/http.py)."""
    return {"max_download_bytes": int(conf_number(conf, "max_download_bytes", max_download_bytes,
                                                  minimum=1, whole=True)),
            "result_url_allow": conf.get("result_url_allow") or (),
            "allow_private_network": flag(conf.get("allow_private_network", False))}


# ------------------------------------------------------------------ base64


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, content_type: str | None) -> str:
    """Bytes inline as ``data:<type>;base64,...`` (a source image; PNG when untyped)."""
    return f"data:{content_type or 'image/png'};base64,{b64(data)}"


def base64_bytes(text, provider: str, max_bytes: int) -> bytes:
    """An output a vendor sent inline as base64 (``b64_json``, ``inlineData``),
    decoded; missing, too large (over ``max_bytes`` decoded) or not base64 is
    a malformed answer."""
    if not isinstance(text, str) or len(text) > max_bytes * 4 // 3 + 4:
        raise TransientProviderError("invalid_provider_output",
                                     f"{provider} sent an output that is missing or too large")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TransientProviderError("invalid_provider_output",
                                     f"{provider} sent invalid base64") from None


def data_uri_bytes(uri: str, provider: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:<type>;base64,...`` output (see :func:`base64_bytes`)."""
    header, _, encoded = uri.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise TransientProviderError("invalid_provider_output",
                                     f"{provider} sent an output data URI we cannot take")
    return base64_bytes(encoded, provider, max_bytes)


def answer_id(value, provider: str, what: str) -> str:
    """The id a vendor's answer names its task by (``what``: "a task id"),
    which must be a non-empty string: anything else is a malformed answer."""
    if not isinstance(value, str) or not value:
        raise TransientProviderError("invalid_provider_output",
                                     f"{provider} answered without {what}")
    return value


# ------------------------------------------------------------------ payloads


def aspect_ratio(width: int | None, height: int | None, choices: Iterable[str]) -> str | None:
    """The supported ``"W:H"`` ratio closest to ``width``/``height``, or None."""
    if not width or not height:
        return None
    wanted = Fraction(width, height)

    def distance(choice: str) -> float:
        w, h = (int(part) for part in choice.split(":"))
        return abs(float(Fraction(w, h) / wanted) - 1.0)

    return min(choices, key=distance)


def seed_for(request: ProviderRequest, index: int) -> int | None:
    """The seed of image ``index`` of a request made one image per call:
    seed + index, so a seeded request still gives n different images (None:
    the vendor picks)."""
    return None if request.seed is None else request.seed + index


def one_request_per_image(request: ProviderRequest, progress: ProgressCallback | None,
                          fetch: Callable[[int], bytes], provider: str,
                          stage: str = "downloading") -> list[ProviderOutput]:
    """For a vendor without ``n``: ``fetch(index)`` makes image ``index`` (its
    payload carries :func:`seed_for` the index); each result is checked as an
    image; progress ``stage`` after each."""
    outputs = []
    for index in range(request.n):
        data = fetch(index)
        report(progress, (index + 0.5) / request.n, stage)
        outputs.append(image_output(data, provider))
    return outputs


def retry_after_polls(fetch: Callable[[], dict], sleep: Callable[[float], None]
                      ) -> tuple[Callable[[], dict], Callable[[float], None]]:
    """``(fetch, sleep)`` for :func:`.base.wait_for_task` that, after a poll
    failed with a ``Retry-After`` (a 429), wait as long as the vendor asked
    when that is longer than the poll interval."""
    hint = [0.0]

    def polled() -> dict:
        hint[0] = 0.0
        try:
            return fetch()
        except TransientProviderError as error:
            hint[0] = error.retry_after or 0.0
            raise

    def waited(seconds: float) -> None:
        sleep(max(seconds, hint[0]))

    return polled, waited


def media_output(data: bytes, content_type: str, provider: str) -> ProviderOutput:
    """A downloaded result that may be either kind: an MP4 (by its ``ftyp``
    box, or a ``video/*`` content type) is checked as a video, anything else
    as an image."""
    if data[4:8] == b"ftyp" or content_type.startswith("video/"):
        return video_output(data, provider)
    return image_output(data, provider)


def field_mapping(value, fields: tuple[str, ...], input_name, default: dict[str, str]
                  ) -> dict[str, str]:
    """A hosted engine's ``inputs`` setting, checked: Darkroom field -> the
    model's input name (``input_name``, a compiled pattern, says what a name may
    be); ``default`` when unset. A ``ValueError`` names the key."""
    if value is None:
        return dict(default)
    if not isinstance(value, Mapping) or not value:
        raise ValueError("inputs must map Darkroom fields to the model's input names")
    checked = {}
    for field, name in value.items():
        if field not in fields:
            raise ValueError(f"inputs.{field}: not a Darkroom field ({', '.join(fields)})")
        if not isinstance(name, str) or not input_name.fullmatch(name):
            raise ValueError(f"inputs.{field}: {name!r} is not an input name")
        checked[str(field)] = name
    return checked
