"""Inspect what a provider returned: is it really an image or a video, and
what are its dimensions? A provider's word (its Content-Type) is not trusted:
the bytes are decoded, and anything else is a malformed answer (transient,
so the router may retry or fail over)."""

from __future__ import annotations

import io

from PIL import Image

from services.generation.providers.base import ProviderOutput, TransientProviderError

IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MAX_PIXELS = 40_000_000


def image_output(data: bytes, provider: str) -> ProviderOutput:
    """A PNG, JPEG or WebP image, checked by decoding its header and pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
            width, height = image.size
            if fmt not in IMAGE_TYPES:
                raise ValueError(f"unsupported format {fmt}")
            if width * height > MAX_PIXELS:
                raise ValueError("too many pixels")
            image.verify()
    except Exception as exc:
        raise TransientProviderError(
            "invalid_provider_output", f"{provider} returned an invalid image: {exc}"[:300]
        ) from None
    return ProviderOutput(data=data, content_type=IMAGE_TYPES[fmt], width=width, height=height)


def video_output(data: bytes, provider: str) -> ProviderOutput:
    """An MP4 with a video stream, checked by opening it with PyAV."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if "mp4" not in container.format.name.split(","):
                raise ValueError(f"not an MP4 ({container.format.name})")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
    except Exception as exc:
        raise TransientProviderError(
            "invalid_provider_output", f"{provider} returned an invalid video: {exc}"[:300]
        ) from None
    if not width or not height:
        raise TransientProviderError("invalid_provider_output",
                                     f"{provider} returned a video without dimensions")
    return ProviderOutput(data=data, content_type="video/mp4", width=width, height=height,
                          duration_s=round(duration, 3))
