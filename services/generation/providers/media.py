"""Inspect what a provider returned: is it really an image or a video, and
what are its dimensions? A provider's word (its Content-Type) is not trusted:
the bytes are decoded, and anything else is a malformed answer (transient,
so the router may retry or fail over).

Both take a :class:`~services.generation.providers.base.Body` (a download)
or bytes (an inline answer), and read the body from its file: a video is
never copied into memory. A body that fails the check is closed at once
(its temporary file deleted), since nothing will use it.
"""

from __future__ import annotations

from PIL import Image

from services.generation.providers.base import Body, ProviderOutput, TransientProviderError

IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MAX_PIXELS = 40_000_000


def _invalid(body: Body, provider: str, what: str) -> TransientProviderError:
    body.close()
    return TransientProviderError("invalid_provider_output",
                                  f"{provider} returned {what}"[:300])


def image_output(data: Body | bytes, provider: str) -> ProviderOutput:
    """A PNG, JPEG or WebP image, checked by decoding its header and pixels."""
    body = data if isinstance(data, Body) else Body.of(data)
    try:
        with body.open() as reader, Image.open(reader) as image:
            fmt = image.format
            width, height = image.size
            if fmt not in IMAGE_TYPES:
                raise ValueError(f"unsupported format {fmt}")
            if width * height > MAX_PIXELS:
                raise ValueError("too many pixels")
            image.verify()
    except Exception as exc:
        raise _invalid(body, provider, f"an invalid image: {exc}") from None
    return ProviderOutput(body=body, content_type=IMAGE_TYPES[fmt], width=width, height=height)


def video_output(data: Body | bytes, provider: str) -> ProviderOutput:
    """An MP4 with a video stream, checked by opening it with PyAV (which
    reads the container's boxes and seeks past the media data)."""
    import av

    body = data if isinstance(data, Body) else Body.of(data)
    try:
        with body.open() as reader, av.open(reader, mode="r") as container:
            if "mp4" not in container.format.name.split(","):
                raise ValueError(f"not an MP4 ({container.format.name})")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
    except Exception as exc:
        raise _invalid(body, provider, f"an invalid video: {exc}") from None
    if not width or not height:
        raise _invalid(body, provider, "a video without dimensions")
    return ProviderOutput(body=body, content_type="video/mp4", width=width, height=height,
                          duration_s=round(duration, 3))
