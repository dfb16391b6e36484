"""Fuzzing the whole API against its own OpenAPI document (schemathesis).

Every operation of ``GET /v1/openapi.json`` is fuzzed on the e2e stack, so an
endpoint added later is fuzzed without a change here. Each operation runs
schemathesis' examples, coverage and fuzzing phases with every built-in check
(no server error; status codes, content types, headers and bodies as
documented; schema-invalid requests refused; schema-valid requests accepted;
missing required headers refused; authentication not ignored; unsupported
methods refused...), as a verified user with a session token.

The run is bounded and reproducible: ``MAX_EXAMPLES`` cases per operation in
the fuzzing phase, Hypothesis derandomized (a fixed seed per test) and without
an example database.

``test_api_workflows_agree_with_its_document`` then runs schemathesis' stateful
phase (sequences of up to ``STATEFUL_STEPS`` linked calls, seeded with ``SEED``)
with the same checks, and those only sequences can make (``use_after_free``,
``ensure_resource_availability``).

**Refusals that no schema can express.** Some operations refuse a schema-valid
request because of something only the server knows: a mailed code or token,
a TOTP code, a Stripe or PayPal signature, the deny-list of common passwords, a cursor
the server did not issue, the bytes of an upload that are not an image.
``REFUSALS`` lists them (status and error code, with the reason) per
operation; for these and only these, ``positive_data_acceptance`` accepts
those statuses, and :func:`refusal_is_documented` fails any other refusal of
a schema-valid request (400 ``invalid_request`` above all: the server's
validation disagrees with the document).

**Operations that would end the fuzzing user's session** get their own
credentials: logout gets a fresh session per case, and privacy requests (an
erasure revokes every credential and deletes the account) a user of their own,
replaced after an erasure was accepted. Nothing is excluded. The fuzzer sends
from its own loopback address (``FUZZ_SOURCE_ADDRESS``), so the failed logins it
makes lock that address out, not the one every other e2e test logs in from.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from requests.adapters import HTTPAdapter
from schemathesis import Config
from schemathesis.config._checks import POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES

from tests.e2e.stack import PASSWORD, verified_login

MAX_EXAMPLES = 25
SEED = 13  # the stateful phase's (the per-operation tests are derandomized)

CURSOR = "a cursor is opaque: only one the server issued (next_cursor) is valid"
# (method, path) -> {(status, error code, the one field it names or None): why a
# schema-valid request may meet it}
REFUSALS: dict[tuple[str, str], dict[tuple[int, str, str | None], str]] = {
    ("POST", "/v1/auth/register"): {
        (400, "weak_password", None): "a very common password, or the address's local part"},
    ("POST", "/v1/auth/verify-email"): {
        (400, "invalid_code", None): "the code is mailed",
        (400, "code_expired", None): "the code is mailed"},
    ("POST", "/v1/auth/password-reset/confirm"): {
        (400, "invalid_token", None): "the token is mailed"},
    ("POST", "/v1/privacy/requests/{request_id}/cancel"): {
        (400, "invalid_token", None): "the token is mailed"},
    ("POST", "/v1/me/totp/confirm"): {(400, "invalid_totp", None): "the code comes from the app"},
    ("GET", "/v1/auth/oidc/{name}/start"): {
        (400, "redirect_uri_not_allowed", None): "the allow-list is the operator's"},
    ("POST", "/v1/me/identities"): {
        (400, "redirect_uri_not_allowed", None): "the allow-list is the operator's"},
    ("GET", "/v1/auth/oidc/{name}/callback"): {
        (400, "oidc_invalid_state", None): "the state is made by start and comes back through "
                                           "the provider"},
    ("POST", "/v1/auth/oidc/exchange"): {
        (400, "oidc_invalid_code", None): "the code is handed to the app by the callback"},
    ("POST", "/v1/me/passkeys"): {
        (400, "invalid_passkey", None): "the credential is an authenticator's signed answer",
        (400, "passkey_challenge_invalid", None): "its challenge comes from "
                                                  "POST /v1/me/passkeys/options, good once"},
    ("POST", "/v1/auth/passkey/login"): {
        (401, "invalid_passkey", None): "the credential is an authenticator's signed answer",
        (400, "passkey_challenge_invalid", None): "its challenge comes from "
                                                  "POST /v1/auth/passkey/options, good once"},
    ("POST", "/v1/billing/webhooks/stripe"): {
        (400, "invalid_signature", None): "an HMAC of the body with Stripe's secret"},
    ("POST", "/v1/billing/webhooks/paypal"): {
        (400, "invalid_signature", None): "PayPal's signature of the delivery, which PayPal "
                                          "verifies"},
    ("POST", "/v1/uploads"): {
        (415, "unsupported_media_type", None): "the bytes are not a PNG, JPEG or WebP image",
        (400, "invalid_request", "file"): "the file is empty",
        (400, "invalid_image", None): "the bytes are an image that cannot be decoded",
        (422, "image_too_large", None): "the image is over STORAGE_MAX_IMAGE_PIXELS"},
    ("POST", "/v1/generations"): {
        (400, "invalid_request", "webhook_url"): "the URL's host must resolve to addresses "
                                                 "the service may call (GENERATION_WEBHOOK_ALLOW)",
        (422, "content_policy_violation", None): "the prompt meets the moderation policy",
        (400, "unknown_model", None): "the models are the operator's (GET /v1/models)"},
    # the fuzzing user is no administrator: the operators' API refuses it first
    # (tests/e2e/test_admin.py drives it as an administrator)
    **{operation: {(403, "admin_required", None): "only an administrator's session operates"}
       for operation in (
           ("GET", "/v1/admin/jobs"), ("POST", "/v1/admin/jobs/{job_id}/replay"),
           ("POST", "/v1/admin/jobs/{job_id}/cancel"), ("GET", "/v1/admin/dead-letters"),
           ("POST", "/v1/admin/dead-letters/{service}/{queue}/replay"),
           ("GET", "/v1/admin/privacy-requests"), ("GET", "/v1/admin/users"),
           ("POST", "/v1/admin/users/{user_id}/disable"),
           ("POST", "/v1/admin/users/{user_id}/enable"), ("GET", "/v1/admin/breaches"))},
    **{("GET", path): {(400, "invalid_request", "cursor"): CURSOR} for path in (
        "/v1/me/api-keys", "/v1/me/sessions", "/v1/me/passkeys", "/v1/images", "/v1/billing/ledger",
        "/v1/billing/orders", "/v1/generations", "/v1/privacy/requests",
        "/v1/privacy/disclosures", "/v1/generations/{job_id}/webhook-deliveries")},
}
ACCEPTED = set(POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES)
DEDICATED_USER = {("POST", "/v1/privacy/requests")}
# The fuzzer's own client address: its failed logins lock that address out
# (auth's per-address lockout), not 127.0.0.1 that the other e2e tests use.
FUZZ_SOURCE_ADDRESS = "127.0.0.2"
FRESH_SESSION = {("POST", "/v1/auth/logout")}


def _error(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _is_accepted(status: int) -> bool:
    return str(status) in ACCEPTED or f"{str(status)[0]}xx" in ACCEPTED


@schemathesis.check
def refusal_is_documented(ctx, response, case):
    """A schema-valid request refused with a status ``positive_data_acceptance``
    would not accept must be one of the operation's ``REFUSALS``."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or _is_accepted(response.status_code):
        return None
    error = _error(response)
    fields = set((error.get("details") or {}).get("fields") or {})
    for status, code, field in REFUSALS.get((case.method.upper(), case.path), {}):
        if (status, code) == (response.status_code, error.get("code")) \
                and (field is None or fields == {field}):
            return None
    raise AssertionError(f"schema-valid request refused with {response.status_code} {error}")


