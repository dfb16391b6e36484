"""The OpenAPI 3.1 document's conventions (an ``operationId`` on every
operation, the job webhooks under ``webhooks``) and the docs page at
``/v1/docs``, which works offline: every script and style it loads is served
by the gateway itself (Swagger UI's files from the flask-swagger-ui package)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from gateway.app import operation_id
from services.common.contracts import generation as c


@pytest.fixture
def doc(client) -> dict:
    return client.get("/v1/openapi.json").get_json()


def operations(doc: dict, section: str = "paths"):
    for path, item in doc.get(section, {}).items():
        for method, operation in item.items():
            if method != "parameters":
                yield method, path, operation


def test_the_document_is_a_valid_openapi_3_1_document(doc):
    assert doc["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(doc).validate()


def test_every_operation_and_webhook_has_a_unique_operation_id(doc):
    ids = [op.get("operationId") for section in ("paths", "webhooks")
           for _, _, op in operations(doc, section)]
    assert len(ids) > 50 and all(ids)
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]*", i) for i in ids)
    post = doc["paths"]["/v1/generations"]["post"]
    assert post["operationId"] == "postGenerations"


@pytest.mark.parametrize("method, path, expected", [
    ("get", "/v1/generations/{job_id}/events", "getGenerationsByJobIdEvents"),
    ("post", "/v1/me/webhook-secret/rotate", "postMeWebhookSecretRotate"),
    ("get", "/healthz", "getHealthz"),
])
def test_operation_ids_spell_method_and_path(method, path, expected):
    assert operation_id(method, path) == expected


def test_each_job_webhook_is_described_with_its_body_and_signature_headers(doc):
    assert set(doc["webhooks"]) == set(c.WEBHOOK_TYPES) == {
        "job.started", "job.completed", "job.failed", "job.cancelled"}
    for event, item in doc["webhooks"].items():
        post = item["post"]
        headers = {p["name"]: p for p in post["parameters"] if p["in"] == "header"}
        assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
        assert all(h["required"] for h in headers.values())
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        assert schema["allOf"][0] == {"$ref": "#/components/schemas/JobWebhook"}
        assert schema["allOf"][1]["properties"]["type"] == {"const": event}
        assert "2XX" in post["responses"]
    body = doc["components"]["schemas"]["JobWebhook"]
    assert body["properties"]["job"] == {"$ref": "#/components/schemas/WebhookJob"}
    assert set(doc["components"]["schemas"]["WebhookJob"]["properties"]) == set(
        c.WebhookJob().fields)


def test_submit_documents_the_wait_preference_and_both_200_bodies(doc):
    post = doc["paths"]["/v1/generations"]["post"]
    prefer = next(p for p in post["parameters"] if p["name"] == "Prefer")
    assert prefer["in"] == "header" and prefer["schema"] == {"type": "string"}
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {"anyOf": [
        {"$ref": "#/components/schemas/PriceQuote"}, {"$ref": "#/components/schemas/JobView"}]}
    for status in ("200", "202"):
        assert "Preference-Applied" in post["responses"][status]["headers"]
    job = doc["components"]["schemas"]["JobView"]["properties"]
    assert job["output_urls"]["items"] == {"$ref": "#/components/schemas/OutputUrl"}


class Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("rel") == "stylesheet":
            self.urls.append(attrs["href"])


def test_the_docs_page_loads_only_what_the_gateway_serves(client):
    page = client.get("/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assets = Assets()
    assets.feed(html)
    assert len(assets.urls) == 4  # Swagger UI's style and two scripts, and the start script
    for url in assets.urls:
        assert not urlsplit(url).netloc  # the gateway's own, no CDN
        served = client.get(url)
        assert served.status_code == 200, url
        assert served.mimetype in ("text/css", "text/javascript"), url
        assert len(served.data) > 100
    assert "<script>" not in html  # no inline script: the CSP allows the gateway's only
    assert "script-src 'self';" in page.headers["Content-Security-Policy"]
    start = client.get("/v1/docs/start.js").get_data(as_text=True)
    assert '"/v1/openapi.json"' in start  # it shows this document


def test_the_docs_assets_are_confined_to_swagger_uis_files(client):
    assert client.get("/v1/docs/assets/nothing.js").status_code == 404
    assert client.get("/v1/docs/assets/../__init__.py").status_code == 404
    assert client.get("/v1/docs/assets/%2e%2e/flask_swagger_ui.py").status_code == 404
