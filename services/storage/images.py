"""Validation and cleaning of user-supplied images (PNG, JPEG, WebP).

The order matters: the type comes from the magic bytes (never the file name or
the declared content type); the dimensions come from the format's header, read
here without Pillow, and anything over the pixel cap is refused before a
single pixel is decoded. Only then does Pillow decode (restricted to the
sniffed format, with its own bomb guard set to the same cap), apply the EXIF
orientation and re-encode into the same format with no metadata: no EXIF (so
no GPS), no XMP, no comments; an embedded ICC profile is applied (pixels
converted to sRGB) and not carried over.

Memory: one decode holds up to ``MAX_IMAGE_PIXELS`` × 4 bytes (and copies of
it while cleaning), whatever the file's size: a 100 KB PNG can decode to
160 MB. So a process decodes at most ``STORAGE_MAX_CONCURRENT_DECODES``
images at once (:class:`DecodeGate`); an upload that waits longer than
``STORAGE_DECODE_WAIT_SECONDS`` for its turn is refused with 503
``storage_busy`` (retry later) instead of queueing without bound.
"""

from __future__ import annotations

import hashlib
import io
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageCms, ImageOps

from services.common.errors import DomainError, payload_too_large

CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
ALLOWED = sorted(CONTENT_TYPES.values())
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    content_type: str
    width: int
    height: int
    sha256: str  # hex

    @property
    def size(self) -> int:
        return len(self.data)


# ------------------------------------------------------------------ errors


def unsupported_media_type() -> DomainError:
    return DomainError("unsupported_media_type", "the file is not a PNG, JPEG or WebP image", 415,
                       {"allowed": ALLOWED})


def invalid_image(reason: str) -> DomainError:
    return DomainError("invalid_image", f"the image cannot be decoded: {reason}", 400)


def image_too_large(width: int, height: int, max_pixels: int) -> DomainError:
    return DomainError("image_too_large", f"the image has more than {max_pixels} pixels", 422,
                       {"width": width, "height": height, "max_pixels": max_pixels})


def storage_busy(retry_after: int) -> DomainError:
    return DomainError("storage_busy", "too many images are being processed; try again shortly",
                       503, {"retry_after": retry_after})


# ------------------------------------------------------------------ the decode bound


class DecodeGate:
    """At most ``limit`` decodes at once in this process; a caller waits up to
    ``wait_seconds`` for a turn, then gets 503 ``storage_busy``.

    Take the slot in the worker (a green thread under ``nameko run``, where
    ``threading`` is eventlet's) and run the decode itself in the native
    thread pool (:func:`services.common.concurrency.offload`) inside it: the
    semaphore is made when the service starts, after the monkey-patching, so
    it is a green one there and a plain one in tests."""

    def __init__(self, limit: int, wait_seconds: float):
        if limit < 1:
            raise ValueError("STORAGE_MAX_CONCURRENT_DECODES must be at least 1")
        self.limit, self.wait_seconds = limit, max(0.0, wait_seconds)
        self._slots = threading.BoundedSemaphore(limit)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise storage_busy(max(1, round(self.wait_seconds)))
        try:
            yield
        finally:
            self._slots.release()


# ------------------------------------------------------------------ reading


def read_capped(stream: BinaryIO, max_bytes: int) -> bytes:
    """All of ``stream``, or 413 payload_too_large as soon as it exceeds ``max_bytes``."""
    parts, total = [], 0
    while chunk := stream.read(min(1024 * 1024, max_bytes + 1 - total)):
        parts.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise payload_too_large(max_bytes)
    return b"".join(parts)


def sniff(data: bytes) -> str | None:
    """The Pillow format name the magic bytes announce (PNG, JPEG, WEBP), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def header_dimensions(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG/JPEG/WebP file, or None when
    the header is missing or malformed. Decodes nothing."""
    try:
        if fmt == "PNG":
            if data[12:16] != b"IHDR":
                return None
            return struct.unpack(">II", data[16:24])
        if fmt == "WEBP":
            return _webp_dimensions(data)
        if fmt == "JPEG":
            return _jpeg_dimensions(data)
    except (struct.error, IndexError):
        return None
    return None


