"""The API's documentation: the job webhooks in the OpenAPI document
(``webhooks``, OpenAPI 3.1) and Swagger UI at ``/v1/docs``.

Swagger UI's files come from the ``flask-swagger-ui`` package (its ``dist``
directory) and are served by the gateway itself under ``/v1/docs/assets/``:
the page works offline, loads nothing from a CDN, and runs no inline script,
so its Content-Security-Policy allows scripts from the gateway only.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from apispec import APISpec
from flask import Blueprint, Flask, Response, send_from_directory

from services.common.contracts import generation as c

DOCS_PATH = "/v1/docs"
ASSETS = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
# Swagger UI sets style attributes and draws its icons from data: URIs
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")

PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Darkroom API</title>
  <link rel="stylesheet" href="{DOCS_PATH}/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{DOCS_PATH}/assets/swagger-ui-bundle.js"></script>
  <script src="{DOCS_PATH}/assets/swagger-ui-standalone-preset.js"></script>
  <script src="{DOCS_PATH}/start.js"></script>
</body>
</html>
"""
START = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/v1/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout"
  });
};
"""

docs_blp = Blueprint("docs", __name__, url_prefix=DOCS_PATH)


def _page(body: str, mimetype: str) -> Response:
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Security-Policy"] = DOCS_CSP
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@docs_blp.get("", strict_slashes=False)
def page():
    return _page(PAGE, "text/html")


@docs_blp.get("/start.js")
def start():
    return _page(START, "text/javascript")


@docs_blp.get("/assets/<path:name>")
def asset(name: str):
    response = send_from_directory(ASSETS, name, max_age=86400)  # 404 outside the directory
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(docs_blp)


# ------------------------------------------------------------ webhooks in the document

SIGNATURE_HEADERS = [
    {"in": "header", "name": "webhook-id", "required": True, "schema": {"type": "string"},
     "description": "the delivery's id, the same on every retry: dedupe on it"},
    {"in": "header", "name": "webhook-timestamp", "required": True,
     "schema": {"type": "string", "pattern": "^[0-9]+$"},
     "description": "when it was signed, in unix seconds: refuse one more than five minutes off"},
    {"in": "header", "name": "webhook-signature", "required": True,
     "schema": {"type": "string"},
     "description": "`v1,<base64 HMAC-SHA256 of \"<webhook-id>.<webhook-timestamp>.<raw "
                    "body>\">`, keyed with the bytes after `whsec_` of the account's webhook "
                    "secret (`GET /v1/me/webhook-secret`), base64-decoded; several "
                    "space-separated signatures may come. Any Standard Webhooks library "
                    "verifies it"},
]
WEBHOOK_ANSWER = {"description": "received. Any other answer, or none within 15 s, is "
                                 "retried with backoff for about a day (not a redirect, nor a "
                                 "4xx other than 408, 425 and 429)"}


def document_webhooks(spec: APISpec) -> None:
    """The job webhooks, one per event (``c.WEBHOOK_EVENTS``, typed
    ``c.WEBHOOK_TYPES``), as OpenAPI 3.1's top-level ``webhooks``: the body
    (``JobWebhook`` with that ``type``) and the Standard Webhooks headers that
    sign it."""
    spec.components.schema("JobWebhook", schema=c.JobWebhook)
    body = spec.components.get_ref("schema", "JobWebhook")
    webhooks = {}
    for event, kind in zip(c.WEBHOOK_EVENTS, c.WEBHOOK_TYPES, strict=True):
        when = "starts running" if event == "started" else f"ends `{event}`"
        webhooks[kind] = {"post": {
            "operationId": f"job{event.capitalize()}Webhook",
            "summary": f"A job {when.replace('`', '')}",
            "description": f"POSTed to the job's `webhook_url` when it {when} (if the job "
                           "chose this event: `webhook_events`), signed the Standard "
                           "Webhooks way (https://www.standardwebhooks.com)",
            "tags": ["generation"],
            "parameters": SIGNATURE_HEADERS,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "allOf": [body, {"properties": {"type": {"const": kind}}}]}}}},
            "responses": {"2XX": WEBHOOK_ANSWER},
        }}
    spec.options["webhooks"] = webhooks
