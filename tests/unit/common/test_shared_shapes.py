"""What the contracts and the models share: list pages made by page_of, the
event bases, one declarative base per service and the UUID primary key."""

from __future__ import annotations

import uuid

import pytest
from marshmallow import ValidationError
from sqlalchemy import String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from services.common import contracts
from services.common.contracts import auth, billing, generation, page_of, privacy, storage
from services.common.models import IdMixin, service_base

PAGES = [
    (auth.ApiKeyPage, auth.ApiKey), (auth.SessionPage, auth.Session),
    (billing.LedgerPage, billing.LedgerEntry), (billing.OrderPage, billing.Order),
    (generation.JobPage, generation.JobView), (privacy.RequestPage, privacy.RequestView),
    (storage.ImagePage, storage.ImageObject),
]


@pytest.mark.parametrize("page, item", PAGES, ids=[p.__name__ for p, _ in PAGES])
def test_every_page_is_its_items_and_the_next_cursor(page, item):
    schema = page()
    assert list(schema.fields) == ["items", "next_cursor"]
    assert schema.fields["items"].inner.nested is item
    assert page.__module__ == item.__module__
    assert page.__name__.endswith("Page")
    with pytest.raises(ValidationError):
        schema.load({"items": []})  # next_cursor is required (null on the last page)
    assert schema.load({"items": [], "next_cursor": None}) == {"items": [], "next_cursor": None}


def test_page_of_makes_a_new_schema_each_time():
    first, second = page_of(auth.ApiKey, "A"), page_of(auth.ApiKey, "B")
    assert first is not second and first.__name__ == "A"
    assert first().fields["items"] is not second().fields["items"]


@pytest.mark.parametrize("name, base, first_fields", [
    ("auth.password_changed", auth.AccountEvent, ["user_id", "email"]),
    ("billing.credits_captured", billing.JobCreditsEvent, ["job_id", "user_id", "attempt"]),
    ("generation.job_cancelled", generation.JobEvent, ["job_id", "user_id", "attempt"]),
    ("privacy.erasure_cancelled", privacy.RequestEvent, ["request_id", "user_id"]),
])
def test_an_event_carries_its_base_fields_first(name, base, first_fields):
    schema = contracts.EVENTS[name]
    assert issubclass(schema, base)
    assert base not in contracts.EVENTS.values()  # a base is no event of its own
    envelope = ["event_id", "occurred_at", "version"]
    assert list(schema().fields)[:len(envelope) + len(first_fields)] == envelope + first_fields


def test_the_attempt_rule_stays_each_contracts_own():
    """Billing's answers name the attempt; generation's events default it to 1."""
    assert billing.JobCreditsEvent().fields["attempt"].required
    assert generation.JobEvent().fields["attempt"].load_default == 1


def test_each_service_base_has_its_own_metadata_and_the_naming_convention():
    first, second = service_base(), service_base()
    assert first.metadata is not second.metadata
    assert first.metadata.naming_convention["pk"] == "pk_%(table_name)s"

    class Thing(IdMixin, first):
        __tablename__ = "things"

    table = first.metadata.tables["things"]
    assert "things" not in second.metadata.tables
    assert list(table.columns.keys()) == ["id"]
    assert table.c.id.primary_key and isinstance(table.c.id.type, Uuid)
    assert isinstance(table.c.id.default.arg(None), uuid.UUID)


def test_the_id_is_the_first_column_before_the_class_own():
    base = service_base()

    class Other(IdMixin, base):
        __tablename__ = "others"
        name: Mapped[str] = mapped_column(String(10))

    assert list(base.metadata.tables["others"].columns.keys()) == ["id", "name"]
