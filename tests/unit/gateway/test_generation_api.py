"""Generation over HTTP: every /v1/templates and /v1/generations endpoint, the
event stream's framing and ending, against a fake generation RPC surface (the
lead's integration and end-to-end tests run them against the real service)."""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager

import pytest
from openapi_spec_validator import validate

from gateway.api import generation as generation_api
from gateway.rpc import ServiceUnavailable
from services.common.contracts import load_rpc
from services.common.contracts.generation import SubmitJob
from services.common.errors import DomainError, admin_required, rate_limited
from tests.unit.gateway.conftest import (
    ADMIN_ID,
    APIKEY,
    BEARER,
    NOW,
    SESSION_ID,
    UNVERIFIED_ID,
    UNVERIFIED_TOKEN,
    USER_ID,
    FakeAuth,
    FakeRpcService,
    principal,
)

OTHER = {"Authorization": f"Bearer {UNVERIFIED_TOKEN}"}  # another user, email unverified
OTHER_USER = "01900000-0000-7000-8000-0000000000e1"
THIRD_USER = "01900000-0000-7000-8000-0000000000e2"
JOB_FIELDS = {"id", "type", "status", "attempt", "progress", "stage", "queue_position", "price",
              "outputs", "error", "prompt", "negative_prompt", "prompt_redacted", "params",
              "shots", "webhook_url", "webhook_events", "provider", "model", "created_at",
              "started_at", "finished_at"}
TEXT = {"type": "text-to-image", "prompt": "a lighthouse at dawn"}
PRICE = 4


def error_of(response) -> dict:
    return response.get_json()["error"]


def job_view(job_id: str, status: str = "queued", progress: float = 0.0,
             stage: str = "awaiting_credits", queue_position: int | None = 3, **extra) -> dict:
    """A job as the service answers it, with an internal field the gateway must drop."""
    return {
        "id": job_id, "type": "text-to-image", "status": status, "attempt": 1,
        "progress": progress, "stage": stage, "queue_position": queue_position, "price": PRICE,
        "outputs": [], "error": None, "prompt": "a lighthouse at dawn", "negative_prompt": None,
        "prompt_redacted": False, "params": {"n": 1, "size": "1024x1024"}, "shots": None,
        "webhook_url": None, "webhook_events": None, "provider": None, "model": None,
        "created_at": NOW, "started_at": None,
        "finished_at": None, "lease_token": "internal", **extra,
    }


TEMPLATES = [{
    "id": "product-showcase", "name": "Product showcase", "job_type": "image-to-video",
    "description": "A short product video.", "storyboard": True, "file": "/internal/path.yaml",
    "inputs": [
        {"name": "product_name", "type": "string", "required": True, "max_length": 80},
        {"name": "style", "type": "enum", "required": False, "enum": ["studio", "bold"],
         "default": "studio"},
        {"name": "shot_count", "type": "integer", "required": False, "min": 1, "max": 8,
         "default": 4},
    ],
}]


MODELS = [{
    "name": "seedream", "job_types": ["text-to-image"], "region": "cn", "internal": "x",
    "prices": [{"job_type": "text-to-image", "price": 8,
                "breakdown": {"unit": "image", "credits_per_unit": 2, "model": "seedream"}}],
}, {"name": "studio", "job_types": ["text-to-image", "image-to-image"], "region": None,
    "prices": [{"job_type": "text-to-image", "price": 4, "breakdown": {}},
               {"job_type": "image-to-image", "price": 4, "breakdown": {}}]}]


