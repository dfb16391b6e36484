"""What a generation job costs, in credits (``BILLING.PRICES``).

One function, :func:`quote`, prices every job: the ``billing.quote`` RPC
answers with it, the generation service puts its result in
``generation.job_requested`` and billing holds exactly that price.

- Images (``unit: image``): each image costs ``credits_per_area`` for every
  *started* ``area_pixels`` of its size, ``ceil(w*h / area_pixels)``; with the
  default 512x512 area and 1 credit, 512x512 costs 1, 1024x1024 costs 4 and
  1536x1536 costs 9. Never less than ``minimum`` per image. ``n`` images
  cost n times one.
- Video (``unit: second``): ``credits_per_second`` × ``duration_s`` (default
  ``default_duration_s``), or for a storyboard ``credits_per_shot`` ×
  ``shots``; never less than ``minimum`` per video, times ``n``.
- Per model: a job that names a ``model`` (a provider entry) is priced by
  that model's override under its job type (``models:``), which may change
  the amounts above but not the unit or the defaults; a model without an
  override pays the job type's price.
"""

from __future__ import annotations

import math

from services.billing.settings import BillingSettings, PriceRule
from services.common.contracts.generation import parse_size
from services.common.errors import invalid_request


def quote(prices: dict[str, PriceRule], request: dict) -> dict:
    """``{"price", "breakdown"}`` for a loaded ``contracts.billing.Quote``."""
    rule = prices.get(request["type"])
    if rule is None:
        raise invalid_request("unknown job type", fields={"type": ["Unknown job type."]})
    model = request.get("model")
    rule = rule.for_model(model)
    n = request.get("n") or 1
    if rule.unit == "image":
        for name in ("duration_s", "shots"):
            if request.get(name) is not None:
                raise invalid_request(f"{name} applies to video only",
                                      fields={name: ["Not allowed for this job type."]})
        size = request.get("size") or rule.default_size
        width, height = parse_size(size)
        units = math.ceil(width * height / rule.area_pixels)
        per_unit = rule.credits_per_area
        extra = {"size": size}
    else:
        if request.get("duration_s") is not None and request.get("shots") is not None:
            raise invalid_request("give duration_s or shots, not both",
                                  fields={"shots": ["Not allowed with duration_s."]})
        if request.get("shots") is not None:
            if rule.credits_per_shot is None:
                raise invalid_request("this job type is not priced per shot",
                                      fields={"shots": ["Not allowed for this job type."]})
            units, per_unit = request["shots"], rule.credits_per_shot
            extra = {"shots": units}
        else:
            units = request.get("duration_s") or rule.default_duration_s
            per_unit = rule.credits_per_second
            extra = {"duration_s": units}
    per_item = max(rule.minimum, units * per_unit)
    breakdown = {
        "type": rule.type, "n": n, "unit": "shot" if "shots" in extra else rule.unit,
        "units_per_item": units, "credits_per_unit": per_unit, "per_item": per_item,
        "minimum": rule.minimum, **extra,
    }
    if model:
        breakdown["model"] = model
    return {"price": per_item * n, "breakdown": breakdown}


def price_list(prices: dict[str, PriceRule]) -> list[dict]:
    return [prices[t].view() for t in sorted(prices)]


def prices(settings: BillingSettings) -> dict:
    """The published prices (``billing.list_prices``): every job type's rule
    in credits, and the credit packs for sale, the cheapest first."""
    packs = sorted(settings.packs.values(), key=lambda p: (p.price_amount, p.id))
    return {"currency": "credits", "job_types": price_list(settings.prices),
            "packs": [p.view() for p in packs]}