def fuzz_config(**project) -> Config:
    operations = [
        {"include-name": f"{method} {path}",
         "checks": {"positive_data_acceptance": {"expected-statuses": sorted(
             ACCEPTED | {str(status) for status, _, _ in refusals})}}}
        for (method, path), refusals in REFUSALS.items()
    ]
    return Config.from_dict({
        "generation": {
            "max-examples": MAX_EXAMPLES,
            # strings with U+0000 are refused (400, docs/api.md): no database stores them
            "allow-x00": False,
            "deterministic": True,
            "database": "none",
            # the test sends its own credential; a generated X-API-Key beside it
            # would only ever be refused
            "with-security-parameters": False,
        },
        "checks": {"enabled": True},
        "operations": operations,
        "request-timeout": 30,
        **project,
    })


class Credentials:
    """The fuzzing users' credentials."""

    def __init__(self, stack):
        self.stack = stack
        _, _, self.token = verified_login(stack)
        self.address, _, self.own_token = verified_login(stack)

    def login(self, address: str) -> str:
        r = self.stack.call("POST", "/v1/auth/login", json={"email": address, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return r.json()["token"]

    def headers_for(self, case) -> dict:
        op = (case.method.upper(), case.path)
        if op in FRESH_SESSION:
            return {"Authorization": f"Bearer {self.login(self.address)}"}
        if op in DEDICATED_USER:
            return {"Authorization": f"Bearer {self.own_token}"}
        return {"Authorization": f"Bearer {self.token}"}

    def after(self, case, response) -> None:
        if (case.method.upper(), case.path) in DEDICATED_USER and response.status_code == 202 \
                and isinstance(case.body, dict) and case.body.get("type") == "erasure":
            self.address, _, self.own_token = verified_login(self.stack)


class SourceAddressAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (FUZZ_SOURCE_ADDRESS, 0)
        super().init_poolmanager(*args, **kwargs)


@pytest.fixture(scope="module")
def fuzz_session():
    with requests.Session() as session:
        session.mount("http://", SourceAddressAdapter())
        yield session


@pytest.fixture(scope="module")
def credentials(stack):
    creds = Credentials(stack)
    yield creds
    # the fuzzed jobs must not hold the stack's one generation runner for later tests
    page = stack.call("GET", "/v1/generations?limit=100", token=creds.token).json()
    for job in page.get("items", []):
        if job["status"] in ("queued", "reserved"):
            stack.call("DELETE", f"/v1/generations/{job['id']}", token=creds.token)


def served_document() -> dict:
    """The OpenAPI document, as the gateway generates it (in process, at
    collection, so that each operation is a test of its own; the stack serves
    the same: test_the_stack_serves_the_fuzzed_document)."""
    from gateway.app import create_app

    app = create_app({"ACCESS_LOG_EVENTS": False, "RATELIMIT_ENABLED": False}, rpc=object())
    return app.test_client().get("/v1/openapi.json").get_json()


DOCUMENT = served_document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=fuzz_config())


def test_the_stack_serves_the_fuzzed_document(stack):
    assert stack.call("GET", "/v1/openapi.json").json() == DOCUMENT


@schema.parametrize()
def test_api_agrees_with_its_document(case, stack, credentials, fuzz_session):
    response = case.call_and_validate(base_url=stack.base_url, session=fuzz_session,
                                      headers=credentials.headers_for(case))
    credentials.after(case, response)


# Not in the stateful phase, which sends every request with one credential from
# the run's own address (test_api_agrees_with_its_document covers them, each
# case with what it needs): logout would end that credential, an erasure the
# account, and failed logins would lock 127.0.0.1 out for the other e2e tests.
STATEFUL_EXCLUDED = ("POST /v1/auth/logout", "POST /v1/privacy/requests", "POST /v1/auth/login")
STATEFUL_STEPS = 6


def test_api_workflows_agree_with_its_document(stack, credentials):
    """Schemathesis' stateful phase: sequences of linked calls (an id one answer
    gives, used by the next request), with the checks only such sequences can
    make (a deleted resource is gone, a created one is there) besides all others."""
    from schemathesis import engine
    from schemathesis.engine import Status, events

    config = fuzz_config(**{"seed": SEED, "base-url": stack.base_url,
                            "headers": {"Authorization": f"Bearer {credentials.token}"}})
    stateful = schemathesis.openapi.from_dict(DOCUMENT, config=config).exclude(
        name=list(STATEFUL_EXCLUDED))
    stateful.config.phases.update(phases=["stateful"])
    stateful.config.phases.stateful.max_steps = STATEFUL_STEPS
    problems, scenarios = [], 0
    for event in engine.from_schema(stateful).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            for checks in event.recorder.checks.values():
                problems += [f"{check.name}: {check.failure_info.failure.title}\n"
                             f"{check.failure_info.code_sample}"
                             for check in checks if check.status == Status.FAILURE]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            problems.append(f"{event.label}: {event.info.format()}" if hasattr(event, "info") else repr(event))
    assert scenarios and not problems, problems
