"""Races of an erasure on PostgreSQL, each party with its own session and
connection: the end of the grace period (the timer locking the request to
revoke the account's credentials) against the owner's cancellation, and
several timers (replicas) against each other. Exactly one side wins, and
never both: a cancelled erasure is never revoked, a revoked one never
cancelled."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import sessionmaker

from services.common.contracts import privacy as _privacy  # noqa: F401 (registers the events)
from services.common.db import make_engine
from services.common.errors import DomainError
from services.common.migrations import SERVICES_DIR, upgrade
from services.privacy import requests as subject_requests
from services.privacy.models import PrivacyRequest
from services.privacy.settings import PrivacySettings
from tests.unit.events import Events

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
SETTINGS = PrivacySettings.from_config({"MAIL_SECRETS_KEY": "integration-test-mail-secrets-key",
                                        "PRIVACY": {"PSEUDONYM_KEY": "k",
                                                    "ERASURE_GRACE_HOURS": 1}})
OVER = NOW + timedelta(hours=1)


@pytest.fixture(scope="module")
def factory(make_database):
    url = make_database("privacy_races")
    upgrade(SERVICES_DIR / "privacy" / "migrations", url)
    engine = make_engine(url, pool_size=10)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


def scheduled(factory) -> tuple[uuid.UUID, uuid.UUID, str]:
    user, events = uuid.uuid4(), Events("privacy")
    with factory() as db:
        request = subject_requests.create(db, SETTINGS, user, "erasure", NOW, events)
        db.commit()
    token = SETTINGS.sealer.open(events.of("erasure_scheduled")[0]["sealed_cancel_token"])
    return request.id, user, token


def test_a_cancellation_waits_for_the_revocation_and_is_then_refused(factory):
    request_id, user, _ = scheduled(factory)
    locked, release = threading.Event(), threading.Event()
    outcome = {}

    def timer():
        with factory() as db:
            request = subject_requests.claim_revocation(db, request_id, OVER)
            locked.set()
            release.wait(10)  # auth.revoke_all takes a while
            subject_requests.credentials_revoked(db, request, OVER)
            db.commit()

    def owner():
        with factory() as db:
            started = time.monotonic()
            try:
                subject_requests.cancel(db, user, request_id, OVER, Events("privacy"))
                db.commit()
                outcome["cancel"] = "cancelled"
            except DomainError as exc:
                db.rollback()
                outcome["cancel"] = exc.code
            outcome["waited"] = time.monotonic() - started

    t1 = threading.Thread(target=timer)
    t1.start()
    assert locked.wait(10)
    t2 = threading.Thread(target=owner)
    t2.start()
    time.sleep(0.5)
    release.set()
    t1.join(20)
    t2.join(20)
    assert outcome["cancel"] == "not_cancellable" and outcome["waited"] >= 0.4
    with factory() as db:
        request = db.get(PrivacyRequest, request_id)
        assert request.status == "pending" and request.revoked_at is not None


def test_a_revocation_after_a_cancellation_finds_nothing_to_do(factory):
    request_id, user, token = scheduled(factory)
    with factory() as db:
        subject_requests.cancel_with_token(db, request_id, token, NOW, Events("privacy"))
        db.commit()
    with factory() as db:
        assert request_id not in subject_requests.grace_over(db, OVER)
        assert subject_requests.claim_revocation(db, request_id, OVER) is None


def test_replicas_revoke_each_request_once(factory):
    ids = [scheduled(factory)[0] for _ in range(6)]
    claimed: list[uuid.UUID] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def replica():
        barrier.wait()
        with factory() as db:
            for request_id in subject_requests.grace_over(db, OVER):
                db.rollback()
                request = subject_requests.claim_revocation(db, request_id, OVER)
                if request is None:
                    continue
                time.sleep(0.05)  # the RPC to auth
                subject_requests.credentials_revoked(db, request, OVER)
                db.commit()
                with lock:
                    claimed.append(request_id)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(claimed) == sorted(ids) and len(claimed) == len(set(claimed))
