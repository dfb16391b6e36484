"""Helpers of providers/common.py that several adapters share: polls that
honour a vendor's Retry-After, and a result that may be an image or a video."""

from __future__ import annotations

import pytest

from services.generation.providers import base, common
from tests.fakes.providers import mp4_bytes, png_bytes


def test_a_poll_refused_with_retry_after_waits_that_long_once():
    answers = [base.TransientProviderError("provider_rate_limited", retry_after=7),
               {"status": "running"},
               base.TransientProviderError("provider_server_error"),
               base.TransientProviderError("provider_rate_limited", retry_after=0.5),
               {"status": "done"}]

    def fetch():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slept, now = [], [0.0]

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    polled, waited = common.retry_after_polls(fetch, sleep)
    result = base.wait_for_task(
        polled, lambda answer: answer if answer["status"] == "done" else None, who="v",
        interval_s=2, timeout_s=60, max_errors=3, sleep=waited, clock=lambda: now[0])
    assert result == {"status": "done"}
    # 7 after the 429, the interval after an answer, an error without a hint, a short hint
    assert slept == [7, 2, 2, 2]


def test_a_result_is_a_video_by_its_mp4_box_or_content_type_else_an_image():
    video = common.media_output(mp4_bytes(32, 32), "application/octet-stream", "v")
    assert (video.content_type, video.width, video.duration_s is not None) == \
        ("video/mp4", 32, True)
    image = common.media_output(png_bytes(8, 6), "image/png", "v")
    assert (image.content_type, image.width, image.height) == ("image/png", 8, 6)
    with pytest.raises(base.TransientProviderError) as caught:
        common.media_output(png_bytes(8, 6), "video/mp4", "v")  # checked as what it claims
    assert caught.value.code == "invalid_provider_output"
