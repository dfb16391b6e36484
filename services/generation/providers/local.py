"""The built-in ``local`` provider: a deterministic placeholder engine.

This is not an AI model. It exists so that development, tests and demos run
the whole pipeline with no network and no GPU, and it says so on every image
it draws ("local placeholder"). What it does:

- **text-to-image**: a gradient and a few shapes whose colours and positions
  come from a hash of the prompt, negative prompt, seed and size, with the
  prompt text written on top; PNG. Output ``i`` of ``n`` uses ``seed + i``.
- **image-to-image**: the same drawing blended over the source image by
  ``strength`` (0 keeps the source, 1 replaces it).
- **image-to-video**: a short H.264 MP4, one segment per storyboard shot
  (or one segment of ``duration_s``), each a pan, tilt or zoom over the
  source image (or, without one, over a drawing of the shot's prompt) with
  the shot's caption.

Determinism: the same request gives the same pixels, always (no wall clock,
no ``random()``; ``random.Random`` seeded from a SHA-256). PNG bytes are
stable too. MP4 bytes are stable for a given PyAV/FFmpeg build because x264
runs single-threaded with fixed settings; another FFmpeg build may encode the
same frames into different bytes.

:func:`render` is a plain function of the request, so the service can run it
through :func:`services.common.concurrency.offload` and keep the eventlet hub
free while it draws and encodes; :class:`LocalProvider` does exactly that.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import os
import random
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

from services.common.contracts.generation import (
    DEFAULT_VIDEO_DURATION_S,
    DURATION_MAX_S,
    JOB_TYPES,
    SIZE_MAX,
)
from services.generation.providers.base import (
    CAMERA_MOVES,
    IMAGE_TO_IMAGE,
    IMAGE_TO_VIDEO,
    PermanentProviderError,
    ProgressCallback,
    ProviderOutput,
    ProviderRequest,
    ProviderResult,
    Shot,
    report,
)

LABEL = "LOCAL PLACEHOLDER"
MAX_SOURCE_PIXELS = 40_000_000
PAN_MARGIN = 1.25  # the canvas a camera moves over, relative to the frame


@dataclass(frozen=True)
class LocalSettings:
    """How the placeholder draws. A request always has a size and (video) a
    duration; the defaults here serve callers that give none, and the caps
    are the job rules' (services/common/contracts/generation.py)."""

    default_size: int = 512
    max_side: int = SIZE_MAX
    video_size: int = 256
    video_max_side: int = 512
    video_fps: int = 12
    default_duration_s: float = float(DEFAULT_VIDEO_DURATION_S)
    max_video_s: float = float(DURATION_MAX_S)
    crf: int = 28
    default_strength: float = 0.6

    @classmethod
    def from_config(cls, conf: dict) -> LocalSettings:
        d = cls()
        return cls(
            default_size=int(conf.get("default_size", d.default_size)),
            max_side=int(conf.get("max_side", d.max_side)),
            video_size=int(conf.get("video_size", d.video_size)),
            video_max_side=int(conf.get("video_max_side", d.video_max_side)),
            video_fps=int(conf.get("video_fps", d.video_fps)),
            default_duration_s=float(conf.get("default_duration_s", d.default_duration_s)),
            max_video_s=float(conf.get("max_video_s", d.max_video_s)),
            crf=int(conf.get("crf", d.crf)),
            default_strength=float(conf.get("default_strength", d.default_strength)),
        )


# ------------------------------------------------------------------ determinism


def _digest(*parts) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def _rng(*parts) -> random.Random:
    return random.Random(int.from_bytes(_digest(*parts)[:8], "big"))


def base_seed(request: ProviderRequest) -> int:
    """The request's seed, or one derived from its prompt (never random)."""
    if request.seed is not None:
        return int(request.seed)
    return int.from_bytes(_digest("seed", request.prompt)[:4], "big")


# ------------------------------------------------------------------ drawing


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _colour(rng: random.Random, lightness: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(rng.random(), lightness, 0.35 + 0.5 * rng.random())
    return int(r * 255), int(g * 255), int(b * 255)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> list[str]:
    per_line = max(8, int(width / max(1.0, draw.textlength("abcdefghij", font=font) / 10)))
    lines = textwrap.wrap(" ".join(text.split()), per_line) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, per_line - 1)] + "…"
    return lines


