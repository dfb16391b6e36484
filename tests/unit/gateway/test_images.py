"""Images and uploads: every endpoint against the fake storage RPC, and the
upload's transfer (gateway.transfer) to a real local HTTP server."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway import transfer
from gateway.api.images import MULTIPART_ALLOWANCE
from gateway.rpc import ServiceUnavailable
from services.common.errors import DomainError
from tests.conftest import free_port
from tests.unit.gateway.conftest import (
    APIKEY,
    BEARER,
    FILES_SECRET,
    UNVERIFIED_ID,
    UNVERIFIED_TOKEN,
    USER_ID,
)

OTHER = {"Authorization": f"Bearer {UNVERIFIED_TOKEN}"}  # another (authenticated) user
MAX_BYTES = 200_000
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(150_000)
IMAGE_FIELDS = {"id", "kind", "content_type", "size", "width", "height", "sha256", "visibility",
                "public_id",
                "job_id", "created_at", "expires_at", "url"}
PUBLIC_FIELDS = {"id", "kind", "content_type", "size", "width", "height", "created_at", "expires_at",
                 "url"}


def error_of(response) -> dict:
    return response.get_json()["error"]


def multipart(data: bytes, filename: str = "photo.png", content_type: str = "image/png",
              field: str = "file") -> dict:
    return {"data": {field: (io.BytesIO(data), filename, content_type)},
            "content_type": "multipart/form-data"}


# ------------------------------------------------------------ a local HTTP server


class Sink:
    """Records what PUT requests deliver; answers ``status`` after ``delay``."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        self.delay = 0.0
        self.done = threading.Event()
        self.on_body = None  # (path, body) -> None

    def reset(self):
        self.requests.clear()
        self.status, self.delay, self.on_body = 200, 0.0, None
        self.done.clear()


# The server classes come by `from http.server import ...`, not as `http.server.X`:
# once eventlet.wsgi is imported (the services' health endpoint, by tests collected
# later), eventlet's inject() has left its green copy of the module as the `http`
# package's `server` attribute, and a server built from that copy stalls in a
# plain thread (requests hang, bodies are read late).
@pytest.fixture(scope="module")
def sink_server():
    sink = Sink()

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):
            try:
                length = int(self.headers.get("Content-Length", "-1"))
                body = self.rfile.read(length) if length >= 0 else b""
                record = {"path": self.path, "headers": dict(self.headers), "body": body,
                          "complete": len(body) == length}
                sink.requests.append(record)
                if not record["complete"]:
                    return
                if sink.on_body:
                    sink.on_body(self.path, body)
                time.sleep(sink.delay)
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            finally:
                sink.done.set()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sink, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def sink(sink_server):
    sink, base = sink_server
    sink.reset()
    sink.base = base
    return sink


# ------------------------------------------------------------ apps


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "objects-root"


@pytest.fixture
def client(make_app, storage, root):
    """The fs backend's setup: FILES.ROOT shared with (fake) storage."""
    storage.files_root = root
    app = make_app(FILES={"ROOT": str(root), "URL_SECRET": FILES_SECRET}, UPLOAD_MAX_BYTES=MAX_BYTES)
    return app.test_client()


@pytest.fixture
def remote_client(make_app, storage, sink):
    """The s3 setup: no FILES.ROOT, upload slots are URLs of another server."""
    storage.slot_url = sink.base + "/bucket/staging/{upload_id}?X-Amz-Signature=abc"
    sink.on_body = lambda path, body: storage.staged.__setitem__(path.split("?")[0].rsplit("/", 1)[1],
                                                                  body)
    return make_app(UPLOAD_MAX_BYTES=MAX_BYTES).test_client()


# ------------------------------------------------------------ POST /v1/uploads (fs: written directly)


