"""The gateway's part of the web console (gateway/console.py): the build's
files, index.html for console addresses and only for them, the console's CSP,
and a clear 503 page without a build. The console itself is tested in a
browser (tests/e2e/console)."""

from __future__ import annotations

import pytest

from gateway.console import media_origins


@pytest.fixture
def dist(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text('<!doctype html><script type="module" src="/assets/app-1a2b.js"></script>')
    (tmp_path / "assets" / "app-1a2b.js").write_text("console.log('app')")
    return tmp_path


def test_console_addresses_get_index_html_with_the_console_policy(make_app, dist):
    client = make_app(CONSOLE={"DIST": str(dist), "PUBLIC_BASE_URL": "https://darkroom.example"}).test_client()
    for path in ("/", "/gallery", "/reset-password?token=abc", "/privacy/requests/r1/cancel?token=t",
                 "/checkout/success?order_id=o1", "/public/abc"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert b"/assets/app-1a2b.js" in response.data
        assert response.headers["Cache-Control"] == "no-cache"
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "img-src 'self' data: https://darkroom.example;" in csp
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    asset = client.get("/assets/app-1a2b.js")
    assert asset.status_code == 200 and "immutable" in asset.headers["Cache-Control"]


def test_api_paths_keep_their_json_errors(make_app, dist):
    client = make_app(CONSOLE={"DIST": str(dist)}).test_client()
    for path in ("/v1/nothing", "/healthz/x", "/metrics/x", "/assets/missing.js", "/assets/../index.html"):
        response = client.get(path)
        assert response.status_code == 404 and response.json["error"]["code"] == "not_found", path
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    # another method on a console address is not the console's
    assert client.post("/gallery").json["error"]["code"] in ("not_found", "method_not_allowed")
    assert client.get("/healthz").json["status"] == "ok"


def test_without_a_build_the_console_is_a_clear_503(make_app, tmp_path):
    client = make_app(CONSOLE={"DIST": str(tmp_path / "nothing")}).test_client()
    response = client.get("/gallery")
    assert response.status_code == 503 and response.mimetype == "text/html"
    assert b"make console/dist/index.html" in response.data
    assert client.get("/v1/nothing").status_code == 404


def test_media_origins_follow_the_storage_backend():
    assert media_origins({"CONSOLE": {"PUBLIC_BASE_URL": "http://127.0.0.1:8000/"}}) == ["http://127.0.0.1:8000"]
    s3 = {"BACKEND": "s3", "S3_ENDPOINT": "minio:9000", "S3_PUBLIC_ENDPOINT": "files.example.com",
          "S3_SECURE": True}
    assert media_origins({"STORAGE": s3, "CONSOLE": {"MEDIA_ORIGINS": "https://cdn.example"}}) == [
        "https://cdn.example", "https://files.example.com"]
    assert media_origins({"STORAGE": {**s3, "S3_PUBLIC_ENDPOINT": "", "S3_SECURE": "false"}}) == [
        "http://minio:9000"]