def draw_placeholder(prompt: str, negative_prompt: str | None, seed: int,
                     width: int, height: int, caption: bool = True) -> Image.Image:
    """An RGB picture that depends only on its arguments."""
    rng = _rng("image", prompt, negative_prompt or "", seed, width, height)
    start, end = _colour(rng, 0.25), _colour(rng, 0.7)
    gradient = Image.linear_gradient("L").transpose(
        rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                    Image.Transpose.ROTATE_270, Image.Transpose.FLIP_LEFT_RIGHT]))
    image = ImageOps.colorize(gradient.resize((width, height)), start, end).convert("RGBA")

    shapes = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(shapes)
    side = min(width, height)
    for _ in range(rng.randint(5, 9)):
        x, y = rng.randrange(width), rng.randrange(height)
        r = int(side * (0.06 + 0.22 * rng.random()))
        fill = (*_colour(rng, 0.3 + 0.5 * rng.random()), rng.randint(70, 170))
        kind = rng.choice(("ellipse", "rectangle", "triangle"))
        if kind == "ellipse":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif kind == "rectangle":
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=fill)
        else:
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    image = Image.alpha_composite(image, shapes)

    if caption:
        image = Image.alpha_composite(image, _caption_layer(
            (width, height), prompt, f"{LABEL} · seed {seed}"))
    return image.convert("RGB")


