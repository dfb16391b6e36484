"""The disclosure log: categories and outcomes of each request sent to a
vendor, the router's per-try hook, the recorder (on SQLite, migrated), the
list, the export, the erasure and the retention schedule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.db import make_engine
from services.common.migrations import SERVICES_DIR, upgrade
from services.common.pagination import decode_cursor
from services.generation import disclosures
from services.generation import privacy as privacy_data
from services.generation.models import Disclosure
from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    Shot,
    TransientProviderError,
)
from services.generation.providers.local import LocalProvider
from services.generation.settings import GenerationSettings
from tests.unit.generation.test_router import Scripted, router

USER, OTHER = uuid.uuid4(), uuid.uuid4()
JOB = uuid.uuid4()
REQUEST = ProviderRequest("text-to-image", "a kite over the dunes", seed=1)


# ------------------------------------------------------------------ categories and outcomes


def test_categories_follow_what_the_request_carries():
    assert disclosures.categories(REQUEST) == ["prompt", "parameters"]
    full = ProviderRequest("image-to-image", "a kite", negative_prompt="blur",
                           source_image=b"\x89PNG", source_content_type="image/png")
    assert disclosures.categories(full) == ["prompt", "negative_prompt", "source_image",
                                            "parameters"]
    shots_only = ProviderRequest("image-to-video", "", source_image=b"x", duration_s=2,
                                 shots=(Shot("a pan", "pan_left", 2.0),))
    assert disclosures.categories(shots_only) == ["prompt", "source_image", "parameters"]
    no_prompt = ProviderRequest("image-to-video", "", source_image=b"x", duration_s=2)
    assert disclosures.categories(no_prompt) == ["source_image", "parameters"]


@pytest.mark.parametrize("code, expected", [
    (None, ("succeeded", None)),
    (CONTENT_REFUSED, ("refused", CONTENT_REFUSED)),
    ("provider_timeout", ("failed", "provider_timeout")),
    ("provider_rejected", ("failed", "provider_rejected")),
])
def test_outcomes(code, expected):
    assert disclosures.outcome(code) == expected


def test_only_the_local_renderer_sends_nothing():
    assert not disclosures.sends_data(LocalProvider("local"))
    assert disclosures.sends_data(Scripted("vendor"))


# ------------------------------------------------------------------ the router's hook


def hook():
    heard = []
    return heard, lambda name, request, code: heard.append((name, request, code))


def test_the_router_reports_each_try_with_the_request_it_sent():
    heard, on_attempt = hook()
    r, _ = router(Scripted("first", TransientProviderError("provider_server_error"),
                           PermanentProviderError("provider_rejected")),
                  Scripted("second"), attempts=3)
    assert r.run(REQUEST, on_attempt=on_attempt).provider == "second"
    assert [(n, c) for n, _, c in heard] == [("first", "provider_server_error"),
                                             ("first", "provider_rejected"), ("second", None)]
    assert all(request is REQUEST for _, request, _ in heard)


def test_a_refusal_is_reported_and_nothing_else_is_tried():
    heard, on_attempt = hook()
    second = Scripted("second")
    r, _ = router(Scripted("first", PermanentProviderError(CONTENT_REFUSED)), second)
    with pytest.raises(PermanentProviderError):
        r.run(REQUEST, on_attempt=on_attempt)
    assert [(n, c) for n, _, c in heard] == [("first", CONTENT_REFUSED)]
    assert second.calls == 0


def test_a_provider_skipped_by_its_breaker_is_not_reported():
    heard, on_attempt = hook()
    r, _ = router(Scripted("first", *[TransientProviderError("provider_server_error")] * 3),
                  Scripted("second"), attempts=1, failures=1)
    r.run(REQUEST)  # first fails and its breaker opens
    r.run(REQUEST, on_attempt=on_attempt)
    assert [(n, c) for n, _, c in heard] == [("second", None)]


def test_an_unexpected_error_is_reported_as_internal_and_raised():
    heard, on_attempt = hook()
    r, _ = router(Scripted("first", RuntimeError("bug")))
    with pytest.raises(RuntimeError):
        r.run(REQUEST, on_attempt=on_attempt)
    assert [(n, c) for n, _, c in heard] == [("first", "internal_error")]


def test_without_a_hook_the_router_runs_as_before():
    r, _ = router(Scripted("first"))
    assert r.run(REQUEST).provider == "first"


# ------------------------------------------------------------------ the recorder and the log


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'generation.db'}"
    upgrade(SERVICES_DIR / "generation" / "migrations", url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


class Ticks:
    def __init__(self):
        self.now = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def recorder(engine, user=USER, job=JOB, clock=None) -> disclosures.Recorder:
    regions = {"seedream": "cn", "flux": "us"}
    return disclosures.Recorder(engine, user, job, 2, regions.get,
                                lambda name: name != "local", clock or Ticks())


def test_a_row_per_try_with_region_categories_and_outcome(engine):
    record = recorder(engine)
    sent = ProviderRequest("text-to-image", "a kite", negative_prompt="blur")
    record("seedream", sent, "provider_timeout")
    record("flux", sent, None)
    record("local", sent, None)  # nothing left the machine
    with Session(engine) as db:
        rows, cursor = disclosures.list_disclosures(db, USER, {"limit": 20, "cursor": None})
        assert cursor is None
        views = [disclosures.view(row) for row in rows]
    assert [{k: v[k] for k in ("provider", "region", "outcome", "error_code", "attempt",
                                "job_id", "categories")} for v in views] == [
        {"provider": "flux", "region": "us", "outcome": "succeeded", "error_code": None,
         "attempt": 2, "job_id": str(JOB),
         "categories": ["prompt", "negative_prompt", "parameters"]},
        {"provider": "seedream", "region": "cn", "outcome": "failed",
         "error_code": "provider_timeout", "attempt": 2, "job_id": str(JOB),
         "categories": ["prompt", "negative_prompt", "parameters"]},
    ]
    assert views[0]["created_at"] > views[1]["created_at"]  # newest first


def test_a_provider_without_a_region_has_none(engine):
    recorder(engine)("other", REQUEST, CONTENT_REFUSED)
    with Session(engine) as db:
        row = db.scalar(select(Disclosure))
    assert (row.region, row.outcome, row.error_code) == (None, "refused", CONTENT_REFUSED)


def test_a_row_that_cannot_be_written_does_not_fail_the_job(engine, caplog):
    broken = disclosures.Recorder(engine, "not-a-uuid", JOB, 1, lambda n: None, lambda n: True)
    broken("seedream", REQUEST, None)  # logged, not raised
    assert "could not record a disclosure" in caplog.text


def test_the_list_is_the_users_own_a_page_at_a_time(engine):
    clock = Ticks()
    mine, theirs = recorder(engine, clock=clock), recorder(engine, user=OTHER, clock=clock)
    for _ in range(3):
        mine("seedream", REQUEST, None)
    theirs("flux", REQUEST, None)
    with Session(engine) as db:
        first, cursor = disclosures.list_disclosures(db, USER, {"limit": 2, "cursor": None})
        rest, end = disclosures.list_disclosures(db, USER, {"limit": 2, "cursor": cursor})
    assert decode_cursor(cursor) and end is None
    assert len(first) == 2 and len(rest) == 1
    assert {row.user_id for row in first + rest} == {USER}
    times = [row.created_at for row in first + rest]
    assert times == sorted(times, reverse=True)


def test_export_contains_them_and_erasure_deletes_them(engine):
    recorder(engine)("seedream", REQUEST, None)
    recorder(engine, user=OTHER)("flux", REQUEST, None)
    settings = GenerationSettings.from_config({})
    with Session(engine) as db:
        exported = privacy_data.export(db, settings, USER)
        assert [d["provider"] for d in exported["disclosures"]] == ["seedream"]
        assert set(exported["disclosures"][0]) == {
            "id", "job_id", "attempt", "provider", "region", "categories", "outcome",
            "error_code", "created_at"}
        erased = privacy_data.erase(db, settings, USER, datetime.now(UTC))
        db.commit()
        assert erased.tables["disclosures"] == 1
        assert db.scalar(select(func.count()).select_from(Disclosure)
                         .where(Disclosure.user_id == USER)) == 0
        assert db.scalar(select(func.count()).select_from(Disclosure)) == 1  # the other's


def test_the_retention_schedule_names_them():
    items = privacy_data.retention_items(GenerationSettings.from_config({}))
    assert any(item["data"].startswith("disclosure log") and item["kept"].startswith(
        "until the account is erased") for item in items)