def _webp_dimensions(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1 / height-1
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":  # lossless: signature 0x2f then 14-bit width-1, 14-bit height-1
        if data[20] != 0x2F:
            return None
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":  # lossy: frame tag (3), start code (3), then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


# ------------------------------------------------------------------ processing


def process_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                   max_bytes: int | None = None) -> CleanImage:
    """Validate ``data`` and return it re-encoded without metadata.

    Raises DomainError: 413 payload_too_large, 415 unsupported_media_type,
    400 invalid_image, 422 image_too_large. Thread-safe (the storage service
    runs it in a native thread): no warning filters are changed; Pillow's
    DecompressionBombWarning condition (more pixels than its cap) is checked
    explicitly instead, and its DecompressionBombError is caught.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise payload_too_large(max_bytes)
    fmt = sniff(data)
    if fmt is None:
        raise unsupported_media_type()
    dims = header_dimensions(data, fmt)
    if dims is None:
        raise invalid_image("missing or malformed header")
    width, height = dims
    if width <= 0 or height <= 0:
        raise invalid_image("zero-sized image")
    if width * height > max_pixels:
        raise image_too_large(width, height, max_pixels)

    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own guard, same cap
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as probe:
            probe.verify()  # structure and checksums (PNG CRCs...)
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            if im.width * im.height > max_pixels:  # Pillow read another size than we did
                raise image_too_large(im.width, im.height, max_pixels)
            im.load()  # the actual decode: truncated data fails here
            clean = _clean(im, fmt)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise image_too_large(width, height, max_pixels) from None
    except DomainError:
        raise
    except Exception as exc:  # Pillow reports corrupt data as OSError, SyntaxError, ValueError...
        raise invalid_image(_reason(exc)) from None

    out = io.BytesIO()
    try:
        _save(clean, out, fmt)
    except Exception as exc:  # a mode or variant the encoder cannot write
        raise invalid_image(f"cannot be re-encoded: {_reason(exc)}") from None
    encoded = out.getvalue()
    return CleanImage(encoded, CONTENT_TYPES[fmt], clean.width, clean.height,
                      hashlib.sha256(encoded).hexdigest())


def _reason(exc: Exception) -> str:
    text = str(exc)
    if not text or " at 0x" in text:  # "cannot identify image file <_io.BytesIO object at 0x...>"
        return "unrecognised or corrupt data"
    return text


def _clean(im: Image.Image, fmt: str) -> Image.Image:
    """The pixels, upright, in sRGB, with no metadata left but PNG transparency."""
    clean = ImageOps.exif_transpose(im)  # a copy with the orientation applied
    icc = im.info.get("icc_profile")
    if icc:
        clean = _to_srgb(clean, icc)
    if clean is im:
        clean = im.copy()
    transparency = im.info.get("transparency")
    keep = fmt == "PNG" and transparency is not None and clean.mode == im.mode
    clean.info = {"transparency": transparency} if keep else {}
    return clean


def _to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    if im.mode not in ("RGB", "RGBA", "CMYK"):
        return im
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        output_mode = "RGBA" if im.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"),
                                              outputMode=output_mode)
        return converted if converted is not None else im
    except Exception:  # an unusable profile: keep the pixels as they are
        return im


def _save(im: Image.Image, out: io.BytesIO, fmt: str) -> None:
    if fmt == "JPEG":
        if im.mode not in ("L", "RGB", "CMYK"):
            im = im.convert("RGB")
        im.save(out, "JPEG", quality=92, exif=b"", icc_profile=None)
    elif fmt == "WEBP":
        if im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGBA" if im.has_transparency_data else "RGB")
        im.save(out, "WEBP", quality=90, exif=b"", icc_profile=None, xmp=b"")
    else:
        im.save(out, "PNG", exif=None, icc_profile=None)