def _caption_layer(size: tuple[int, int], text: str, label: str) -> Image.Image:
    """A transparent layer with ``label`` at the top and ``text`` in a band at the bottom."""
    width, height = size
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    small = _font(max(8, min(width, height) // 28))
    draw.rectangle((0, 0, width, small.size + 6 if hasattr(small, "size") else 14),
                   fill=(0, 0, 0, 120))
    draw.text((4, 3), label, font=small, fill=(255, 255, 255, 230))
    if text:
        font = _font(max(9, min(width, height) // 18))
        lines = _wrap(draw, text, font, width - 12, max_lines=4)
        line_h = int(getattr(font, "size", 11) * 1.25)
        top = height - line_h * len(lines) - 10
        draw.rectangle((0, top - 4, width, height), fill=(0, 0, 0, 140))
        for i, line in enumerate(lines):
            draw.text((6, top + i * line_h), line, font=font, fill=(255, 255, 255, 255))
    return layer


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _clamp_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def decode_source(data: bytes | None) -> Image.Image:
    if not data:
        raise PermanentProviderError("invalid_source_image", "the job has no source image")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_SOURCE_PIXELS:
            raise ValueError("too many pixels")
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except Exception as exc:
        raise PermanentProviderError(
            "invalid_source_image", f"the source image cannot be decoded: {exc}"[:300]) from None


# ------------------------------------------------------------------ images


def _render_images(request: ProviderRequest, settings: LocalSettings) -> ProviderResult:
    source = None
    if request.job_type == IMAGE_TO_IMAGE:
        source = decode_source(request.source_image)
        size = (request.width, request.height) if request.width and request.height \
            else source.size
    else:
        size = (request.width or settings.default_size, request.height or settings.default_size)
    width, height = _clamp_size(*size, settings.max_side)
    strength = settings.default_strength if request.strength is None else request.strength
    seed = base_seed(request)
    outputs = []
    for i in range(request.n):
        image = draw_placeholder(request.prompt, request.negative_prompt, seed + i,
                                 width, height, caption=source is None)
        if source is not None:
            fitted = ImageOps.fit(source, (width, height), Image.Resampling.BICUBIC)
            image = Image.blend(fitted, image, strength).convert("RGBA")
            image = Image.alpha_composite(image, _caption_layer(
                (width, height), "", f"{LABEL} · seed {seed + i} · strength {strength:g}"))
            image = image.convert("RGB")
        outputs.append(ProviderOutput(_png(image), "image/png", width, height))
    return ProviderResult(tuple(outputs))


# ------------------------------------------------------------------ video


def _even(value: int) -> int:
    return max(16, value - value % 2)


def _video_size(request: ProviderRequest, settings: LocalSettings) -> tuple[int, int]:
    width = request.width or settings.video_size
    height = request.height or settings.video_size
    width, height = _clamp_size(width, height, settings.video_max_side)
    return _even(width), _even(height)


def _ease(t: float) -> float:
    return t * t * (3 - 2 * t)


def camera_box(camera: str, t: float, canvas: tuple[int, int],
               frame: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of the canvas the camera sees at time ``t`` in [0, 1]."""
    cw, ch = canvas
    fw, fh = frame
    t = _ease(t)
    if camera in ("zoom_in", "zoom_out"):
        k = t if camera == "zoom_in" else 1 - t
        w, h = cw - (cw - fw) * k, ch - (ch - fh) * k
        x, y = (cw - w) / 2, (ch - h) / 2
    else:
        w, h = fw, fh
        x, y = (cw - fw) / 2, (ch - fh) / 2
        if camera == "pan_left":
            x = (cw - fw) * (1 - t)
        elif camera == "pan_right":
            x = (cw - fw) * t
        elif camera == "tilt_up":
            y = (ch - fh) * (1 - t)
        elif camera == "tilt_down":
            y = (ch - fh) * t
    return (x, y, x + w, y + h)


def _shots(request: ProviderRequest, settings: LocalSettings, seed: int) -> list[Shot]:
    if request.shots:
        shots = list(request.shots)
    else:
        camera = _rng("camera", request.prompt, seed).choice(CAMERA_MOVES[1:])
        shots = [Shot(request.prompt, camera, request.duration_s or settings.default_duration_s)]
    budget, kept = settings.max_video_s, []
    for shot in shots:  # the placeholder never renders past its own cap
        if budget <= 0:
            break
        kept.append(Shot(shot.prompt, shot.camera, min(shot.duration_s, budget)))
        budget -= shot.duration_s
    return kept


def _render_video(request: ProviderRequest, settings: LocalSettings) -> ProviderResult:
    import av

    width, height = _video_size(request, settings)
    canvas = (round(width * PAN_MARGIN), round(height * PAN_MARGIN))
    fps = settings.video_fps
    source = decode_source(request.source_image) if request.source_image else None
    outputs = []
    for i in range(request.n):
        seed = base_seed(request) + i
        shots = _shots(request, settings, seed)
        frames_total = 0
        with tempfile.TemporaryDirectory(prefix="darkroom-render-") as tmp:
            path = os.path.join(tmp, "out.mp4")
            with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
                stream = out.add_stream("libx264", rate=fps, options={
                    "preset": "veryfast", "crf": str(settings.crf), "threads": "1"})
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                for index, shot in enumerate(shots):
                    still = source or draw_placeholder(shot.prompt, request.negative_prompt,
                                                       seed + index, *canvas, caption=False)
                    base = ImageOps.fit(still, canvas, Image.Resampling.BICUBIC)
                    caption = _caption_layer(
                        (width, height), shot.prompt,
                        f"{LABEL} · shot {index + 1}/{len(shots)} · {shot.camera}")
                    count = max(1, round(shot.duration_s * fps))
                    for f in range(count):
                        t = f / (count - 1) if count > 1 else 0.0
                        box = camera_box(shot.camera, t, canvas, (width, height))
                        frame = base.resize((width, height), Image.Resampling.BILINEAR, box=box)
                        frame = Image.alpha_composite(frame.convert("RGBA"), caption)
                        for packet in stream.encode(av.VideoFrame.from_image(frame.convert("RGB"))):
                            out.mux(packet)
                    frames_total += count
                for packet in stream.encode():
                    out.mux(packet)
            with open(path, "rb") as fh:
                data = fh.read()
        outputs.append(ProviderOutput(data, "video/mp4", width, height,
                                      duration_s=round(frames_total / fps, 3)))
    return ProviderResult(tuple(outputs))


# ------------------------------------------------------------------ the provider


def render(request: ProviderRequest, settings: LocalSettings | None = None) -> ProviderResult:
    """Draw (and for videos encode) the request's outputs. CPU-bound, pure."""
    settings = settings or LocalSettings()
    if request.job_type == IMAGE_TO_VIDEO:
        return _render_video(request, settings)
    return _render_images(request, settings)


def _default_offload(fn, *args):
    from services.common.concurrency import offload

    return offload(fn, *args)


class LocalProvider:
    """The ``local`` adapter: :func:`render` through ``offload`` (eventlet's
    native thread pool inside a nameko service, a direct call elsewhere)."""

    job_types = frozenset(JOB_TYPES)

    def __init__(self, name: str = "local", settings: LocalSettings | None = None,
                 offload: Callable | None = None):
        self.name = name
        self.settings = settings or LocalSettings()
        self._offload = offload or _default_offload

    @classmethod
    def from_config(cls, name: str, conf: dict, offload: Callable | None = None) -> LocalProvider:
        return cls(name, LocalSettings.from_config(conf), offload)

    def generate(self, request: ProviderRequest,
                 progress: ProgressCallback | None = None) -> ProviderResult:
        report(progress, 0.0, "rendering")
        result = self._offload(render, request, self.settings)
        report(progress, 1.0, "rendered")
        return result
