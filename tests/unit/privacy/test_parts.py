"""How a service's answer travels: a part inline in its event, or stored
through storage past the size limit; an erasure's counts and times."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from datetime import UTC, datetime

import pytest
from marshmallow import ValidationError

from services.common import contracts
from services.common import privacy_parts as parts

REQUEST = uuid.uuid4()
AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_a_small_part_travels_in_its_event_as_plain_json():
    data = {"id": uuid.uuid4(), "at": AT, "nested": [{"when": AT.date()}]}
    payload = parts.export_part(REQUEST, "auth", data, "about", [{"what": "x", "why": "y"}])
    assert payload["object_id"] is None
    assert payload["data"] == {"id": str(data["id"]), "at": "2026-11-22T12:00:00Z",
                               "nested": [{"when": "2026-11-22"}]}
    event = contracts.make_event("auth.export_part_ready", payload)
    assert contracts.load_event("auth.export_part_ready", event)["withheld"] == [
        {"what": "x", "why": "y"}]


def test_a_big_part_is_stored_and_its_event_carries_the_object_id():
    stored = []

    def store(blob: bytes):
        stored.append(blob)
        return "0190aaaa-0000-7000-8000-000000000001"

    data = {"rows": ["x" * 100] * 20}
    payload = parts.export_part(REQUEST, "billing", data, "about", store=store, inline_max=500)
    assert payload["data"] is None and payload["object_id"] == "0190aaaa-0000-7000-8000-000000000001"
    with zipfile.ZipFile(io.BytesIO(stored[0])) as zf:
        assert json.loads(zf.read("part.json")) == data
    contracts.make_event("billing.export_part_ready", payload)  # valid as it is
    # without a store it travels inline all the same
    assert parts.export_part(REQUEST, "billing", data, "about", inline_max=500)["data"] == data


def test_bytes_never_go_into_a_part():
    with pytest.raises(TypeError):
        parts.export_part(REQUEST, "auth", {"secret": b"\x00"}, "about")


def test_an_event_needs_exactly_one_of_data_and_object_id():
    payload = parts.export_part(REQUEST, "auth", {}, "about")
    with pytest.raises(ValidationError):
        contracts.make_event("auth.export_part_ready", {**payload, "object_id": str(uuid.uuid4())})


def test_an_erasure_result_sums_its_tables():
    result = parts.erasure_result(REQUEST, "storage", AT, AT, {"objects": 3, "upload_slots": 1},
                                  objects_deleted=3, bytes_deleted=99)
    assert result["rows_deleted"] == 4 and result["tables"] == {"objects": 3, "upload_slots": 1}
    loaded = contracts.load_event("storage.erasure_completed",
                                  contracts.make_event("storage.erasure_completed", result))
    assert (loaded["objects_deleted"], loaded["bytes_deleted"]) == (3, 99)


class FakeStorage:
    def __init__(self):
        self.calls = []

    def create_output_slot(self, owner_id, payload):
        self.calls.append(("slot", owner_id, payload))
        return {"object_id": "obj-1", "method": "PUT", "url": "http://store/obj-1",
                "headers": {"Content-Type": "application/zip"}}

    def commit_objects(self, owner_id, object_ids):
        self.calls.append(("commit", owner_id, object_ids))
        return {"items": [{"id": object_ids[0]}]}


class FakeHttp:
    def __init__(self, status=200):
        self.status = status
        self.requests = []

    def request(self, method, url, data=None, headers=None, timeout=None):
        self.requests.append((method, url, data, headers))
        http = self

        class Response:
            status_code = http.status

            def raise_for_status(self):
                if http.status >= 400:
                    raise RuntimeError(f"HTTP {http.status}")

        return Response()


def test_storing_through_storage_declares_puts_and_commits():
    storage, http = FakeStorage(), FakeHttp()
    store = parts.store_through_storage(storage, "user-1", REQUEST, http=http)
    assert store(b"zip bytes") == "obj-1"
    (_, owner, slot), (_, _, committed) = storage.calls
    assert owner == "user-1" and committed == ["obj-1"]
    assert slot == {"job_id": str(REQUEST), "content_type": "application/zip", "size": 9,
                    "sha256": hashlib.sha256(b"zip bytes").hexdigest(), "kind": "export"}
    assert http.requests[0][:3] == ("PUT", "http://store/obj-1", b"zip bytes")
    failing = parts.store_through_storage(FakeStorage(), "user-1", REQUEST, http=FakeHttp(503))
    with pytest.raises(RuntimeError):
        failing(b"zip")