def test_upload_through_the_fs_slot(client, storage, root, monkeypatch):
    def no_http(*args, **kwargs):
        raise AssertionError("the gateway must not call itself over HTTP")

    monkeypatch.setattr(transfer, "put_file", no_http)
    # the client's filename and content type are not trusted
    response = client.post("/v1/uploads", headers=BEARER,
                           **multipart(PNG, filename="evil.html", content_type="text/html"))
    assert response.status_code == 201, response.get_json()
    image = response.get_json()
    assert set(image) == IMAGE_FIELDS
    assert (image["kind"], image["content_type"], image["size"], image["visibility"]) == (
        "upload", "image/png", len(PNG), "private")
    assert image["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert response.headers["Cache-Control"] == "no-store"

    ((args, _),) = storage.called("create_upload_slot")
    assert args == (USER_ID,)
    ((finish_args, _),) = storage.called("finish_upload")
    assert finish_args[0] == USER_ID and uuid.UUID(finish_args[1])
    # the staged file was consumed by storage; no temporary file is left over
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_upload_refuses_unknown_multipart_fields(client, storage):
    data = {"file": (io.BytesIO(PNG), "a.png", "image/png"), "extra": "42"}
    response = client.post("/v1/uploads", headers=BEARER, data=data,
                           content_type="multipart/form-data")
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["fields"] == {"extra": ["Unknown field."]}
    assert storage.called("create_upload_slot") == []


def test_upload_with_an_api_key(client, storage):
    assert client.post("/v1/uploads", headers=APIKEY, **multipart(PNG)).status_code == 201


def test_oversized_body_is_refused_before_any_rpc(client, auth, storage):
    big = b"\x89PNG\r\n\x1a\n" + b"x" * (MAX_BYTES + MULTIPART_ALLOWANCE)
    for headers in (BEARER, {}):
        response = client.post("/v1/uploads", headers=headers, **multipart(big))
        assert response.status_code == 413
        assert error_of(response) == {"code": "payload_too_large",
                                      "message": f"the file is larger than {MAX_BYTES} bytes",
                                      "details": {"max_bytes": MAX_BYTES}}
    assert auth.calls == [] and storage.calls == []


def test_file_over_the_limit_within_the_multipart_allowance(client, storage):
    response = client.post("/v1/uploads", headers=BEARER, **multipart(b"x" * (MAX_BYTES + 1)))
    assert response.status_code == 413
    assert error_of(response)["details"] == {"max_bytes": MAX_BYTES}
    assert storage.calls == []


def test_chunked_body_past_the_limit(client, storage):
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"x" * (MAX_BYTES + MULTIPART_ALLOWANCE) \
        + f"\r\n--{boundary}--\r\n".encode()
    response = client.post("/v1/uploads", headers=BEARER, input_stream=io.BytesIO(body),
                           content_type=f"multipart/form-data; boundary={boundary}",
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413
    assert error_of(response)["details"] == {"max_bytes": MAX_BYTES}
    assert storage.calls == []


def test_uploads_larger_than_the_json_cap_are_fine(make_app, storage, root):
    storage.files_root = root
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(3 * 1024 * 1024)
    client = make_app(FILES={"ROOT": str(root), "URL_SECRET": FILES_SECRET},
                      UPLOAD_MAX_BYTES=4 * 1024 * 1024).test_client()
    response = client.post("/v1/uploads", headers=BEARER, **multipart(data))
    assert response.status_code == 201
    assert response.get_json()["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kwargs", [
    multipart(PNG, field="image"),
    {"data": {"file": "not a file part"}, "content_type": "multipart/form-data"},
    {"json": {"file": "aGVsbG8="}},
    {},
])
def test_missing_file_field(client, storage, kwargs):
    response = client.post("/v1/uploads", headers=BEARER, **kwargs)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert "file" in error["details"]["fields"]
    assert storage.calls == []


def test_empty_file(client, storage):
    response = client.post("/v1/uploads", headers=BEARER, **multipart(b""))
    assert response.status_code == 400
    assert error_of(response)["details"]["fields"] == {"file": ["The file is empty."]}
    assert storage.calls == []


def test_upload_needs_authentication(client, storage):
    response = client.post("/v1/uploads", **multipart(PNG))
    assert response.status_code == 401
    assert storage.calls == []


def test_storage_refusal_is_passed_through(client, storage):
    response = client.post("/v1/uploads", headers=BEARER, **multipart(b"GIF89a not allowed here"))
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


def test_storage_unavailable(client, storage):
    storage.fail_with["create_upload_slot"] = ServiceUnavailable()
    response = client.post("/v1/uploads", headers=BEARER, **multipart(PNG))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


def test_file_contents_are_never_logged(client, caplog):
    secret = b"\x89PNG\r\n\x1a\n" + b"SECRET-PIXELS" * 100
    caplog.set_level("DEBUG")
    assert client.post("/v1/uploads", headers=BEARER, **multipart(secret)).status_code == 201
    assert "SECRET-PIXELS" not in caplog.text
    assert all("SECRET-PIXELS" not in str(vars(r)) for r in caplog.records)


# ------------------------------------------------------------ POST /v1/uploads (remote slot)


def test_upload_streams_to_a_remote_slot(remote_client, storage, sink):
    response = remote_client.post("/v1/uploads", headers=BEARER, **multipart(PNG))
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["sha256"] == hashlib.sha256(PNG).hexdigest()
    (put,) = sink.requests
    assert put["body"] == PNG and put["complete"]
    assert put["headers"]["Content-Length"] == str(len(PNG))
    assert put["headers"]["Content-Type"] == "application/octet-stream"  # the slot's, not the client's
    upload_id = storage.called("finish_upload")[0][0][1]
    assert put["path"] == f"/bucket/staging/{upload_id}?X-Amz-Signature=abc"


def test_a_failed_remote_transfer_is_503(remote_client, storage, sink):
    sink.status = 500
    response = remote_client.post("/v1/uploads", headers=BEARER, **multipart(PNG))
    assert response.status_code == 503
    assert error_of(response)["code"] == "service_unavailable"
    assert storage.called("finish_upload") == []


def test_an_unreachable_slot_is_503(remote_client, storage):
    storage.slot_url = f"http://127.0.0.1:{free_port()}/bucket/staging/x"
    response = remote_client.post("/v1/uploads", headers=BEARER, **multipart(PNG))
    assert response.status_code == 503
    assert storage.called("finish_upload") == []


def test_a_slot_smaller_than_the_file_is_413(remote_client, storage, sink):
    storage.slot_max_bytes = 1000
    response = remote_client.post("/v1/uploads", headers=BEARER, **multipart(PNG))
    assert response.status_code == 413
    assert error_of(response)["details"] == {"max_bytes": 1000}
    assert sink.requests == [] and storage.called("finish_upload") == []


# ------------------------------------------------------------ gateway.transfer


def test_transfer_delivers_every_byte(sink):
    data = os.urandom(3 * 1024 * 1024 + 17)
    transfer.put_file(sink.base + "/t/one", io.BytesIO(data), len(data), max_bytes=len(data),
                      headers={"Content-Type": "image/png", "Content-Length": "1"})
    (put,) = sink.requests
    assert put["complete"] and put["body"] == data
    assert put["headers"]["Content-Length"] == str(len(data))
    assert put["headers"]["Content-Type"] == "image/png"
    assert "Transfer-Encoding" not in put["headers"]


def test_transfer_sends_from_the_current_position(sink):
    source = io.BytesIO(b"headerpayload")
    source.seek(6)
    transfer.put_file(sink.base + "/t/pos", source, 7, max_bytes=100)
    assert sink.requests[0]["body"] == b"payload"


def test_transfer_refuses_a_declared_size_past_the_limit(sink):
    with pytest.raises(DomainError) as caught:
        transfer.put_file(sink.base + "/t/big", io.BytesIO(b"x" * 101), 101, max_bytes=100)
    assert (caught.value.status, caught.value.code, caught.value.details) == (
        413, "payload_too_large", {"max_bytes": 100})
    assert sink.requests == []


def test_transfer_aborts_a_source_longer_than_declared(sink):
    data = b"x" * 1_000_000
    with pytest.raises(DomainError) as caught:
        transfer.put_file(sink.base + "/t/grows", io.BytesIO(data + b"more"), len(data),
                          max_bytes=2_000_000)
    assert caught.value.status == 413
    assert sink.done.wait(5)
    # the receiver never got a whole body
    assert all(not r["complete"] for r in sink.requests)


def test_transfer_aborts_a_source_shorter_than_declared(sink):
    with pytest.raises(ServiceUnavailable):
        transfer.put_file(sink.base + "/t/short", io.BytesIO(b"x" * 10), 20, max_bytes=100)
    assert sink.done.wait(5)
    assert [r["complete"] for r in sink.requests] == [False]


@pytest.mark.parametrize("status, expected", [(403, 503), (500, 503), (413, 413)])
def test_transfer_maps_the_answer(sink, status, expected):
    sink.status = status
    with pytest.raises(DomainError) as caught:
        transfer.put_file(sink.base + "/t/status", io.BytesIO(b"abc"), 3, max_bytes=10)
    assert caught.value.status == expected


def test_transfer_gives_up_on_a_silent_receiver(sink):
    sink.delay = 3
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        transfer.put_file(sink.base + "/t/slow", io.BytesIO(b"abc"), 3, max_bytes=10,
                          timeout=(1, 0.3))
    assert time.monotonic() - started < 2


def test_transfer_logs_no_signature(sink, caplog):
    sink.status = 500
    caplog.set_level("DEBUG", logger="gateway.transfer")
    with pytest.raises(ServiceUnavailable):
        transfer.put_file(sink.base + "/t/x?X-Amz-Signature=topsecret", io.BytesIO(b"abc"), 3,
                          max_bytes=10)
    assert "answered 500" in caplog.text and "topsecret" not in caplog.text


# ------------------------------------------------------------ GET /v1/images


def test_list_shows_only_the_callers_images(client, storage):
    job = str(uuid.uuid4())
    mine = [storage.add(USER_ID), storage.add(USER_ID, kind="output", job_id=job)]
    storage.add(UNVERIFIED_ID)
    response = client.get("/v1/images", headers=BEARER)
    assert response.status_code == 200
    body = response.get_json()
    assert [i["id"] for i in body["items"]] == [mine[1]["id"], mine[0]["id"]]
    assert body["next_cursor"] is None
    assert all(set(i) == IMAGE_FIELDS for i in body["items"])
    assert response.headers["Cache-Control"] == "no-store"

    response = client.get(f"/v1/images?kind=output&job_id={job}&limit=5&cursor=abc", headers=BEARER)
    assert [i["id"] for i in response.get_json()["items"]] == [mine[1]["id"]]
    assert storage.called("list_objects")[-1] == (
        (USER_ID, {"kind": "output", "job_id": job, "limit": 5, "cursor": "abc"}), {})
    assert storage.called("list_objects")[0] == ((USER_ID, {"limit": 20}), {})


@pytest.mark.parametrize("query", ["kind=export", "kind=nope", "job_id=12", "limit=0", "limit=101",
                                   "limit=x"])
def test_list_rejects_bad_queries(client, storage, query):
    response = client.get(f"/v1/images?{query}", headers=BEARER)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"
    assert storage.calls == []


# ------------------------------------------------------------ /v1/images/{id}


def test_get_one_image_with_its_url(client, storage):
    image = storage.add(USER_ID)
    response = client.get(f"/v1/images/{image['id']}", headers=BEARER)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == IMAGE_FIELDS
    assert body["url"] == image["url"] and "/v1/files/objects/" in body["url"]
    assert storage.called("get_object") == [((USER_ID, image["id"]), {})]


def test_content_redirects_to_the_url(client, storage):
    image = storage.add(USER_ID)
    response = client.get(f"/v1/images/{image['id']}/content", headers=BEARER)
    assert response.status_code == 302
    assert response.headers["Location"] == image["url"]
    assert response.headers["Cache-Control"] == "no-store"


def test_patch_visibility(client, storage):
    image = storage.add(USER_ID)
    response = client.patch(f"/v1/images/{image['id']}", headers=BEARER, json={"visibility": "public"})
    assert response.status_code == 200
    assert response.get_json()["visibility"] == "public"
    assert storage.called("set_visibility") == [((USER_ID, image["id"], {"visibility": "public"}), {})]


@pytest.mark.parametrize("body", [{}, {"visibility": "friends"}, {"visibility": "public", "x": 1}])
def test_patch_rejects_bad_bodies(client, storage, body):
    image = storage.add(USER_ID)
    response = client.patch(f"/v1/images/{image['id']}", headers=BEARER, json=body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"
    assert storage.called("set_visibility") == []


def test_delete(client, storage):
    image = storage.add(USER_ID)
    response = client.delete(f"/v1/images/{image['id']}", headers=BEARER)
    assert response.status_code == 204 and response.data == b""
    assert storage.called("delete_object") == [((USER_ID, image["id"]), {})]
    assert client.get(f"/v1/images/{image['id']}", headers=BEARER).status_code == 404


def owner_only_requests(image_id: str):
    return [("GET", f"/v1/images/{image_id}", {}),
            ("GET", f"/v1/images/{image_id}/content", {}),
            ("PATCH", f"/v1/images/{image_id}", {"json": {"visibility": "public"}}),
            ("DELETE", f"/v1/images/{image_id}", {})]


def test_another_users_image_is_404_everywhere(client, storage):
    image = storage.add(USER_ID)
    for method, path, kwargs in owner_only_requests(image["id"]):
        response = client.open(path, method=method, headers=OTHER, **kwargs)
        assert response.status_code == 404, (method, path)
        assert error_of(response)["code"] == "not_found"
    # the service was asked as the other user, and nothing changed
    assert {args[0] for n, args, _ in storage.calls} == {UNVERIFIED_ID}
    assert storage.objects[image["id"]]["visibility"] == "private"
    assert not storage.objects[image["id"]]["deleted"]


def test_unknown_and_malformed_ids_are_404(client, storage):
    for image_id in (str(uuid.uuid4()), "not-a-uuid", "1", "../images"):
        for method, path, kwargs in owner_only_requests(image_id):
            response = client.open(path, method=method, headers=BEARER, **kwargs)
            assert response.status_code == 404, (method, path)
    # malformed ids never reach the service: only the four requests with a UUID did
    assert len(storage.calls) == 4
    assert all(uuid.UUID(args[1]) for _, args, _ in storage.calls)


def test_image_endpoints_need_authentication(client, storage):
    image = storage.add(USER_ID)
    for method, path, kwargs in [*owner_only_requests(image["id"]), ("GET", "/v1/images", {})]:
        response = client.open(path, method=method, **kwargs)
        assert response.status_code == 401, (method, path)
    assert storage.calls == []


# ------------------------------------------------------------ /v1/public/images/{id}


def test_public_image_without_authentication(client, storage, auth):
    image = storage.add(USER_ID, visibility="public", job_id=str(uuid.uuid4()))
    response = client.get(f"/v1/public/images/{image['public_id']}")
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == PUBLIC_FIELDS  # no owner, no job, no sha256
    assert body["id"] == image["public_id"] != image["id"]
    assert USER_ID not in body["url"] and image["id"] not in body["url"]
    assert response.headers["Cache-Control"] == "no-store"
    assert auth.calls == []
    assert storage.called("get_public_object") == [((image["public_id"],), {})]


def test_private_unknown_and_object_ids_are_404_on_the_public_route(client, storage):
    private = storage.add(USER_ID)
    public = storage.add(USER_ID, visibility="public")
    for image_id in (private["id"], public["id"], str(uuid.uuid4()), "nope"):
        response = client.get(f"/v1/public/images/{image_id}")
        assert response.status_code == 404
        assert error_of(response)["code"] == "not_found"


# ------------------------------------------------------------ OpenAPI


def test_openapi_documents_the_upload_as_multipart(client):
    doc = client.get("/v1/openapi.json").get_json()
    upload = doc["paths"]["/v1/uploads"]["post"]
    assert upload["requestBody"]["content"]["multipart/form-data"]["schema"] == {
        "$ref": "#/components/schemas/UploadForm"}
    assert doc["components"]["schemas"]["UploadForm"]["properties"]["file"]["format"] == "binary"
    assert upload["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ImageObject"}
    assert upload["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
    assert "security" not in doc["paths"]["/v1/public/images/{public_id}"]["get"]
    assert "302" in doc["paths"]["/v1/images/{image_id}/content"]["get"]["responses"]
    files = doc["paths"]["/v1/files/{key}"]
    assert "security" not in files["get"] and "security" not in files["put"]
