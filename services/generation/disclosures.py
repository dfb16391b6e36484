"""The disclosure log: which vendor got which of a user's data, per request.

Every request that leaves for a model vendor writes one ``disclosures`` row:
the user, the job (and its attempt), the vendor (the provider's name in the
providers file), the region it processes data in (its ``region``), the
categories of data sent, when, and the outcome. It answers GDPR Art. 15(1)(c)
("the recipients") per request: ``GET /v1/privacy/disclosures`` lists a
user's own, newest first; the export archive includes them; erasure deletes
them; the retention schedule names them (services/generation/privacy.py).

What counts as sent: each try the router makes on a provider (a retry is a
request of its own, so it has its own row). A provider skipped because its
circuit breaker is open was not asked: no row. The built-in ``local``
renderer runs in this process and sends nothing anywhere: no row for it
("nothing left the machine").

Categories, from the :class:`ProviderRequest` actually sent (never more than
the adapters' whitelist): ``prompt`` (the prompt or a storyboard shot's),
``negative_prompt`` (when one was given), ``source_image`` (its bytes), and
``parameters`` (count, size, seed, strength, duration, shots' camera moves:
always). An adapter may drop a field its vendor lacks (Ark has no negative
prompt): the row lists what the request offered the adapter, the upper bound.

Outcomes: ``succeeded``; ``refused`` (the vendor's content-policy refusal,
``content_refused``); ``failed`` with the error code (a timeout, a 5xx, a
429, a 4xx...: the request may have reached the vendor all the same).

The router calls a :class:`Recorder` after each try
(``Router.run(..., on_attempt=...)``); the runner's worker passes a
:class:`Recorder` for the job. Each row is written and committed on a
session of its own at once, so a job that later fails, loses its lease or
crashes still leaves the record of what was sent. A row that cannot be
written is logged, never fails the job (the request already left).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.contracts.generation import DISCLOSURE_CATEGORIES, DISCLOSURE_OUTCOMES
from services.common.db import is_outage
from services.common.ids import isoformat, utcnow
from services.common.pagination import paginate
from services.generation.models import Disclosure
from services.generation.providers.base import CONTENT_REFUSED, ProviderRequest
from services.generation.providers.local import LocalProvider

log = logging.getLogger(__name__)

CATEGORIES = PROMPT, NEGATIVE_PROMPT, SOURCE_IMAGE, PARAMETERS = DISCLOSURE_CATEGORIES
OUTCOMES = SUCCEEDED, FAILED, REFUSED = DISCLOSURE_OUTCOMES


def sends_data(provider) -> bool:
    """Whether a provider sends requests off the machine (all but ``local``)."""
    return not isinstance(provider, LocalProvider)


def categories(request: ProviderRequest) -> list[str]:
    """The categories of data ``request`` carries, in :data:`CATEGORIES` order."""
    found = []
    if request.prompt or any(shot.prompt for shot in request.shots):
        found.append(PROMPT)
    if request.negative_prompt:
        found.append(NEGATIVE_PROMPT)
    if request.source_image:
        found.append(SOURCE_IMAGE)
    found.append(PARAMETERS)
    return found


def outcome(code: str | None) -> tuple[str, str | None]:
    """``(outcome, error code)`` of a try whose error code is ``code`` (None: success)."""
    if code is None:
        return SUCCEEDED, None
    if code == CONTENT_REFUSED:
        return REFUSED, code
    return FAILED, code


class Recorder:
    """The ``on_attempt`` hook of one job's run: a row per try of a provider
    that sends data off the machine (``sends(name)``), in its own session.
    A write that meets a database outage is tried again, with backoff, for up
    to ``retry_seconds`` (the job's ``GENERATION_INFRA_RETRY_SECONDS``): the
    request has left, so its record must not be lost to a restart."""

    def __init__(self, bind, user_id, job_id, attempt: int,
                 region_of: Callable[[str], str | None], sends: Callable[[str], bool],
                 clock: Callable[[], datetime] = utcnow, retry_seconds: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.bind, self.user_id, self.job_id, self.attempt = bind, user_id, job_id, attempt
        self.region_of, self.sends, self.clock = region_of, sends, clock
        self.retry_seconds, self.sleep = retry_seconds, sleep

    def __call__(self, name: str, request: ProviderRequest, code: str | None) -> None:
        if not self.sends(name):
            return
        result, error_code = outcome(code)
        at = self.clock()
        deadline = time.monotonic() + self.retry_seconds
        delay = 1.0
        while True:
            try:
                with Session(self.bind) as session:
                    session.add(Disclosure(
                        user_id=uuid.UUID(str(self.user_id)), job_id=uuid.UUID(str(self.job_id)),
                        attempt=self.attempt, provider=name, region=self.region_of(name),
                        categories=categories(request), outcome=result, error_code=error_code,
                        created_at=at))
                    session.commit()
                return
            except Exception as exc:  # the request already left: the job goes on
                left = deadline - time.monotonic()
                if is_outage(exc) and left > 0:
                    log.warning("disclosure to %s not recorded yet (the database is "
                                "unavailable); retrying", name, extra={"job_id": str(self.job_id)})
                    self.sleep(min(delay, left))
                    delay = min(delay * 2, 10.0)
                    continue
                log.error("could not record a disclosure to %s: %s", name, type(exc).__name__,
                          extra={"job_id": str(self.job_id)})
                return


def view(row: Disclosure) -> dict:
    """A row as ``DisclosureView`` takes it."""
    return {
        "id": str(row.id), "job_id": str(row.job_id), "attempt": row.attempt,
        "provider": row.provider, "region": row.region, "categories": list(row.categories),
        "outcome": row.outcome, "error_code": row.error_code,
        "created_at": row.created_at,
    }


def list_disclosures(db: Session, user_id: uuid.UUID,
                     query: dict) -> tuple[list[Disclosure], str | None]:
    """The user's own rows, newest first, a page at a time."""
    stmt = select(Disclosure).where(Disclosure.user_id == user_id)
    return paginate(db, stmt, Disclosure.created_at, Disclosure.id, query["limit"],
                    query["cursor"])


def of_user(db: Session, user_id: uuid.UUID) -> list[dict]:
    """Every row of the user, oldest first (the export)."""
    rows = db.scalars(select(Disclosure).where(Disclosure.user_id == user_id)
                      .order_by(Disclosure.created_at, Disclosure.id))
    return [{**view(row), "created_at": isoformat(row.created_at)} for row in rows]
