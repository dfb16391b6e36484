"""The local placeholder renderer: deterministic images and tiny MP4s."""

from __future__ import annotations

import io

import av
import pytest
from PIL import Image, ImageChops

from services.generation.providers.base import PermanentProviderError, ProviderRequest, Shot
from services.generation.providers.local import (
    LocalProvider,
    LocalSettings,
    base_seed,
    camera_box,
    render,
)
from services.generation.providers.media import image_output, video_output

TINY_VIDEO = LocalSettings(video_size=128, video_fps=8)


def t2i(**kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "text-to-image", "prompt": "a lighthouse at dusk",
                              "seed": 42, "width": 128, "height": 96, **kw})


def pixels(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def differs(a: bytes, b: bytes) -> bool:
    return ImageChops.difference(pixels(a), pixels(b)).getbbox() is not None


# ------------------------------------------------------------------ images


def test_the_same_prompt_seed_and_size_give_the_same_bytes():
    first, second = render(t2i()), render(t2i())
    assert first.outputs[0].data == second.outputs[0].data


@pytest.mark.parametrize("change", [{"seed": 43}, {"prompt": "a lighthouse at dawn"},
                                    {"negative_prompt": "fog"}])
def test_a_different_seed_or_prompt_gives_different_pixels(change):
    assert differs(render(t2i()).outputs[0].data, render(t2i(**change)).outputs[0].data)


def test_n_images_use_consecutive_seeds():
    many = render(t2i(n=3)).outputs
    assert len(many) == 3
    assert len({o.data for o in many}) == 3
    assert many[1].data == render(t2i(seed=43)).outputs[0].data


def test_images_are_pngs_of_the_requested_size():
    output = render(t2i()).outputs[0]
    assert (output.content_type, output.width, output.height) == ("image/png", 128, 96)
    checked = image_output(output.data, "local")  # decodes for real
    assert (checked.width, checked.height) == (128, 96)


def test_default_size_and_the_cap_on_the_longest_side():
    settings = LocalSettings(default_size=64, max_side=100)
    assert render(t2i(width=None, height=None), settings).outputs[0].width == 64
    capped = render(t2i(width=400, height=200), settings).outputs[0]
    assert (capped.width, capped.height) == (100, 50)


def test_without_a_seed_the_prompt_decides_and_stays_deterministic():
    request = t2i(seed=None)
    assert base_seed(request) == base_seed(t2i(seed=None))
    assert base_seed(request) != base_seed(t2i(seed=None, prompt="other"))
    assert render(request).outputs[0].data == render(t2i(seed=None)).outputs[0].data


def _source(colour=(10, 200, 30), size=(160, 120)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def i2i(strength: float, **kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "image-to-image", "prompt": "make it wintry", "seed": 5,
                              "strength": strength, "source_image": _source(), **kw})


def _mean_distance(data: bytes, colour) -> float:
    image = pixels(data).crop((0, 40, 160, 80))  # below the label, above any caption
    values = list(image.getdata())
    return sum(sum(abs(p[i] - colour[i]) for i in range(3)) for p in values) / len(values)


def test_image_to_image_keeps_the_source_in_proportion_to_strength():
    colour = (10, 200, 30)
    weak = render(i2i(0.0)).outputs[0]
    medium = render(i2i(0.5)).outputs[0]
    strong = render(i2i(1.0)).outputs[0]
    assert (weak.width, weak.height) == (160, 120)  # the source's size by default
    assert _mean_distance(weak.data, colour) < 1
    assert _mean_distance(weak.data, colour) < _mean_distance(medium.data, colour) \
        < _mean_distance(strong.data, colour)
    assert render(i2i(0.5)).outputs[0].data == medium.data


def test_image_to_image_honours_a_requested_size():
    output = render(i2i(0.3, width=64, height=64)).outputs[0]
    assert (output.width, output.height) == (64, 64)


def test_a_source_that_is_not_an_image_is_a_permanent_error():
    with pytest.raises(PermanentProviderError) as caught:
        render(i2i(0.5, source_image=b"definitely not a picture"))
    assert caught.value.code == "invalid_source_image"


# ------------------------------------------------------------------ video


def storyboard(**kw) -> ProviderRequest:
    return ProviderRequest(**{
        "job_type": "image-to-video", "prompt": "a bottle of perfume", "seed": 3,
        "shots": (Shot("the bottle appears", "zoom_in", 1.0), Shot("close-up", "pan_left", 0.5)),
        **kw})


def _frames(data: bytes) -> list[Image.Image]:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


def test_a_storyboard_becomes_an_h264_mp4_with_one_segment_per_shot():
    output = render(storyboard(), TINY_VIDEO).outputs[0]
    assert (output.content_type, output.width, output.height) == ("video/mp4", 128, 128)
    assert output.duration_s == 1.5
    checked = video_output(output.data, "local")
    assert (checked.width, checked.height) == (128, 128)
    with av.open(io.BytesIO(output.data)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    frames = _frames(output.data)
    assert len(frames) == 8 + 4  # round(duration * fps) per shot
    # each segment draws its own shot (no source image): the cut is visible
    cut = ImageChops.difference(frames[7].convert("RGB"), frames[8].convert("RGB"))
    within = ImageChops.difference(frames[6].convert("RGB"), frames[7].convert("RGB"))
    assert sum(cut.convert("L").getdata()) > 3 * sum(within.convert("L").getdata())


def test_the_same_video_request_encodes_to_the_same_bytes():
    assert render(storyboard(), TINY_VIDEO).outputs[0].data == \
        render(storyboard(), TINY_VIDEO).outputs[0].data


def test_a_video_over_a_source_image_and_without_shots_uses_duration():
    request = ProviderRequest("image-to-video", "waves", seed=1, duration_s=1.0,
                              source_image=_source(), width=96, height=64)
    output = render(request, TINY_VIDEO).outputs[0]
    assert (output.width, output.height, output.duration_s) == (96, 64, 1.0)
    assert len(_frames(output.data)) == 8


def test_videos_are_capped_in_size_and_length():
    settings = LocalSettings(video_size=128, video_fps=4, video_max_side=64, max_video_s=1.0)
    output = render(storyboard(width=301, height=201), settings).outputs[0]
    assert output.width == 64 and output.height % 2 == 0 and output.height <= 43
    assert output.duration_s == 1.0


@pytest.mark.parametrize("camera, start, end", [
    ("pan_left", (25, 12.5), (0, 12.5)),
    ("pan_right", (0, 12.5), (25, 12.5)),
    ("tilt_up", (12.5, 25), (12.5, 0)),
    ("tilt_down", (12.5, 0), (12.5, 25)),
    ("static", (12.5, 12.5), (12.5, 12.5)),
])
def test_camera_moves_slide_the_view_over_the_canvas(camera, start, end):
    first = camera_box(camera, 0.0, (125, 125), (100, 100))
    last = camera_box(camera, 1.0, (125, 125), (100, 100))
    assert first[:2] == pytest.approx(start) and last[:2] == pytest.approx(end)
    assert first[2] - first[0] == pytest.approx(100)


def test_zoom_in_narrows_the_view_and_zoom_out_widens_it():
    widths = [camera_box("zoom_in", t, (125, 125), (100, 100)) for t in (0.0, 0.5, 1.0)]
    assert [b[2] - b[0] for b in widths] == pytest.approx([125, 112.5, 100])
    out = camera_box("zoom_out", 0.0, (125, 125), (100, 100))
    assert out[2] - out[0] == pytest.approx(100)


# ------------------------------------------------------------------ the provider


def test_the_provider_renders_through_offload_and_reports_progress():
    calls, progress = [], []

    def offload(fn, *args):
        calls.append(fn)
        return fn(*args)

    provider = LocalProvider("local", offload=offload)
    result = provider.generate(t2i(), lambda f, s: progress.append((f, s)))
    assert calls == [render]
    assert result.outputs[0].data == render(t2i()).outputs[0].data
    assert progress == [(0.0, "rendering"), (1.0, "rendered")]


def test_the_default_offload_calls_directly_outside_eventlet():
    result = LocalProvider().generate(t2i())
    assert result.outputs[0].width == 128
