"""Every adapter type through the whole stack over HTTP, each vendor a fake
speaking its documented API on loopback (tests/e2e/conftest.py writes one
providers-file entry per adapter type): one job per adapter, chosen with
``model``, from submit to its outputs in the gallery, the quoted price
captured once, a disclosure record naming the vendor, and nothing that
identifies the account at the vendor. Then the route's promises: a failing
primary and the backup taking over, a content-policy refusal that does not
fail over, and regions the user refuses.

The text-to-image route is ``openai (us), local (on-premises), seedream (cn),
qwen (cn), ...``: a user refusing ``us`` and ``on-premises`` starts at
Seedream (Ark) with Qwen (DashScope) as its backup, as in
deploy/providers/seed-004.yaml."""

from __future__ import annotations

import io
import json
import time

import pytest
import requests
from PIL import Image

from tests.conftest import wait_for
from tests.e2e.stack import verified_login
from tests.e2e.test_generation import SIGNUP_GRANT, balance, finished, settled, submit, upload_png
from tests.fakes.ark import REFUSAL

pytestmark = pytest.mark.e2e

TEXT = ["prompt", "parameters"]  # a disclosure's categories without a source image
WITH_SOURCE = ["prompt", "source_image", "parameters"]

# adapter type -> (model, its fake: stack.<attribute> or stack.vendors[<key>], job type, region)
ADAPTERS = {
    "openai_images": ("openai", "images", "text-to-image", "us"),
    "local": ("local", None, "text-to-image", "on-premises"),
    "async_task": ("video", "video", "image-to-video", "eu"),
    "volcengine_ark": ("seedream", "ark", "image-to-image", "cn"),
    "dashscope": ("wan", "dashscope", "image-to-video", "cn"),
    "openrouter": ("openrouter", "openrouter", "text-to-image", "us"),
    "gemini": ("veo", "gemini", "image-to-video", "us"),
    "replicate": ("flux", "replicate", "text-to-image", "us"),
    "fal": ("kling", "fal", "image-to-video", "us"),
    "comfyui": ("studio", "comfyui", "image-to-image", "on-premises"),
}
OUTPUT_TYPE = {"text-to-image": "image/png", "image-to-image": "image/png",
               "image-to-video": "video/mp4"}


@pytest.fixture
def user(stack):
    address, registered, token = verified_login(stack)
    wait_for(lambda: balance(stack, token)["available"] == SIGNUP_GRANT, 20, 0.2, "signup grant")
    return {"email": address, "id": registered["user"]["id"], "token": token,
            "api_key": registered["api_key"]["key"]}


def fake_of(stack, where: str | None):
    if where is None:
        return None
    return getattr(stack, where) if where in ("images", "video") else stack.vendors[where]


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def ledger(stack, token) -> list[dict]:
    return ok(stack.call("GET", "/v1/billing/ledger", token=token, params={"limit": 50}))["items"]


def kinds_for(stack, token, job_id: str) -> list[str]:
    return sorted(e["kind"] for e in ledger(stack, token) if e["job_id"] == job_id)


def disclosures(stack, token, job_id: str) -> list[tuple]:
    """The job's disclosure rows, oldest first: (provider, region, categories,
    outcome, error code)."""
    items = ok(stack.call("GET", "/v1/privacy/disclosures", token=token,
                          params={"limit": 50}))["items"]
    return [(d["provider"], d["region"], d["categories"], d["outcome"], d["error_code"])
            for d in reversed(items) if d["job_id"] == job_id]


def job_body(stack, token, job_type: str, prompt: str, **extra) -> dict:
    body = {"type": job_type, "prompt": prompt, **extra}
    if job_type == "image-to-video":
        body.update(source_image_id=upload_png(stack, token), duration_s=2)
    else:
        body.update(size="512x512")
        if job_type == "image-to-image":
            body.update(source_image_id=upload_png(stack, token), strength=0.5)
    return body


