"""Prices: images by started pixel area, video by second or shot, minimums,
and the request validation shared with the gateway."""

from __future__ import annotations

import pytest

from services.billing import pricing
from services.billing.settings import BillingSettings
from services.common.contracts import billing as c
from services.common.contracts import load_rpc
from services.common.errors import DomainError

PRICES = BillingSettings().prices


def quote(**payload) -> dict:
    return pricing.quote(PRICES, load_rpc(c.Quote, payload))


@pytest.mark.parametrize("size, price", [
    ("512x512", 1), ("512x576", 2), ("768x768", 3), ("1024x1024", 4), ("1024x1536", 6),
    ("1536x1536", 9),
])
def test_images_cost_one_credit_per_started_512x512_area(size, price):
    answer = quote(type="text-to-image", size=size)
    assert answer["price"] == price
    assert answer["breakdown"]["units_per_item"] == price
    assert answer["breakdown"]["size"] == size


def test_n_images_cost_n_times_one_and_the_default_size_applies():
    assert quote(type="text-to-image", n=3)["price"] == 12
    answer = quote(type="text-to-image")
    assert answer["breakdown"]["size"] == "1024x1024" and answer["price"] == 4


def test_the_minimum_per_image_applies():
    answer = quote(type="image-to-image", size="512x512", n=2)
    assert answer["breakdown"]["per_item"] == 2
    assert answer["price"] == 4


def test_video_per_second_with_a_minimum_or_per_shot():
    assert quote(type="image-to-video")["price"] == 20  # 4 s default
    assert quote(type="image-to-video", duration_s=10)["price"] == 50
    assert quote(type="image-to-video", duration_s=1)["price"] == 10  # the minimum
    shots = quote(type="image-to-video", shots=3)
    assert shots["price"] == 45 and shots["breakdown"]["unit"] == "shot"


@pytest.mark.parametrize("payload", [
    {"type": "text-to-video"},
    {"type": "text-to-image", "size": "500x500"},
    {"type": "text-to-image", "size": "2048x2048"},
    {"type": "text-to-image", "size": "big"},
    {"type": "text-to-image", "n": 5},
    {"type": "text-to-image", "duration_s": 4},
    {"type": "image-to-video", "duration_s": 4, "shots": 2},
    {"type": "image-to-video", "duration_s": 0},
    {"type": "text-to-image", "prompt": "unknown field"},
    {},
])
def test_invalid_requests_are_400_invalid_request(payload):
    with pytest.raises(DomainError) as info:
        quote(**payload)
    assert (info.value.code, info.value.status) == ("invalid_request", 400)


def test_the_price_list_describes_every_job_type():
    listed = {rule["type"]: rule for rule in pricing.price_list(PRICES)}
    assert set(listed) == {"text-to-image", "image-to-image", "image-to-video"}
    assert listed["text-to-image"]["area_pixels"] == 512 * 512
    assert listed["image-to-video"]["unit"] == "second"
    c.Prices().load({"currency": "credits", "job_types": list(listed.values()), "packs": []})
