import pytest

from services.common.errors import DomainError
from services.generation.quotes import QuoteCache


class Billing:
    """billing.quote as the cache sees it: a callable that counts its calls."""

    def __init__(self, fail=False):
        self.asked = []
        self.fail = fail

    def __call__(self, pricing):
        self.asked.append(pricing)
        if self.fail:
            raise DomainError("service_unavailable", "billing is away", status=503)
        return {"price": pricing.get("n", 1) * 10, "currency": "credits"}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_same_pricing_is_asked_once_within_the_ttl():
    billing, clock = Billing(), Clock()
    cache = QuoteCache(60, clock=clock)
    first = cache.quote({"type": "text-to-image", "n": 2, "size": "512x512"}, billing)
    clock.now += 59
    second = cache.quote({"size": "512x512", "n": 2, "type": "text-to-image"}, billing)
    assert first == second == {"price": 20, "currency": "credits"}
    assert len(billing.asked) == 1


def test_a_kept_price_expires():
    billing, clock = Billing(), Clock()
    cache = QuoteCache(60, clock=clock)
    cache.quote({"type": "text-to-image", "n": 1}, billing)
    clock.now += 61
    cache.quote({"type": "text-to-image", "n": 1}, billing)
    assert len(billing.asked) == 2


def test_different_pricing_inputs_are_asked_separately():
    billing = Billing()
    cache = QuoteCache(60, clock=Clock())
    assert cache.quote({"type": "text-to-image", "n": 1}, billing)["price"] == 10
    assert cache.quote({"type": "text-to-image", "n": 3}, billing)["price"] == 30
    assert len(billing.asked) == 2


def test_zero_ttl_asks_every_time():
    billing = Billing()
    cache = QuoteCache(0, clock=Clock())
    for _ in range(3):
        cache.quote({"type": "text-to-image", "n": 1}, billing)
    assert len(billing.asked) == 3


def test_errors_are_not_kept():
    failing, clock = Billing(fail=True), Clock()
    cache = QuoteCache(60, clock=clock)
    with pytest.raises(DomainError):
        cache.quote({"type": "text-to-image", "n": 1}, failing)
    working = Billing()
    assert cache.quote({"type": "text-to-image", "n": 1}, working)["price"] == 10
    assert len(working.asked) == 1


def test_a_caller_changing_its_answer_does_not_change_the_kept_one():
    billing = Billing()
    cache = QuoteCache(60, clock=Clock())
    cache.quote({"type": "text-to-image", "n": 1}, billing)["price"] = 0
    assert cache.quote({"type": "text-to-image", "n": 1}, billing)["price"] == 10