class FakeGeneration(FakeRpcService):
    """The generation service's RPC surface the gateway uses, in memory.

    Jobs belong to their owner (anyone else: 404, as from the real service).
    ``script[job_id]`` is a list of states ``get_job`` answers one after the
    other (the last one repeats): what the event stream sees as the job runs.
    """

    def __init__(self):
        super().__init__()
        self.jobs: dict[str, dict] = {}  # id -> view, plus owner
        self.keys: dict[tuple[str, str], tuple[dict, str]] = {}
        self.script: dict[str, list] = {}
        self.disclosures: list[dict] = []  # views, plus owner (newest first)

    def add(self, owner_id: str, **state) -> str:
        job_id = str(uuid.uuid4())
        self.jobs[job_id] = {**job_view(job_id, **state), "owner": owner_id}
        return job_id

    def _find(self, user_id: str, job_id: str) -> dict:
        job = self.jobs.get(job_id)
        if job is None or job["owner"] != user_id:
            raise DomainError("not_found", "job not found", 404)
        return job

    @staticmethod
    def _view(job: dict) -> dict:
        return {k: v for k, v in job.items() if k != "owner"}

    # -- the surface (rpc_ prefix: see FakeRpcService)

    def rpc_ping(self):
        return {"service": "generation", "ok": True}

    def rpc_list_templates(self):
        return {"items": TEMPLATES}

    def rpc_list_models(self):
        return {"items": MODELS}

    def rpc_submit(self, user_id, payload, idempotency_key=None, dry_run=False):
        if payload.get("template") not in (None, "product-showcase"):
            raise DomainError("not_found", "template not found", 404)
        if "forbidden" in (payload.get("prompt") or ""):
            raise DomainError("content_policy_violation", "the prompt breaks the content policy",
                              422, {"category": "violence"})
        if payload.get("model") not in (None, "seedream", "studio"):
            raise DomainError("unknown_model", "there is no such model", 400,
                              {"model": payload["model"]})
        if dry_run:
            return {"price": PRICE * payload["n"], "breakdown": {"unit": "image", "n": payload["n"]},
                    "internal": True}
        if idempotency_key is not None and (user_id, idempotency_key) in self.keys:
            first, job_id = self.keys[(user_id, idempotency_key)]
            if first != payload:
                raise DomainError("idempotency_key_reused",
                                  "this Idempotency-Key was used with another request", 409)
            return self._view(self.jobs[job_id])
        job_id = self.add(user_id)
        if idempotency_key is not None:
            self.keys[(user_id, idempotency_key)] = (payload, job_id)
        return self._view(self.jobs[job_id])

    def rpc_get_job(self, user_id, job_id):
        job = self._find(user_id, job_id)
        script = self.script.get(job_id)
        if script:
            step = script.pop(0) if len(script) > 1 else script[0]
            if isinstance(step, Exception):
                raise step
            job.update(step)
        return self._view(job)

    def rpc_list_jobs(self, user_id, query=None):
        query = query or {}
        items = [self._view(j) for j in reversed(self.jobs.values())
                 if j["owner"] == user_id and query.get("status") in (None, j["status"])]
        start = int(query.get("cursor") or 0)
        limit = query.get("limit", 20)
        more = start + limit < len(items)
        return {"items": items[start:start + limit], "next_cursor": str(start + limit) if more else None}

    def rpc_list_webhook_deliveries(self, user_id, job_id, query=None):
        job = self._find(user_id, job_id)
        return {"items": [{**delivery, "user_id": "internal"}
                          for delivery in job.get("deliveries", [])], "next_cursor": None}

    def rpc_list_disclosures(self, user_id, query=None):
        items = [d for d in self.disclosures if d["owner"] == user_id]
        return {"items": [{k: v for k, v in d.items() if k != "owner"} for d in items],
                "next_cursor": None, "internal": True}

    def rpc_cancel_job(self, user_id, job_id):
        job = self._find(user_id, job_id)
        if job["status"] not in ("queued", "reserved"):
            raise DomainError("not_cancellable", f"the job is {job['status']}", 409,
                              {"status": job["status"]})
        job.update(status="cancelled", stage="cancelled", queue_position=None)
        return self._view(job)

    # the operators' (tests/unit/gateway/test_admin_api.py): any account's jobs

    def _operated(self, actor: str, job_id: str) -> dict:
        if actor != ADMIN_ID:
            raise admin_required()
        if job_id not in self.jobs:
            raise DomainError("not_found", "job not found", 404)
        return self.jobs[job_id]

    def rpc_admin_find_jobs(self, actor, query=None):
        self._operated(actor, next(iter(self.jobs), ""))
        return {"items": [{**self._view(j), "user_id": j["owner"]} for j in self.jobs.values()
                          if j["status"] == (query or {}).get("status", j["status"])]}

    def rpc_admin_replay_job(self, actor, job_id):
        job = self._operated(actor, job_id)
        if job["status"] != "failed":
            raise DomainError("not_replayable", "only a failed job is replayed", 409)
        job.update(status="queued", attempt=job["attempt"] + 1, error=None)
        return {**self._view(job), "user_id": job["owner"]}

    def rpc_admin_cancel_job(self, actor, job_id):
        job = self._operated(actor, job_id)
        job.update(status="cancelled")
        return {**self._view(job), "user_id": job["owner"]}


@pytest.fixture
def generation(pool) -> FakeGeneration:
    fake = FakeGeneration()
    pool.services["generation"] = fake
    return fake


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(generation_api, "monotonic", fake.monotonic)
    monkeypatch.setattr(generation_api, "sleep", fake.sleep)
    return fake


# ------------------------------------------------------------ templates


def test_templates_are_public_with_their_documented_fields(client, generation, auth):
    response = client.get("/v1/templates")
    assert response.status_code == 200
    [template] = response.get_json()["items"]
    assert set(template) == {"id", "name", "job_type", "description", "storyboard", "inputs"}
    assert template["inputs"][0] == {"name": "product_name", "type": "string", "required": True,
                                     "max_length": 80}
    assert template["inputs"][2]["min"] == 1 and isinstance(template["inputs"][2]["min"], int)
    assert template["inputs"][1]["enum"] == ["studio", "bold"]
    assert auth.calls == []  # no credential needed


def test_models_are_public_with_job_types_prices_and_region(client, generation, auth):
    response = client.get("/v1/models")
    assert response.status_code == 200
    seedream, studio = response.get_json()["items"]
    assert seedream == {k: v for k, v in MODELS[0].items() if k != "internal"}
    assert studio["region"] is None and [p["price"] for p in studio["prices"]] == [4, 4]
    assert auth.calls == []  # no credential needed, as /v1/templates


def test_models_unavailable_is_503(client, generation):
    generation.fail_with["list_models"] = ServiceUnavailable()
    assert client.get("/v1/models").status_code == 503


# ------------------------------------------------------------ submit


