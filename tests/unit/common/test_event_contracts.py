"""The events' envelope (services/common/contracts/base.py)."""

from __future__ import annotations

import pytest
from marshmallow import fields

from services.common.contracts.base import EventSchema, make_event, register_event


def test_an_event_may_not_redefine_the_envelopes_fields():
    """privacy.policy_published first named its field ``version``, which the
    envelope stamps with the schema's version: every publish failed."""
    class Clashing(EventSchema):
        version = fields.String(required=True)

    with pytest.raises(TypeError, match="envelope"):
        register_event("test.clashing")(Clashing)


def test_policy_published_carries_the_policy_version_beside_the_envelopes():
    import services.common.contracts.privacy  # noqa: F401  (registers privacy's events)

    event = make_event("privacy.policy_published", {"policy_version": "2026-12", "material": True})
    assert (event["version"], event["policy_version"]) == (1, "2026-12")