def quote(stack, token, body: dict) -> int:
    return ok(stack.call("POST", "/v1/generations", token=token, params={"dry_run": "true"},
                         json=body))["price"]


def refuse_regions(stack, token, regions: list[str], probe: dict) -> None:
    """Refuse ``regions``, and wait until generation's copy has them (a dry
    run of ``probe`` answers 409)."""
    consents = ok(stack.call("PUT", "/v1/privacy/consents", token=token,
                             json={"refused_regions": regions}))
    assert consents["refused_regions"] == sorted(regions)
    wait_for(lambda: stack.call("POST", "/v1/generations", token=token,
                                params={"dry_run": "true"}, json=probe).status_code == 409,
             20, 0.2, "generation to know the refused regions")


def assert_nothing_identifies(sent, user, job_id: str) -> None:
    """No path, header or body the vendor received names the account or the job."""
    for request in sent:
        raw = request.path + json.dumps(request.headers) + request.body.decode("latin-1")
        for secret in (user["id"], user["email"], user["token"], user["api_key"], job_id):
            assert secret not in raw, (secret, request.path)


# ---------------------------------------------------------------- one job per adapter type


def test_every_adapter_is_a_model_with_its_region(stack):
    models = {m["name"]: m for m in ok(stack.call("GET", "/v1/models"))["items"]}
    for model, _, job_type, region in ADAPTERS.values():
        assert job_type in models[model]["job_types"] and models[model]["region"] == region


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_one_job_through_the_adapter(stack, user, adapter):
    model, where, job_type, region = ADAPTERS[adapter]
    token, fake = user["token"], fake_of(stack, where)
    prompt = f"a lantern on a pier, for {adapter}"
    body = job_body(stack, token, job_type, prompt, model=model)
    price = quote(stack, token, body)
    before = len(fake.requests) if fake else 0

    created = submit(stack, token, body)
    assert (created["price"], created["model"]) == (price, model)
    done = finished(stack, token, created["id"])
    assert (done["status"], done["provider"], len(done["outputs"])) == ("succeeded", model, 1), done

    # the outputs are the job's in the gallery, and download through their signed URLs
    gallery = ok(stack.call("GET", "/v1/images", token=token, params={"job_id": created["id"]}))
    assert sorted(i["id"] for i in gallery["items"]) == sorted(done["outputs"])
    for item in gallery["items"]:
        described = ok(stack.call("GET", f"/v1/images/{item['id']}", token=token))
        assert described["content_type"] == OUTPUT_TYPE[job_type]
        served = requests.get(described["url"], timeout=10)
        assert served.status_code == 200
        assert served.headers["Content-Type"] == OUTPUT_TYPE[job_type]
        if job_type == "image-to-video":
            assert served.content[4:8] == b"ftyp"
        else:
            assert Image.open(io.BytesIO(served.content)).format == "PNG"

    # the quoted price, captured once
    assert settled(stack, token)["available"] == SIGNUP_GRANT - price
    assert kinds_for(stack, token, created["id"]) == ["capture", "hold"]

    # who received the data: the vendor and its region (local sends nothing anywhere)
    categories = TEXT if job_type == "text-to-image" else WITH_SOURCE
    expected = [] if fake is None else [(model, region, categories, "succeeded", None)]
    assert disclosures(stack, token, created["id"]) == expected

    if fake is not None:  # the vendor got the prompt, and nothing that names the account
        sent = fake.requests[before:]
        assert any(prompt in r.body.decode("latin-1") for r in sent)
        assert_nothing_identifies(sent, user, created["id"])

    time.sleep(1)  # a second look: no late second capture
    assert kinds_for(stack, token, created["id"]) == ["capture", "hold"]
    again = balance(stack, token)
    assert (again["available"], again["held"]) == (SIGNUP_GRANT - price, 0)


# ---------------------------------------------------------------- the route's promises