def test_submit_answers_202_with_the_job_and_its_location(client, generation):
    response = client.post("/v1/generations", headers=BEARER, json=TEXT)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert set(body) == JOB_FIELDS  # the internal lease token does not leak
    assert body["status"] == "queued" and body["price"] == PRICE
    assert response.headers["Location"] == f"/v1/generations/{body['id']}"
    [((user_id, payload), kwargs)] = generation.called("submit")
    assert user_id == USER_ID
    assert kwargs == {"idempotency_key": None, "dry_run": False}
    assert payload["prompt"] == TEXT["prompt"] and payload["n"] == 1
    assert generation.jobs[body["id"]]["owner"] == USER_ID


def test_submit_sends_json_types_to_the_service(client, generation):
    source = str(uuid.uuid4())
    body = {"type": "image-to-video", "template": "product-showcase", "source_image_id": source,
            "inputs": {"product_name": "Lamp", "shot_count": 3}, "duration_s": 8,
            "webhook_url": "https://hooks.example.com/darkroom"}
    response = client.post("/v1/generations", headers=APIKEY, json=body)
    assert response.status_code == 202, response.get_json()
    [((_, payload), _)] = generation.called("submit")
    assert payload["source_image_id"] == source  # a string, not a UUID object
    assert payload["inputs"] == {"product_name": "Lamp", "shot_count": 3}
    assert payload["webhook_url"] == "https://hooks.example.com/darkroom"
    json.dumps(payload)  # what the RPC serialiser will do
    # the service loads it through the same contract into what the client meant
    assert load_rpc(SubmitJob, json.loads(json.dumps(payload))) == SubmitJob().load(body)


def test_submit_passes_the_chosen_webhook_events(client, generation):
    body = {**TEXT, "webhook_url": "https://hooks.example.com/d",
            "webhook_events": ["started", "completed"]}
    assert client.post("/v1/generations", headers=BEARER, json=body).status_code == 202
    [((_, payload), _)] = generation.called("submit")
    assert payload["webhook_events"] == ["started", "completed"]


