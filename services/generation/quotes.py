"""Prices of jobs, asked of billing (``billing.quote``) and kept a short while.

:func:`pricing` says what of a request billing prices it by; billing applies
its price list (docs/billing.md "Prices"). The request's defaults are filled
in before (the contract's, services/common/contracts/generation.py: a video
without ``duration_s`` is priced, and made, at ``DEFAULT_VIDEO_DURATION_S``).

A price depends only on a job's pricing inputs (its type and ``n`` and
``size``, or its shots or duration, and the ``model`` it names): a handful of distinct keys, and prices
change only when billing's configuration does. Keeping each answer
``GENERATION.QUOTE_CACHE_SECONDS`` (60) spares a round trip to billing on
nearly every submit; a price change reaches new jobs within that time. A
job's price is fixed when it is submitted (it is the amount billing holds),
so a cached price is never applied to a job after the user saw another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from services.common.contracts.generation import DEFAULT_N, DEFAULT_SIZE, DEFAULT_VIDEO_DURATION_S

MAX_ENTRIES = 1024


class QuoteCache:
    """Thread-safe: one per process, shared by its workers."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.ttl = float(ttl_seconds)
        self.clock = clock
        self._answers: dict[tuple, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def quote(self, pricing: dict, ask: Callable[[dict], dict]) -> dict:
        """billing's answer for ``pricing``: kept, or ``ask(pricing)`` (the RPC)."""
        if self.ttl <= 0:
            return ask(pricing)
        key = tuple(sorted(pricing.items()))
        now = self.clock()
        with self._lock:
            kept = self._answers.get(key)
        if kept is not None and kept[0] > now:
            return dict(kept[1])
        answer = ask(pricing)  # errors are not kept: the next submit asks again
        with self._lock:
            if len(self._answers) >= MAX_ENTRIES:
                self._answers.clear()
            self._answers[key] = (now + self.ttl, dict(answer))
        return answer


def pricing(data: dict, expansion: dict) -> dict:
    """What billing prices a job by (billing.quote refuses anything else): a
    loaded SubmitJob payload and its expansion (a template's storyboard is
    priced by its shots)."""
    model = {"model": data["model"]} if data.get("model") else {}
    if data["type"] == "image-to-video":
        if expansion.get("shots"):
            return {"type": data["type"], "shots": len(expansion["shots"]), **model}
        return {"type": data["type"], "duration_s": data["duration_s"], **model}
    return {"type": data["type"], "n": data["n"], "size": data["size"], **model}


def default_pricing(job_type: str, model: str) -> dict:
    """What billing prices one job of ``job_type`` with the defaults, run by ``model``."""
    if job_type == "image-to-video":
        return {"type": job_type, "duration_s": DEFAULT_VIDEO_DURATION_S, "model": model}
    return {"type": job_type, "n": DEFAULT_N, "size": DEFAULT_SIZE, "model": model}