@pytest.fixture
def vendor_route(stack, user):
    """The user refuses ``us`` and ``on-premises``: text-to-image starts at
    Seedream (Ark), Qwen (DashScope) its backup."""
    refuse_regions(stack, user["token"], ["on-premises", "us"],
                   {"type": "text-to-image", "prompt": "x", "model": "openai"})
    return stack.vendors["ark"], stack.vendors["dashscope"]


@pytest.mark.parametrize("outage", [(503, 503), (429, 500)], ids=["5xx", "429"])
def test_a_failing_primary_fails_over_to_the_backup(stack, user, vendor_route, outage):
    ark, dashscope = vendor_route
    token = user["token"]
    body = job_body(stack, token, "text-to-image", "a harbour at dawn")
    price = quote(stack, token, body)
    seen = {"openai": len(stack.images.requests), "ark": len(ark.requests),
            "dashscope": len(dashscope.requests)}
    ark.fail_next(*outage)  # both of the primary's tries (retry.attempts is 2)

    created = submit(stack, token, body)
    done = finished(stack, token, created["id"])
    assert (done["status"], done["provider"], len(done["outputs"])) == ("succeeded", "qwen", 1)
    assert settled(stack, token)["available"] == SIGNUP_GRANT - price
    assert kinds_for(stack, token, created["id"]) == ["capture", "hold"]
    rows = disclosures(stack, token, created["id"])  # each try is a row
    assert [row[:4] for row in rows] == [("seedream", "cn", TEXT, "failed")] * 2 + [
        ("qwen", "cn", TEXT, "succeeded")]
    assert rows[0][4] and rows[1][4] and rows[2][4] is None
    assert len([r for r in ark.requests[seen["ark"]:] if r.method == "POST"]) == 2
    assert len(stack.images.requests) == seen["openai"]  # in a refused region: never asked
    assert_nothing_identifies(ark.requests[seen["ark"]:] + dashscope.requests[seen["dashscope"]:],
                              user, created["id"])


def test_a_content_refusal_does_not_fail_over(stack, user, vendor_route):
    ark, dashscope = vendor_route
    token = user["token"]
    seen = len(dashscope.requests)
    ark.fail_next(REFUSAL)

    created = submit(stack, token, job_body(stack, token, "text-to-image", "a masked figure"))
    done = finished(stack, token, created["id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "content_refused"), done
    assert dashscope.requests[seen:] == []  # the backup was not asked
    assert settled(stack, token)["available"] == SIGNUP_GRANT  # the hold released
    assert kinds_for(stack, token, created["id"]) == ["hold", "release"]
    assert disclosures(stack, token, created["id"]) == [
        ("seedream", "cn", TEXT, "refused", "content_refused")]


def test_refused_regions_leave_no_provider_and_hold_nothing(stack, user):
    token = user["token"]
    video = job_body(stack, token, "image-to-video", "a slow pan")
    # every vendor of image-to-video (video eu, wan cn, veo us, kling us) refused
    refuse_regions(stack, token, ["cn", "eu", "us"], video)
    for params in ({}, {"dry_run": "true"}):
        refused = stack.call("POST", "/v1/generations", token=token, params=params, json=video)
        assert (refused.status_code, refused.json()["error"]["code"]) == (
            409, "no_provider_for_region"), refused.text
    # a model in a refused region is refused even where the route has others left
    named = stack.call("POST", "/v1/generations", token=token, json=job_body(
        stack, token, "text-to-image", "a kite", model="seedream"))
    assert (named.status_code, named.json()["error"]["code"]) == (409, "no_provider_for_region")
    assert ok(stack.call("POST", "/v1/generations", token=token, params={"dry_run": "true"},
                         json=job_body(stack, token, "text-to-image", "a kite")))["price"] == 1
    assert ok(stack.call("GET", "/v1/generations", token=token))["items"] == []
    assert [e["kind"] for e in ledger(stack, token)] == ["grant"]
    assert balance(stack, token)["held"] == 0
