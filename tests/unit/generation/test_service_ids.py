"""How the generation service reads the ids it is given: the user id comes
from a trusted caller (a malformed one is its bug: 400), a job id from a
client (a malformed one names nothing: 404, as a job of someone else)."""

from __future__ import annotations

import uuid

import pytest
from nameko.testing.services import worker_factory

from services.common.errors import DomainError
from services.generation.service import GenerationService
from services.generation.settings import GenerationSettings


@pytest.fixture
def service(db):
    return worker_factory(GenerationService, db=db, settings=GenerationSettings())


@pytest.mark.parametrize("call", [
    lambda s: s.get_job("not-a-uuid", str(uuid.uuid4())),
    lambda s: s.list_jobs("not-a-uuid"),
    lambda s: s.list_disclosures("not-a-uuid"),
    lambda s: s.cancel_job("not-a-uuid", str(uuid.uuid4())),
    lambda s: s.submit("not-a-uuid", {"type": "text-to-image", "prompt": "a red fox"}),
])
def test_a_malformed_user_id_is_the_callers_error_not_a_missing_user(service, call):
    with pytest.raises(DomainError) as info:
        call(service)
    assert (info.value.code, info.value.status) == ("invalid_request", 400)
    assert "user_id" in info.value.details["fields"]


@pytest.mark.parametrize("job_id", ["not-a-uuid", str(uuid.uuid4())])
def test_a_malformed_job_id_is_not_found_like_a_missing_one(service, job_id):
    with pytest.raises(DomainError) as info:
        service.get_job(str(uuid.uuid4()), job_id)
    assert (info.value.code, info.value.status) == ("not_found", 404)
