"""The OpenAPI document and the server agree (tests/e2e/test_openapi_fuzz.py fuzzes
the whole API for it; these pin the fixes it needed)."""

from __future__ import annotations

import uuid

import jsonschema_rs
import pytest
from marshmallow import ValidationError

from services.common.contracts.billing import Checkout
from services.common.contracts.generation import SubmitJob
from services.common.contracts.privacy import UpdateConsents
from tests.unit.gateway.conftest import BEARER


@pytest.fixture
def doc(client) -> dict:
    return client.get("/v1/openapi.json").get_json()


def validator(doc: dict, name: str):
    """The component's validator with ECMA-262 patterns (``$`` is the end of the
    input), as schemathesis validates (Python's ``re`` would let "\\n" end a match)."""
    schema = {**doc["components"]["schemas"][name], "components": doc["components"]}
    return jsonschema_rs.Draft4Validator(schema)


def server_accepts(schema_cls, body: dict) -> bool:
    try:
        schema_cls().load(body)
    except ValidationError:
        return False
    return True


SOURCE = str(uuid.uuid4())
SUBMIT_BODIES = [
    {"type": "text-to-image", "prompt": "x"},
    {"type": "text-to-image", "template": "poster"},
    {"type": "text-to-image", "template": "poster", "inputs": {"a": "b"}},
    {"type": "text-to-image"},
    {"type": "text-to-image", "prompt": "x", "template": "poster"},
    {"type": "text-to-image", "prompt": "x", "inputs": {"a": "b"}},
    {"type": "text-to-image", "prompt": "x", "source_image_id": SOURCE},
    {"type": "image-to-image", "prompt": "x"},
    {"type": "image-to-image", "prompt": "x", "source_image_id": SOURCE},
    {"type": "image-to-video", "source_image_id": SOURCE},
    {"type": "image-to-video", "source_image_id": SOURCE, "duration_s": 5},
    {"type": "image-to-video", "source_image_id": SOURCE, "n": 2},
    {"type": "text-to-image", "prompt": "x", "duration_s": 5},
    {"type": "text-to-image", "prompt": "x", "size": "1536x512"},
    {"type": "text-to-image", "prompt": "x", "size": "1537x512"},
    {"type": "text-to-image", "prompt": "x", "size": "448x512"},
    {"type": "text-to-image", "prompt": "x", "size": "1024x1024\n"},
    {"type": "text-to-image", "prompt": "x", "webhook_url": "https://example.com/hook?a=1"},
    {"type": "text-to-image", "prompt": "x", "webhook_url": "http://[::1]:8080/"},
    {"type": "text-to-image", "prompt": "x", "webhook_url": "HTTP://host"},
    {"type": "text-to-image", "prompt": "x", "webhook_url": ""},
    {"type": "text-to-image", "prompt": "x", "webhook_url": "ftp://example.com"},
    {"type": "text-to-image", "prompt": "x", "webhook_url": "http://exa mple.com"},
    {"type": "text-to-image", "prompt": "x", "webhook_url": "http://example.com/\n"},
    {"type": "text-to-image", "prompt": "x", "webhook_url": "https://example.com/h",
     "webhook_events": ["started", "completed"]},
    {"type": "text-to-image", "prompt": "x", "webhook_url": "https://example.com/h",
     "webhook_events": ["exploded"]},
    {"type": "text-to-image", "prompt": "x", "webhook_url": "https://example.com/h",
     "webhook_events": []},
    {"type": "text-to-image", "prompt": "x", "webhook_events": ["started"]},
    {"type": "text-to-image", "prompt": "x", "webhook_url": "https://example.com/h",
     "webhook_events": ["failed"] * 5},
]


@pytest.mark.parametrize("body", SUBMIT_BODIES, ids=range(len(SUBMIT_BODIES)))
def test_submit_job_document_and_server_agree(doc, body):
    assert validator(doc, "SubmitJob").is_valid(body) == server_accepts(SubmitJob, body)


@pytest.mark.parametrize("body", [{}, {"pack_id": "small"}, {"plan_id": "pro"},
                                  {"pack_id": "small", "plan_id": "pro"}])
