"""Upload validation and cleaning: type from the bytes, pixel cap before decoding,
truncated files refused, metadata (EXIF, GPS, XMP, ICC) gone, orientation applied."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pytest
from PIL import ExifTags, Image, ImageCms

from services.common.errors import DomainError
from services.storage import images
from services.storage.images import process_upload, read_capped

GREEN, RED = (0, 255, 0), (200, 10, 10)
GPS = ExifTags.IFD.GPSInfo  # 0x8825


def make_image(fmt: str, size=(40, 20), mode="RGB", **save) -> bytes:
    """A red image with a green top-left quarter (to see where orientation moves it)."""
    im = Image.new(mode, size, RED if mode == "RGB" else (*RED, 255))
    im.paste(GREEN if mode == "RGB" else (*GREEN, 255), (0, 0, size[0] // 2, size[1] // 2))
    out = io.BytesIO()
    im.save(out, fmt, **save)
    return out.getvalue()


def exif_with_gps(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "CameraCo"
    exif[ExifTags.Base.Orientation] = orientation
    exif[GPS] = {
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (48.0, 51.0, 30.0),
        ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (2.0, 17.0, 40.0),
    }
    return exif.tobytes()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def error_of(data: bytes, **kwargs) -> DomainError:
    with pytest.raises(DomainError) as caught:
        process_upload(data, **kwargs)
    return caught.value


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height, and one tiny IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


# ------------------------------------------------------------------ accepted formats


@pytest.mark.parametrize("fmt, content_type", [
    ("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
])
def test_valid_images_come_back_in_their_format_with_size_and_hash(fmt, content_type):
    result = process_upload(make_image(fmt, (40, 20)))
    assert result.content_type == content_type
    assert (result.width, result.height) == (40, 20)
    assert result.size == len(result.data)
    assert result.sha256 == hashlib.sha256(result.data).hexdigest()
    im = decode(result.data)
    assert im.format == fmt and im.size == (40, 20)


@pytest.mark.parametrize("lossless", [True, False])
def test_webp_header_dimensions_lossy_and_lossless(lossless):
    data = make_image("WEBP", (300, 77), lossless=lossless)
    assert images.header_dimensions(data, "WEBP") == (300, 77)


def test_jpeg_header_dimensions_skip_exif_thumbnail_segments():
    data = make_image("JPEG", (123, 45), exif=exif_with_gps())
    assert images.header_dimensions(data, "JPEG") == (123, 45)


def test_png_with_alpha_keeps_transparency():
    result = process_upload(make_image("PNG", (8, 8), mode="RGBA"))
    im = decode(result.data)
    assert im.mode == "RGBA"


def test_palette_png_keeps_its_transparent_index():
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    out = io.BytesIO()
    im.save(out, "PNG", transparency=1)
    result = decode(process_upload(out.getvalue()).data)
    assert result.info.get("transparency") == 1


# ------------------------------------------------------------------ metadata stripped


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_gps_and_xmp_are_removed(fmt):
    extra = {"xmp": b"<x:xmpmeta>where I live</x:xmpmeta>"} if fmt != "PNG" else {}
    data = make_image(fmt, exif=exif_with_gps(), **extra)
    with Image.open(io.BytesIO(data)) as original:  # the test input really carries them
        assert original.getexif().get_ifd(GPS)
        assert original.getexif()[ExifTags.Base.Make] == "CameraCo"

    result = process_upload(data)
    im = decode(result.data)
    assert dict(im.getexif()) == {}
    assert not im.getexif().get_ifd(GPS)
    assert "exif" not in im.info and "xmp" not in im.info and "icc_profile" not in im.info
    for marker in (b"Exif", b"eXIf", b"CameraCo", b"xmpmeta", b"where I live"):
        assert marker not in result.data


def test_icc_profile_is_applied_and_not_carried_over():
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (srgb, profile):  # a usable profile and one that cannot map RGB (dropped)
        result = process_upload(make_image("JPEG", icc_profile=icc))
        assert "icc_profile" not in decode(result.data).info


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(fmt):
    # 6 = "rotate 90 CW to display": 40x20 becomes 20x40, the top-left quarter goes top-right
    result = process_upload(make_image(fmt, (40, 20), exif=exif_with_gps(orientation=6)))
    assert (result.width, result.height) == (20, 40)
    im = decode(result.data).convert("RGB")
    assert im.size == (20, 40)
    assert im.getexif().get(ExifTags.Base.Orientation) is None
    top_right, bottom_left = im.getpixel((15, 5)), im.getpixel((5, 35))
    assert top_right[1] > 200 and top_right[0] < 50  # green
    assert bottom_left[0] > 150 and bottom_left[1] < 50  # red


# ------------------------------------------------------------------ refused


def test_png_disguised_as_jpeg_is_sniffed_as_png():
    # there is no file name or declared type to lie with: only the bytes count
    result = process_upload(make_image("PNG"))
    assert result.content_type == "image/png"
    assert images.sniff(make_image("PNG")) == "PNG"


@pytest.mark.parametrize("data", [
    b"hello, this is plain text pretending to be photo.jpg\n",
    b"GIF89a" + b"\x00" * 64,
    b"%PDF-1.7\n" + b"\x00" * 64,
    b"",
    b"RIFF\x10\x00\x00\x00WAVEfmt ",
])
def test_anything_but_png_jpeg_webp_is_415(data):
    error = error_of(data)
    assert (error.status, error.code) == (415, "unsupported_media_type")
    assert error.details["allowed"] == ["image/jpeg", "image/png", "image/webp"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_images_are_400_invalid_image(fmt):
    data = make_image(fmt, (256, 256), **({"quality": 95} if fmt != "PNG" else {}))
    for cut in (len(data) // 2, len(data) - 20):
        error = error_of(data[:cut])
        assert (error.status, error.code) == (400, "invalid_image"), cut


def test_corrupt_png_checksum_is_400():
    data = bytearray(make_image("PNG", (32, 32)))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # flip bits inside the compressed data: CRC no longer matches
    error = error_of(bytes(data))
    assert (error.status, error.code) == (400, "invalid_image")


def test_header_only_files_are_400():
    for data in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"RIFF\x00\x00\x00\x00WEBPVP8 "):
        error = error_of(data)
        assert (error.status, error.code) == (400, "invalid_image")


def test_pixel_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    bomb = png_header_only(30000, 30000)  # 900 megapixels declared in ~100 bytes
    assert len(bomb) < 200

    def no_decoding(*args, **kwargs):
        raise AssertionError("Pillow must not be asked to open a pixel bomb")

    monkeypatch.setattr(images.Image, "open", no_decoding)
    error = error_of(bomb, max_pixels=40_000_000)
    assert (error.status, error.code) == (422, "image_too_large")
    assert error.details == {"width": 30000, "height": 30000, "max_pixels": 40_000_000}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_pixel_cap_applies_to_every_format(fmt):
    data = make_image(fmt, (100, 50))
    assert process_upload(data, max_pixels=5000).width == 100  # exactly at the cap
    error = error_of(data, max_pixels=4999)
    assert (error.status, error.code) == (422, "image_too_large")


def test_pillow_bomb_guard_is_reported_as_too_large(monkeypatch):
    # should Pillow see more pixels than the header parser did, its own guard speaks
    monkeypatch.setattr(images, "header_dimensions", lambda data, fmt: (1, 1))
    error = error_of(make_image("PNG", (200, 200)), max_pixels=100)
    assert (error.status, error.code) == (422, "image_too_large")


def test_too_many_bytes_is_413():
    data = make_image("PNG")
    error = error_of(data, max_bytes=len(data) - 1)
    assert (error.status, error.code) == (413, "payload_too_large")
    assert process_upload(data, max_bytes=len(data)).content_type == "image/png"


def test_read_capped_stops_at_the_limit():
    class Endless(io.RawIOBase):
        read_total = 0

        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[:] = b"x" * len(buffer)
            Endless.read_total += len(buffer)
            return len(buffer)

    assert read_capped(io.BytesIO(b"abc"), 3) == b"abc"
    with pytest.raises(DomainError) as caught:
        read_capped(Endless(), 10_000)
    assert (caught.value.status, caught.value.code) == (413, "payload_too_large")
    assert Endless.read_total <= 10_001


# ------------------------------------------------------------------ the decode bound


def _png(size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


def test_no_more_than_n_images_are_decoded_at_once(monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    running, peak, lock = 0, 0, threading.Lock()
    clean = images._clean

    def counting_clean(im, fmt):  # runs while the decoded pixels are held
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return clean(im, fmt)

    monkeypatch.setattr(images, "_clean", counting_clean)
    gate = images.DecodeGate(limit=2, wait_seconds=30)
    data = _png()

    def upload(_):
        with gate.slot():
            return images.process_upload(data)

    with ThreadPoolExecutor(max_workers=10) as executor:
        results = list(executor.map(upload, range(20)))
    assert len(results) == 20 and all(r.content_type == "image/png" for r in results)
    assert peak == 2


def test_a_turn_that_does_not_come_in_time_is_503_storage_busy():
    import threading

    gate = images.DecodeGate(limit=1, wait_seconds=0.05)
    errors = []
    with gate.slot():
        def other():
            try:
                with gate.slot():
                    pass
            except DomainError as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(5)
    (error,) = errors
    assert (error.code, error.status) == ("storage_busy", 503)
    assert error.details["retry_after"] >= 1
    with gate.slot():  # free again once the holder is done
        pass


def test_the_bound_holds_for_green_threads_decoding_in_the_native_pool():
    """Under ``nameko run`` the slot is taken by a green thread and the decode
    runs in eventlet's native thread pool (services.common.concurrency)."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import eventlet
eventlet.monkey_patch()
import io, threading, time
from PIL import Image
from services.common.concurrency import offload
from services.storage import images

state = {"running": 0, "peak": 0}
lock = threading.Lock()  # green, like the service's
real = images._clean

def counting_clean(im, fmt):
    with lock:
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
    time.sleep(0.05)
    with lock:
        state["running"] -= 1
    return real(im, fmt)

images._clean = counting_clean
out = io.BytesIO()
Image.new("RGB", (32, 32)).save(out, "PNG")
data = out.getvalue()
gate = images.DecodeGate(limit=3, wait_seconds=30)

def upload():
    with gate.slot():
        return offload(images.process_upload, data)

pool = eventlet.GreenPool(12)
results = list(pool.imap(lambda _: upload(), range(24)))
assert len(results) == 24
print("peak", state["peak"])
"""
    repo = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "peak 3"
