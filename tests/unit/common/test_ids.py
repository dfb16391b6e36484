"""The two ways a service reads an id it is given."""

from __future__ import annotations

import uuid

import pytest

from services.common.errors import DomainError
from services.common.ids import client_id, trusted_id

ID = uuid.UUID("0190a0b0-0000-7000-8000-000000000001")


@pytest.mark.parametrize("read", [trusted_id, client_id])
@pytest.mark.parametrize("value", [ID, str(ID), str(ID).upper(), ID.hex])
def test_well_formed_ids_are_read_as_uuids(read, value):
    assert read(value) == ID


@pytest.mark.parametrize("value", ["nope", "", None, 42, {"id": "x"}])
def test_a_malformed_trusted_id_is_the_callers_bug(value):
    with pytest.raises(DomainError) as info:
        trusted_id(value, "owner_id")
    assert (info.value.code, info.value.status) == ("invalid_request", 400)
    assert info.value.details["fields"] == {"owner_id": ["Not a valid UUID."]}


@pytest.mark.parametrize("value", ["nope", "", None, 42, {"id": "x"}])
def test_a_malformed_client_id_names_nothing(value):
    with pytest.raises(DomainError) as info:
        client_id(value, "job")
    assert (info.value.code, info.value.status) == ("not_found", 404)
    assert "job" in info.value.message