def test_checkout_needs_exactly_one_id_in_both(doc, body):
    assert validator(doc, "Checkout").is_valid(body) == server_accepts(Checkout, body)
    assert validator(doc, "Checkout").is_valid(body) == (len(body) == 1)


@pytest.mark.parametrize("body", [{}, {"analytics": True}])
def test_consents_need_one_purpose_in_both(doc, body):
    assert validator(doc, "UpdateConsents").is_valid(body) == server_accepts(UpdateConsents, body)
    assert validator(doc, "UpdateConsents").is_valid(body) == bool(body)


def test_a_required_body_cannot_be_left_out(client, doc):
    # PATCH /v1/me's fields are all optional, but its body is required
    assert doc["paths"]["/v1/me"]["patch"]["requestBody"]["required"] is True
    response = client.patch("/v1/me", headers=BEARER)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["fields"] == {
        "_body": ["Missing data for required field."]}
    assert client.patch("/v1/me", headers=BEARER, json={}).status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"display_name": 5}, "display_name"),
    ({"avatar_image_id": 5}, "avatar_image_id"),
    ({"bio": ["x"]}, "bio"),
])
def test_json_types_are_the_documented_ones(client, body, field):
    response = client.patch("/v1/me", headers=BEARER, json=body)
    assert response.status_code == 400
    assert field in response.get_json()["error"]["details"]["fields"]


def test_every_error_answer_is_documented_with_the_error_body(doc):
    error = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            if operation.get("security"):
                assert "401" in responses, (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
            if path.startswith("/v1/"):
                assert {"429", "503"} <= set(responses), (method, path)
            for code, response in responses.items():
                if code == "default" or int(code) >= 400:
                    if "$ref" in response:
                        name = response["$ref"].rsplit("/", 1)[1]
                        response = doc["components"]["responses"][name]
                    schema = response["content"]["application/json"]["schema"]
                    # /readyz answers 503 with its checks; every other error with the error body
                    assert schema == error or (path, code) == ("/readyz", "503"), (method, path, code)


def test_operation_specific_errors_are_documented(doc):
    submit = doc["paths"]["/v1/generations"]["post"]["responses"]
    assert {"400", "401", "403", "404", "409", "422", "429", "503"} <= set(submit)
    assert {"415", "422"} <= set(doc["paths"]["/v1/uploads"]["post"]["responses"])
    assert "403" in doc["paths"]["/v1/billing/checkout"]["post"]["responses"]  # unverified


@pytest.mark.parametrize("body", [
    {"email": "ada@example.com", "password": "correct horse battery", "display_name": "a\x00b"},
    {"email": "ada@example.com", "password": "correct horse battery\x00"},
])
def test_nul_in_a_string_is_400_and_never_reaches_a_service(client, auth, body):
    # PostgreSQL refuses U+0000 in text: it was a 500 from auth.register
    response = client.post("/v1/auth/register", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert auth.called("register") == []


def test_an_escaped_backslash_u0000_is_just_text(client, auth):
    body = {"email": "ada@example.com", "password": "correct horse battery",
            "display_name": "\\u0000"}
    assert client.post("/v1/auth/register", json=body).status_code == 201


@pytest.mark.parametrize("n, status", [(2.0, 202), (1.5, 400), (2, 202)])
def test_an_integer_is_what_json_schema_2020_12_says(client, pool, n, status):
    """OpenAPI 3.1 validates with JSON Schema 2020-12, where 2.0 is an integer:
    the server takes it (as 2), and a number with a fraction is still refused."""
    from tests.unit.gateway.test_generation_api import FakeGeneration

    pool.services["generation"] = generation = FakeGeneration()
    response = client.post("/v1/generations", headers=BEARER,
                           json={"type": "text-to-image", "prompt": "x", "n": n})
    assert response.status_code == status, response.get_json()
    if status == 400:
        assert response.get_json()["error"]["details"]["fields"] == {
            "n": ["Must be a JSON integer."]}
    else:
        [((_, payload), _)] = generation.called("submit")
        assert payload["n"] == 2 and isinstance(payload["n"], int)