def test_an_unknown_webhook_event_is_400_naming_the_field(client, generation):
    body = {**TEXT, "webhook_url": "https://hooks.example.com/d",
            "webhook_events": ["started", "exploded"]}
    response = client.post("/v1/generations", headers=BEARER, json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request" and "webhook_events" in error["details"]["fields"]
    assert generation.calls == []


def test_webhook_deliveries_of_the_callers_job_only(client, generation):
    delivery = {"id": str(uuid.uuid4()), "event": "completed", "status": "delivered",
                "attempts": 2, "response_status": 204, "last_error": None,
                "url": "https://hooks.example.com/d", "job_attempt": 1, "created_at": NOW,
                "last_attempt_at": NOW, "next_attempt_at": None, "delivered_at": NOW}
    mine = generation.add(USER_ID, deliveries=[{**delivery, "job_id": None}])
    generation.jobs[mine]["deliveries"][0]["job_id"] = mine
    theirs = generation.add(UNVERIFIED_ID)
    response = client.get(f"/v1/generations/{mine}/webhook-deliveries?limit=5", headers=BEARER)
    assert response.status_code == 200
    [item] = response.get_json()["items"]
    assert item == {**delivery, "job_id": mine}  # user_id, internal, is dropped
    assert generation.called("list_webhook_deliveries")[0][0] == (USER_ID, mine, {"limit": 5})
    response = client.get(f"/v1/generations/{theirs}/webhook-deliveries", headers=BEARER)
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert client.get(f"/v1/generations/{mine}/webhook-deliveries").status_code == 401


def test_submit_needs_a_credential_and_a_verified_email(client, generation):
    assert client.post("/v1/generations", json=TEXT).status_code == 401
    response = client.post("/v1/generations", headers=OTHER, json=TEXT)
    assert response.status_code == 403
    assert error_of(response)["code"] == "email_unverified"
    assert generation.calls == []


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x"}, "type"),
    ({"type": "text-to-video", "prompt": "x"}, "type"),
    ({**TEXT, "n": 5}, "n"),
    ({**TEXT, "n": 0}, "n"),
    ({**TEXT, "size": "100x100"}, "size"),
    ({**TEXT, "seed": -1}, "seed"),
    ({"type": "text-to-image"}, "prompt"),
    ({**TEXT, "template": "poster"}, "template"),
    ({**TEXT, "inputs": {"a": 1}}, "inputs"),
    ({"type": "image-to-image", "prompt": "x"}, "source_image_id"),
    ({**TEXT, "source_image_id": "not-a-uuid"}, "source_image_id"),
    ({**TEXT, "duration_s": 5}, "duration_s"),
    ({**TEXT, "webhook_url": "ftp://example.com/x"}, "webhook_url"),
    ({**TEXT, "webhook_url": ""}, "webhook_url"),
    ({**TEXT, "webhook_url": "https://example.com/hook\n"}, "webhook_url"),
    ({**TEXT, "webhook_url": "https://example.com/h", "webhook_events": ["finished"]},
     "webhook_events"),
    ({**TEXT, "webhook_url": "https://example.com/h", "webhook_events": []}, "webhook_events"),
    ({**TEXT, "webhook_events": ["started"]}, "webhook_events"),  # no webhook_url
    ({**TEXT, "size": "1024x1024\n"}, "size"),
    ({**TEXT, "size": "\u0661\u0660\u0662\u0664x1024"}, "size"),  # Arabic-Indic digits
    # JSON types as the document says them (marshmallow alone would coerce these)
    ({**TEXT, "n": "2"}, "n"),
    ({**TEXT, "n": True}, "n"),
    ({**TEXT, "seed": 1.5}, "seed"),
    ({"type": "image-to-image", "prompt": "x", "source_image_id": str(uuid.uuid4()),
      "strength": "0.5"}, "strength"),
    ({**TEXT, "user_id": UNVERIFIED_ID}, "user_id"),
])
def test_bad_bodies_are_400_with_the_field_and_never_reach_the_service(client, generation, body,
                                                                       field):
    response = client.post("/v1/generations", headers=BEARER, json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert field in error["details"]["fields"]
    assert generation.calls == []


def test_a_body_that_is_not_json_is_415_or_400(client, generation):
    response = client.post("/v1/generations", headers=BEARER, data="type=text-to-image",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    response = client.post("/v1/generations", headers=BEARER, data="{not json",
                           content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"
    assert generation.calls == []


def test_idempotency_key_is_passed_and_a_repeat_returns_the_first_job(client, generation):
    headers = {**BEARER, "Idempotency-Key": " job-7 "}
    first = client.post("/v1/generations", headers=headers, json=TEXT)
    again = client.post("/v1/generations", headers=headers, json=TEXT)
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"]
    assert [k for _, k in generation.called("submit")] == [
        {"idempotency_key": "job-7", "dry_run": False}] * 2
    other = client.post("/v1/generations", headers=headers, json={**TEXT, "n": 2})
    assert other.status_code == 409
    assert error_of(other)["code"] == "idempotency_key_reused"
    assert len(generation.jobs) == 1


@pytest.mark.parametrize("key", ["", "   ", "k" * 201, "tab\there"])
def test_an_unusable_idempotency_key_is_400(client, generation, key):
    response = client.post("/v1/generations", headers={**BEARER, "Idempotency-Key": key},
                           json=TEXT)
    assert response.status_code == 400
    assert "Idempotency-Key" in error_of(response)["details"]["fields"]
    assert generation.calls == []


def test_dry_run_quotes_the_price_and_creates_nothing(client, generation):
    response = client.post("/v1/generations?dry_run=true", headers=BEARER, json={**TEXT, "n": 3})
    assert response.status_code == 200
    assert response.get_json() == {"price": 3 * PRICE, "breakdown": {"unit": "image", "n": 3}}
    assert "Location" not in response.headers
    assert generation.called("submit")[0][1] == {"idempotency_key": None, "dry_run": True}
    assert generation.jobs == {}


def test_submit_passes_the_model_and_an_unknown_one_is_400(client, generation):
    response = client.post("/v1/generations", headers=BEARER, json={**TEXT, "model": "seedream"})
    assert response.status_code == 202
    assert generation.called("submit")[0][0][1]["model"] == "seedream"
    response = client.post("/v1/generations?dry_run=true", headers=BEARER,
                           json={**TEXT, "model": "nope"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "unknown_model"
    assert error_of(response)["details"] == {"model": "nope"}
    response = client.post("/v1/generations", headers=BEARER, json={**TEXT, "model": ""})
    assert response.status_code == 400 and "model" in error_of(response)["details"]["fields"]


def test_dry_run_must_be_a_boolean(client, generation):
    response = client.post("/v1/generations?dry_run=perhaps", headers=BEARER, json=TEXT)
    assert response.status_code == 400
    assert "dry_run" in error_of(response)["details"]["fields"]
    assert generation.calls == []


@pytest.mark.parametrize("error, status", [
    (DomainError("not_found", "source image not found", 404), 404),
    (DomainError("processing_restricted", "processing of this account is restricted", 403), 403),
    (DomainError("content_policy_violation", "no", 422, {"category": "minors"}), 422),
    (ServiceUnavailable(), 503),
])
def test_service_refusals_pass_through(client, generation, error, status):
    generation.fail_with["submit"] = error
    response = client.post("/v1/generations", headers=BEARER, json=TEXT)
    assert response.status_code == status
    assert error_of(response) == error.to_dict()


def test_the_queue_cap_is_429_with_retry_after(client, generation):
    generation.fail_with["submit"] = rate_limited("at most 10 jobs at once", 30, limit=10)
    response = client.post("/v1/generations", headers=BEARER, json=TEXT)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"
    assert error_of(response)["details"] == {"retry_after": 30, "limit": 10}


def test_every_429_carries_retry_after_even_without_details(client, generation):
    generation.fail_with["submit"] = DomainError("rate_limited", "slow down", 429)
    response = client.post("/v1/generations", headers=BEARER, json=TEXT)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


def test_templates_unknown_and_policy_refusals_from_the_service(client, generation):
    response = client.post("/v1/generations", headers=BEARER, json={
        "type": "text-to-image", "template": "nope"})
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = client.post("/v1/generations", headers=BEARER,
                           json={**TEXT, "prompt": "something forbidden"})
    assert response.status_code == 422
    assert error_of(response)["details"] == {"category": "violence"}
    assert generation.jobs == {}


# ------------------------------------------------------------ reading and cancelling


def test_list_is_the_callers_jobs_newest_first_in_pages(client, generation):
    ids = [generation.add(USER_ID) for _ in range(3)]
    generation.add(UNVERIFIED_ID)
    first = client.get("/v1/generations?limit=2", headers=BEARER)
    assert first.status_code == 200
    page = first.get_json()
    assert [j["id"] for j in page["items"]] == [ids[2], ids[1]]
    assert all(set(j) == JOB_FIELDS for j in page["items"])
    rest = client.get(f"/v1/generations?limit=2&cursor={page['next_cursor']}", headers=BEARER)
    assert [j["id"] for j in rest.get_json()["items"]] == [ids[0]]
    assert rest.get_json()["next_cursor"] is None
    assert {a[0] for a, _ in generation.called("list_jobs")} == {USER_ID}


def test_list_filters_by_status(client, generation):
    generation.add(USER_ID)
    done = generation.add(USER_ID, status="succeeded", stage="done", queue_position=None)
    response = client.get("/v1/generations?status=succeeded", headers=BEARER)
    assert [j["id"] for j in response.get_json()["items"]] == [done]
    assert generation.called("list_jobs")[0][0][1] == {"status": "succeeded", "limit": 20}


@pytest.mark.parametrize("query, field", [("status=done", "status"), ("limit=0", "limit"),
                                          ("limit=101", "limit"), ("cursor=", "cursor")])
def test_bad_list_queries_are_400(client, generation, query, field):
    response = client.get(f"/v1/generations?{query}", headers=BEARER)
    assert response.status_code == 400
    assert field in error_of(response)["details"]["fields"]
    assert generation.calls == []


def test_get_one_job_and_another_users_is_404(client, generation):
    mine = generation.add(USER_ID)
    theirs = generation.add(UNVERIFIED_ID)
    response = client.get(f"/v1/generations/{mine}", headers=BEARER)
    assert response.status_code == 200
    assert response.get_json()["id"] == mine and set(response.get_json()) == JOB_FIELDS
    response = client.get(f"/v1/generations/{theirs}", headers=BEARER)
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert [a for a, _ in generation.called("get_job")] == [(USER_ID, mine), (USER_ID, theirs)]


def test_a_job_id_that_is_not_a_uuid_is_404_without_asking(client, generation):
    for method in (client.get, client.delete):
        response = method("/v1/generations/not-a-uuid", headers=BEARER)
        assert response.status_code == 404
    assert client.get("/v1/generations/not-a-uuid/events", headers=BEARER).status_code == 404
    assert generation.calls == []


def test_jobs_need_a_credential(client, generation):
    job = generation.add(USER_ID)
    for method, path in (("get", "/v1/generations"), ("get", f"/v1/generations/{job}"),
                         ("delete", f"/v1/generations/{job}"),
                         ("get", f"/v1/generations/{job}/events")):
        response = getattr(client, method)(path)
        assert response.status_code == 401, path
    assert generation.calls == []


def test_cancel_answers_202_with_the_cancelled_job(client, generation):
    job = generation.add(USER_ID)
    response = client.delete(f"/v1/generations/{job}", headers=BEARER)
    assert response.status_code == 202
    assert response.get_json()["status"] == "cancelled"
    assert generation.called("cancel_job") == [((USER_ID, job), {})]


def test_cancel_a_running_job_is_409_and_another_users_404(client, generation):
    running = generation.add(USER_ID, status="running", stage="rendering", progress=0.4)
    response = client.delete(f"/v1/generations/{running}", headers=BEARER)
    assert response.status_code == 409
    assert error_of(response)["code"] == "not_cancellable"
    theirs = generation.add(UNVERIFIED_ID)
    assert client.delete(f"/v1/generations/{theirs}", headers=BEARER).status_code == 404
    assert generation.jobs[theirs]["status"] == "queued"


# ------------------------------------------------------------ the event stream


def parse_sse(text: str) -> list[tuple[str, object]]:
    """``[("retry", "2000"), ("job", {...}), ("comment", "keepalive"), ...]``;
    every block must end with a blank line."""
    assert text.endswith("\n\n"), text[-50:]
    out: list[tuple[str, object]] = []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        if lines[0].startswith(":"):
            out.append(("comment", lines[0][1:].strip()))
        elif lines[0].startswith("retry:"):
            out.append(("retry", lines[0].split(":", 1)[1].strip()))
        else:
            fields = dict(line.split(": ", 1) for line in lines)
            out.append((fields["event"], {"id": fields.get("id"),
                                          "data": json.loads(fields["data"])}))
    return out


def events_of(response) -> list[tuple[str, object]]:
    return parse_sse(response.get_data(as_text=True))


def jobs_in(events) -> list[dict]:
    return [e["data"] for kind, e in events if kind == "job"]


def state(status, progress=0.0, stage=None, queue_position=None, **extra) -> dict:
    return {"status": status, "progress": progress, "stage": stage or status,
            "queue_position": queue_position, **extra}


def test_stream_sends_each_change_once_and_ends_after_the_final_state(client, generation, clock):
    job = generation.add(USER_ID)
    generation.script[job] = [
        state("queued", queue_position=3),   # the state before streaming
        state("queued", queue_position=3),   # unchanged: nothing sent
        state("reserved", queue_position=1),
        state("running", 0.2, "rendering"),
        state("running", 0.2, "rendering"),  # unchanged
        state("running", 0.7, "uploading"),
        state("succeeded", 1.0, "done", outputs=[str(uuid.uuid4())]),
        state("running", 0.1, "never-seen"),  # after the end: never asked for
    ]
    response = client.get(f"/v1/generations/{job}/events", headers=BEARER)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["Cache-Control"] == "no-store"
    events = events_of(response)
    assert events[0] == ("retry", str(generation_api.RECONNECT_MS))
    sent = jobs_in(events)
    assert [(j["status"], j["progress"], j["stage"]) for j in sent] == [
        ("queued", 0.0, "queued"), ("reserved", 0.0, "reserved"), ("running", 0.2, "rendering"),
        ("running", 0.7, "uploading"), ("succeeded", 1.0, "done")]
    assert all(set(j) == JOB_FIELDS for j in sent)  # the same job object as GET
    assert len(sent[-1]["outputs"]) == 1
    assert len(generation.called("get_job")) == 7
    assert all(args == (USER_ID, job) for args, _ in generation.called("get_job"))
    assert set(clock.sleeps) == {0.5}  # the default poll interval
    ids = [e["id"] for kind, e in events if kind == "job"]
    assert len(set(ids)) == len(ids) and all(ids)


def test_stream_of_a_finished_job_is_one_event(client, generation, clock):
    job = generation.add(USER_ID, status="failed", stage="failed", queue_position=None,
                         error={"code": "provider_unavailable", "message": "all providers down"})
    events = events_of(client.get(f"/v1/generations/{job}/events", headers=APIKEY))
    [sent] = jobs_in(events)
    assert sent["status"] == "failed"
    assert sent["error"] == {"code": "provider_unavailable", "message": "all providers down"}
    assert len(generation.called("get_job")) == 1 and clock.sleeps == []


def test_stream_keeps_alive_and_ends_after_its_max_duration(make_app, generation, clock):
    client = make_app(GENERATION_EVENTS_POLL_SECONDS=1, GENERATION_EVENTS_KEEPALIVE_SECONDS=15,
                      GENERATION_EVENTS_MAX_SECONDS=60).test_client()
    job = generation.add(USER_ID, status="running", stage="rendering", progress=0.5)
    events = events_of(client.get(f"/v1/generations/{job}/events", headers=BEARER))
    assert len(jobs_in(events)) == 1  # nothing changed after the first state
    assert [e for k, e in events if k == "comment"] == [
        "keepalive", "keepalive", "keepalive", "stream time is up; reconnect for more"]
    assert clock.now - 1000.0 == 60  # ended at the max duration, not later
    assert set(clock.sleeps) == {1}


def test_another_users_stream_is_404_before_streaming(client, generation, clock):
    theirs = generation.add(UNVERIFIED_ID)
    response = client.get(f"/v1/generations/{theirs}/events", headers=BEARER)
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert error_of(response)["code"] == "not_found"


def test_stream_service_away_before_streaming_is_503(client, generation, clock):
    generation.fail_with["get_job"] = ServiceUnavailable()
    response = client.get(f"/v1/generations/{uuid.uuid4()}/events", headers=BEARER)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


def test_stream_rides_out_a_503_and_reports_a_vanished_job(client, generation, clock):
    job = generation.add(USER_ID)
    generation.script[job] = [
        state("queued", queue_position=2), ServiceUnavailable(), state("reserved", queue_position=1),
        DomainError("not_found", "job not found", 404)]
    events = events_of(client.get(f"/v1/generations/{job}/events", headers=BEARER))
    assert [s["status"] for s in jobs_in(events)] == ["queued", "reserved"]
    kind, last = events[-1]
    assert kind == "error"
    assert last["data"] == {"error": {"code": "not_found", "message": "job not found",
                                      "details": {}}}


def test_stream_polls_carry_the_request_id(client, generation, clock, pool, monkeypatch):
    seen = []
    original = pool.get

    @contextmanager
    def recording_get(timeout=None, correlation=None):
        seen.append(correlation)
        with original(timeout, correlation) as proxy:
            yield proxy

    monkeypatch.setattr(pool, "get", recording_get)
    job = generation.add(USER_ID)
    generation.script[job] = [state("queued", queue_position=1), state("cancelled")]
    response = client.get(f"/v1/generations/{job}/events",
                          headers={**BEARER, "X-Request-Id": "watch-1"})
    assert [s["status"] for s in jobs_in(events_of(response))] == ["queued", "cancelled"]
    assert seen[-1] == "watch-1"  # the poll made while streaming, after the request's own code


def test_last_event_id_is_accepted_and_the_current_state_comes_first(client, generation, clock):
    job = generation.add(USER_ID, status="succeeded", stage="done", progress=1.0,
                         queue_position=None)
    first = events_of(client.get(f"/v1/generations/{job}/events", headers=BEARER))
    [(_, event)] = [e for e in first if e[0] == "job"]
    again = events_of(client.get(f"/v1/generations/{job}/events",
                                 headers={**BEARER, "Last-Event-ID": event["id"]}))
    assert again == first


def test_open_streams_are_capped_per_process_and_released(make_app, generation, clock):
    client = make_app(GENERATION_EVENTS_MAX_STREAMS=1).test_client()
    job = generation.add(USER_ID, status="running", stage="rendering")
    first = client.get(f"/v1/generations/{job}/events", headers=BEARER, buffered=False)
    assert first.status_code == 200
    refused = client.get(f"/v1/generations/{job}/events", headers=BEARER)
    assert refused.status_code == 503
    assert error_of(refused)["code"] == "service_unavailable"
    assert refused.headers["Retry-After"] == "5"
    first.close()  # the client went away: its thread and slot are free again
    generation.jobs[job].update(status="succeeded", stage="done")
    again = client.get(f"/v1/generations/{job}/events", headers=BEARER)
    assert again.status_code == 200
    assert jobs_in(events_of(again))[-1]["status"] == "succeeded"
    again.close()  # what the WSGI server does once the stream ended
    assert client.get(f"/v1/generations/{job}/events", headers=BEARER).status_code == 200


def test_one_user_holds_at_most_two_streams_and_others_still_get_theirs(make_app, generation,
                                                                       clock, auth):
    app = make_app(GENERATION_EVENTS_MAX_STREAMS=3)
    client = app.test_client()
    slots = app.extensions[generation_api.STREAMS_EXTENSION]
    auth.credentials[("token", "other-user")] = principal(OTHER_USER, "session", SESSION_ID)
    other = {"Authorization": "Bearer other-user"}
    mine = generation.add(USER_ID, status="running", stage="rendering")
    theirs = generation.add(OTHER_USER, status="running", stage="rendering")
    streams = [client.get(f"/v1/generations/{mine}/events", headers=BEARER, buffered=False)
               for _ in range(2)]
    assert [s.status_code for s in streams] == [200, 200]
    refused = client.get(f"/v1/generations/{mine}/events", headers=BEARER)
    assert refused.status_code == 429
    assert error_of(refused)["code"] == "too_many_streams"
    assert error_of(refused)["details"]["max_streams_per_user"] == 2
    assert refused.headers["Retry-After"] == "5"
    assert slots.open_streams(USER_ID) == 2
    # another user is not refused because of the first one's streams...
    theirs_stream = client.get(f"/v1/generations/{theirs}/events", headers=other, buffered=False)
    assert theirs_stream.status_code == 200
    # ...but the process total (3) is reached now: 503 for anyone
    auth.credentials[("token", "third-user")] = principal(THIRD_USER, "session", SESSION_ID)
    third = generation.add(THIRD_USER, status="running", stage="rendering")
    full = client.get(f"/v1/generations/{third}/events",
                      headers={"Authorization": "Bearer third-user"})
    assert (full.status_code, error_of(full)["code"]) == (503, "service_unavailable")
    streams[0].close()  # a client went away: its slot is free again
    assert slots.open_streams(USER_ID) == 1
    again = client.get(f"/v1/generations/{mine}/events", headers=BEARER, buffered=False)
    assert again.status_code == 200
    for response in (streams[1], again, theirs_stream):
        response.close()
    assert slots.open_streams() == 0


def test_stream_slots_release_once():
    slots = generation_api.StreamSlots(total=2, per_user=2)
    release = slots.acquire("u1")
    release()
    release()  # a second close changes nothing
    assert slots.open_streams() == 0
    slots.acquire("u1"), slots.acquire("u1")
    with pytest.raises(DomainError) as caught:
        slots.acquire("u1")
    assert caught.value.code == "too_many_streams"


def test_event_stream_framing():
    job = job_view(str(uuid.uuid4()))
    text = generation_api.job_frame(job)
    lines = text.split("\n")
    assert lines[0] == "event: job"
    assert lines[1] == f"id: {generation_api.event_id(job)}"
    assert lines[2].startswith("data: {") and "\n" not in json.loads(lines[2][6:])["prompt"]
    assert text.endswith("}\n\n") and text.count("\n") == 4
    multiline = job_view(job["id"], prompt="line one\nline two")
    assert generation_api.job_frame(multiline).count("\n") == 4  # escaped inside the JSON


# ------------------------------------------------------------ the OpenAPI document


def test_openapi_documents_generation(client):
    doc = client.get("/v1/openapi.json").get_json()
    validate(doc)
    paths = {path: set(ops) - {"parameters"} for path, ops in doc["paths"].items()
             if path.startswith(("/v1/generations", "/v1/templates", "/v1/models"))}
    assert paths == {
        "/v1/templates": {"get"}, "/v1/models": {"get"}, "/v1/generations": {"get", "post"},
        "/v1/generations/{job_id}": {"get", "delete"},
        "/v1/generations/{job_id}/events": {"get"},
        "/v1/generations/{job_id}/webhook-deliveries": {"get"},
    }
    assert "security" not in doc["paths"]["/v1/templates"]["get"]
    assert "security" not in doc["paths"]["/v1/models"]["get"]
    assert doc["paths"]["/v1/models"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"] == {"$ref": "#/components/schemas/ModelList"}
    assert {"name", "job_types", "region", "prices"} <= set(
        doc["components"]["schemas"]["Model"]["properties"])
    assert "model" in doc["components"]["schemas"]["SubmitJob"]["properties"]
    assert "model" in doc["components"]["schemas"]["JobView"]["properties"]
    secured = [{"bearerAuth": []}, {"apiKeyAuth": []}]
    post = doc["paths"]["/v1/generations"]["post"]
    assert post["security"] == secured
    assert {p["name"] for p in post["parameters"]} == {"dry_run", "Idempotency-Key", "Prefer"}
    assert set(post["responses"]) >= {"200", "202"}
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SubmitJob"}
    events = doc["paths"]["/v1/generations/{job_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert events["security"] == secured
    deliveries = doc["paths"]["/v1/generations/{job_id}/webhook-deliveries"]["get"]
    assert deliveries["security"] == secured
    assert {p["name"] for p in deliveries["parameters"]} >= {"limit", "cursor"}
    events_field = doc["components"]["schemas"]["SubmitJob"]["properties"]["webhook_events"]
    assert events_field["items"]["enum"] == ["started", "completed", "failed", "cancelled"]


# ------------------------------------------------------------ the webhook secret (auth)


@pytest.fixture
def secrets_auth(pool) -> FakeAuth:
    return pool.auth


def test_webhook_secret_is_the_callers_and_stable(client, secrets_auth):
    first = client.get("/v1/me/webhook-secret", headers=BEARER)
    assert first.status_code == 200
    body = first.get_json()
    assert set(body) == {"secret", "created_at"}  # nothing else leaks
    assert body["secret"].startswith("whsec_")
    assert first.headers["Cache-Control"] == "no-store"
    assert client.get("/v1/me/webhook-secret", headers=APIKEY).get_json() == body
    assert {a for a, _ in secrets_auth.called("get_webhook_secret")} == {(USER_ID,)}
    other = client.get("/v1/me/webhook-secret", headers=OTHER).get_json()
    assert other["secret"] != body["secret"]
    assert secrets_auth.called("get_webhook_secret")[-1][0] == (UNVERIFIED_ID,)


def test_webhook_secret_rotation(client, secrets_auth):
    old = client.get("/v1/me/webhook-secret", headers=BEARER).get_json()
    rotated = client.post("/v1/me/webhook-secret/rotate", headers=BEARER)
    assert rotated.status_code == 200
    new = rotated.get_json()
    assert new["secret"] != old["secret"] and new["created_at"] == "2026-01-09T03:04:05+00:00"
    assert client.get("/v1/me/webhook-secret", headers=BEARER).get_json() == new
    assert secrets_auth.called("rotate_webhook_secret") == [((USER_ID,), {})]


def test_webhook_secret_needs_a_credential(client, secrets_auth):
    assert client.get("/v1/me/webhook-secret").status_code == 401
    assert client.post("/v1/me/webhook-secret/rotate").status_code == 401
    assert client.get("/v1/me/webhook-secret/rotate").status_code == 405
    assert secrets_auth.called("get_webhook_secret") == []
    assert secrets_auth.called("rotate_webhook_secret") == []


# ------------------------------------------------------------ the disclosure log


def disclosure(owner: str, **changes) -> dict:
    return {"id": str(uuid.uuid4()), "job_id": str(uuid.uuid4()), "attempt": 1,
            "provider": "seedream", "region": "cn",
            "categories": ["prompt", "parameters"], "outcome": "succeeded", "error_code": None,
            "created_at": "2026-12-03T10:00:00Z", "owner": owner, **changes}


def test_disclosures_are_the_callers_own_from_generation(client, generation):
    mine = disclosure(USER_ID)
    generation.disclosures += [mine, disclosure(UNVERIFIED_ID)]
    response = client.get("/v1/privacy/disclosures?limit=5", headers=BEARER)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    expected = {k: v for k, v in mine.items() if k != "owner"}
    assert body == {"items": [{**expected, "created_at": "2026-12-03T10:00:00+00:00"}],
                    "next_cursor": None}  # nothing the contract does not name
    assert generation.called("list_disclosures") == [((USER_ID, {"limit": 5}), {})]


def test_disclosures_need_a_caller_and_a_valid_query(client, generation):
    assert client.get("/v1/privacy/disclosures").status_code == 401
    assert client.get("/v1/privacy/disclosures?limit=0", headers=BEARER).status_code == 400
    assert generation.called("list_disclosures") == []


def test_the_disclosure_log_is_documented(client):
    doc = client.get("/v1/openapi.json").get_json()
    get = doc["paths"]["/v1/privacy/disclosures"]["get"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DisclosurePage"}
    assert {p["name"] for p in get["parameters"]} == {"limit", "cursor"}
    view = doc["components"]["schemas"]["DisclosureView"]["properties"]
    assert view["outcome"]["enum"] == ["succeeded", "failed", "refused"]
    assert view["categories"]["items"]["enum"] == ["prompt", "negative_prompt", "source_image",
                                                   "parameters"]
