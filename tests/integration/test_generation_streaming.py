"""Outputs stream from the vendor: the async task adapter downloads a video
over real loopback HTTP (tests/fakes/providers.py, a padded MP4 written by
the fake chunk by chunk) into a temporary file, within
``max_download_bytes``; a result over the cap fails the attempt with
``invalid_provider_output``, with or without a declared length, the router
fails over, and no temporary file is left behind."""

from __future__ import annotations

import hashlib
import os
import tempfile

import pytest

from services.generation.providers.async_task import AsyncTaskProvider
from services.generation.providers.base import (
    IMAGE_TO_VIDEO,
    ProviderRequest,
    TransientProviderError,
    collecting,
)
from services.generation.providers.router import build_router
from tests.fakes.providers import FakeAsyncTasks, padded_mp4, png_bytes

pytestmark = pytest.mark.integration

MB = 1024 * 1024
REQUEST = ProviderRequest(IMAGE_TO_VIDEO, "a slow pan over a harbour", width=64, height=64,
                          source_image=png_bytes(32, 32), source_content_type="image/png",
                          duration_s=1)


def temp_files() -> set[str]:
    """This process's open files in the temporary directory, and the files there."""
    tmp = tempfile.gettempdir()
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(tmp):
            found.add(target)
    return found | {os.path.join(tmp, name) for name in os.listdir(tmp)}


def video(fake, cap: int) -> AsyncTaskProvider:
    return AsyncTaskProvider("clips", fake.url, poll_interval_s=0.01,
                             max_download_bytes=cap, allow_private_network=True)


@pytest.fixture
def tasks():
    with FakeAsyncTasks(polls_to_finish=1) as fake:
        yield fake


def test_a_large_video_is_streamed_to_a_file_and_checked(tasks):
    tasks.result = padded_mp4(12 * MB)
    whole = hashlib.sha256(b"".join(padded_mp4(12 * MB).chunks())).hexdigest()
    with collecting() as bodies:
        (output,) = video(tasks, 20 * MB).generate(REQUEST).outputs
        assert output.body is bodies[0] and not output.body.in_memory
        assert (output.content_type, output.width, output.height) == ("video/mp4", 64, 64)
        assert output.body.size == 12 * MB and output.body.sha256 == whole
    assert output.body.closed


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_a_result_over_the_cap_fails_and_leaves_no_temporary_file(tasks, declared):
    tasks.result = padded_mp4(12 * MB, declared=declared)
    before = temp_files()
    with collecting() as bodies, pytest.raises(TransientProviderError) as caught:
        video(tasks, 4 * MB).generate(REQUEST)
    assert caught.value.code == "invalid_provider_output"
    assert "too large" in caught.value.message
    # a declared length is refused before a body is made; without one, the
    # partial body is deleted
    assert len(bodies) == (0 if declared else 1) and all(body.closed for body in bodies)
    assert temp_files() <= before


def test_an_oversized_result_fails_over_to_the_next_provider(tasks):
    tasks.result = padded_mp4(8 * MB, declared=False)
    router = build_router({
        "providers": {
            "clips": {"type": "async_task", "base_url": tasks.url, "poll_interval_s": 0.01,
                      "max_download_bytes": 2 * MB, "allow_private_network": True},
            "local": {"type": "local", "video_size": 64, "video_fps": 4},
        },
        "routes": {"image-to-video": ["clips", "local"]},
        "retry": {"attempts": 1, "base_delay_s": 0.01, "max_delay_s": 0.05},
    })
    before = temp_files()
    with collecting():
        routed = router.run(REQUEST)
        assert routed.provider == "local"
        assert [(a.provider, a.code) for a in routed.attempts][0] == \
            ("clips", "invalid_provider_output")
    assert temp_files() <= before
