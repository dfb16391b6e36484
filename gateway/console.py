"""The web console (``console/``, a Preact single-page app) served at ``/``.

The console uses only the public HTTP API, from the same origin, so the
gateway's part is small and holds no business rule: it serves the built files
of ``console/dist`` (``make`` builds them: the Makefile's ``console/dist/index.html``
rule) and answers a console address (``/gallery``, ``/reset-password?token=…``,
any GET path outside the API's) with ``index.html``, whose script routes it.

- ``/assets/<name>``: the build's content-hashed files, cached for a year.
- ``/``, and a GET or HEAD of any path no route of the API has (the router's
  404), when the path is outside :data:`RESERVED`: ``index.html``, never cached.
  A path under ``/v1/`` or a health path keeps the API's JSON 404, and a
  method a route does not take keeps its 405.
- No build (``console/dist/index.html`` missing): 503 with a page that says
  how to build it, not a 500.

Each console answer carries the console's Content-Security-Policy
(:func:`gateway.middleware.console_policy`, beside the API's headers).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, request, send_from_directory
from werkzeug.exceptions import NotFound

from gateway import errors, middleware

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIST = REPO / "console" / "dist"
# First path segments that are the API's, never the console's.
RESERVED = frozenset({"v1", "healthz", "readyz", "metrics"})
ASSET_MAX_AGE = 365 * 24 * 3600

MISSING_BUILD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Darkroom console not built</title></head>
<body><h1>The console is not built</h1>
<p>This gateway has no console build (<code>console/dist</code>). Build it with
<code>make console/dist/index.html</code> (or <code>npm ci &amp;&amp; npm run build</code>
in <code>console/</code>); <code>make dev</code> and <code>make test</code> do it for you.</p>
<p>The HTTP API works without it: <a href="/v1/docs">/v1/docs</a>.</p></body></html>
"""

console_blp = Blueprint("console", __name__)


def dist_dir() -> Path:
    return current_app.extensions["darkroom_console"]["dist"]


def _with_policy(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = current_app.extensions["darkroom_console"]["csp"]
    return response


def index() -> Response:
    dist = dist_dir()
    if not (dist / "index.html").is_file():
        response = Response(MISSING_BUILD, status=503, mimetype="text/html")
        response.headers["Retry-After"] = "60"
    else:
        response = send_from_directory(dist, "index.html", mimetype="text/html", max_age=0)
        response.headers["Cache-Control"] = "no-cache"
    return _with_policy(response)


@console_blp.get("/")
def root():
    return index()


@console_blp.get("/assets/<path:name>")
def asset(name: str):
    response = send_from_directory(dist_dir() / "assets", name, max_age=ASSET_MAX_AGE)  # 404 outside it
    response.headers["Cache-Control"] = f"public, max-age={ASSET_MAX_AGE}, immutable"
    return _with_policy(response)


def is_console_path(path: str) -> bool:
    first = path.lstrip("/").split("/", 1)[0]
    return first not in RESERVED


def not_found(exc: NotFound):
    """The router found no route: a console address gets index.html; anything
    else (an API path, another method, a 404 raised by a view) the API's JSON 404."""
    if request.url_rule is None and request.method in ("GET", "HEAD") and is_console_path(request.path):
        return index()
    return errors.handle_http_exception(exc)


def media_origins(config: dict) -> list[str]:
    """Where the console's images and videos load from besides the gateway:
    ``CONSOLE_MEDIA_ORIGINS`` (space-separated), ``PUBLIC_BASE_URL``'s origin
    (the fs backend's signed URLs name it), and with the s3 storage
    backend the origin its presigned URLs name (``S3_PUBLIC_ENDPOINT``, else
    ``S3_ENDPOINT``, https when ``S3_SECURE``)."""
    console = config.get("CONSOLE") or {}
    origins = str(console.get("MEDIA_ORIGINS") or "").split()
    base = urlsplit(str(console.get("PUBLIC_BASE_URL") or ""))
    if base.scheme and base.netloc:  # the fs backend's signed URLs start with it
        origins.append(f"{base.scheme}://{base.netloc}")
    storage = config.get("STORAGE") or {}
    if str(storage.get("BACKEND") or "fs") == "s3":
        host = str(storage.get("S3_PUBLIC_ENDPOINT") or storage.get("S3_ENDPOINT") or "")
        if host:
            secure = str(storage.get("S3_SECURE")).strip().lower() in ("1", "true", "yes", "on")
            origins.append(host if "://" in host else f"{'https' if secure else 'http'}://{host}")
    return list(dict.fromkeys(o.rstrip("/") for o in origins if o))


def init_app(app: Flask, config: dict) -> None:
    console = config.get("CONSOLE") or {}
    dist = Path(console.get("DIST") or DEFAULT_DIST)  # DIST: unit tests point elsewhere
    app.extensions["darkroom_console"] = {
        "dist": dist,
        "csp": middleware.console_policy(media_origins(config)),
    }
    app.register_blueprint(console_blp)
    app.register_error_handler(NotFound, not_found)
