"""The rules behind two API conventions that live in the generation contract:
``Prefer: wait=N`` (RFC 7240) on submit, and the job webhook's body, which the
OpenAPI document describes (``webhooks``) and jobs.py builds."""

from __future__ import annotations

import json
import uuid

import pytest

from services.common.contracts import generation as c
from services.generation import jobs
from services.generation.models import WebhookDelivery
from tests.unit.generation import test_jobs
from tests.unit.generation.test_jobs import NOW, REQUEST, Events, reserve, submit

settings = test_jobs.settings  # the job tests' settings fixture


@pytest.mark.parametrize("values, seconds", [
    (["wait=10"], 10),
    (["wait=0"], 0),
    (["wait=60"], 60),
    (["wait=61"], c.WAIT_MAX_S),  # more than the maximum: the maximum
    (["wait=99999999999999999999"], c.WAIT_MAX_S),
    (["WAIT=5"], 5),  # names are case-insensitive
    (["wait = 7"], 7),
    (['wait="8"'], 8),  # a quoted-string value
    (["respond-async, wait=9"], 9),
    (["respond-async", "wait=3"], 3),  # over several header lines
    (["wait=4; foo=bar"], 4),  # parameters are ignored
    (['handling=lenient; note="a, b", wait=2'], 2),  # a comma inside quotes
    (["wait=5, wait=20"], 5),  # only the first counts (RFC 7240 section 2)
    (["wait=abc, wait=20"], None),
    ([], None), ([""], None), (["respond-async"], None), (["waiting=5"], None),
    (["wait"], None), (["wait="], None), (["wait=-1"], None), (["wait=1.5"], None),
    (["wait=٣"], None),  # digits, but not ASCII ones
])
def test_the_wait_preference(values, seconds):
    assert c.prefer_wait(values) == seconds


def test_the_webhook_body_is_what_the_document_describes(db, settings):
    """jobs.py's webhook body loads with ``JobWebhook`` (unknown fields refused),
    for each event the document lists."""
    user, events = uuid.uuid4(), Events()
    hooked = {**REQUEST, "webhook_url": "https://hooks.example.com/x"}
    cancelled = submit(db, settings, user, events, request=hooked)
    jobs.cancel(db, settings, user, cancelled.id, NOW, events)
    failed = submit(db, settings, user, events, request=hooked)
    reserve(db, settings, failed, events)
    running = jobs.claim_next(db, settings, NOW)
    assert jobs.fail(db, settings, failed.id, running.lease_token, "provider_unavailable",
                     "every provider failed", None, NOW, events)
    db.commit()
    bodies = [json.loads(d.body) for d in db.query(WebhookDelivery).all()]
    assert {body["type"] for body in bodies} == {"job.cancelled", "job.started", "job.failed"}
    assert {body["type"] for body in bodies} < set(c.WEBHOOK_TYPES)
    for body in bodies:
        c.JobWebhook().load(body)  # raises on a missing, extra or mistyped field
        assert set(body["job"]) == set(c.WebhookJob().fields)
