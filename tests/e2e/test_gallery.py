"""Uploads and the gallery through the whole stack (fs storage backend, files
served by the gateway under signed URLs)."""

from __future__ import annotations

import io
import urllib.parse
import uuid

import pytest
import requests
from PIL import Image

from tests.e2e.stack import verified_login

pytestmark = pytest.mark.e2e

GPS_IFD = 0x8825


def jpeg_with_gps() -> bytes:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[GPS_IFD] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    return out.getvalue()


def upload(stack, token, data: bytes, filename="photo.jpg", content_type="image/jpeg"):
    return stack.call("POST", "/v1/uploads", token=token,
                      files={"file": (filename, data, content_type)})


@pytest.fixture(scope="module")
def users(stack):
    return verified_login(stack)[2], verified_login(stack)[2]


def test_upload_strips_location_and_lives_in_the_gallery(stack, users):
    token, other = users
    original = jpeg_with_gps()
    assert Image.open(io.BytesIO(original)).getexif().get(GPS_IFD)

    r = upload(stack, token, original, filename="holiday.png", content_type="image/png")
    assert r.status_code == 201, r.text
    image = r.json()
    assert (image["kind"], image["content_type"], image["width"], image["height"]) == \
        ("upload", "image/jpeg", 64, 48)
    assert image["visibility"] == "private" and image["expires_at"] > image["created_at"]

    listed = stack.call("GET", "/v1/images", token=token, params={"kind": "upload"}).json()
    assert image["id"] in [i["id"] for i in listed["items"]]

    detail = stack.call("GET", f"/v1/images/{image['id']}", token=token).json()
    stored = requests.get(detail["url"], timeout=10)
    assert stored.status_code == 200
    assert stored.headers["Content-Type"] == detail["content_type"]
    assert not Image.open(io.BytesIO(stored.content)).getexif()  # no EXIF, no GPS
    redirect = stack.call("GET", f"/v1/images/{image['id']}/content", token=token, allow_redirects=False)
    assert redirect.status_code == 302 and "/v1/files/" in redirect.headers["Location"]

    # another user sees nothing of it
    for method, path in (("GET", f"/v1/images/{image['id']}"), ("GET", f"/v1/images/{image['id']}/content"),
                         ("PATCH", f"/v1/images/{image['id']}"), ("DELETE", f"/v1/images/{image['id']}")):
        kwargs = {"json": {"visibility": "public"}} if method == "PATCH" else {}
        r = stack.call(method, path, token=other, **kwargs)
        assert r.status_code == 404, (method, path, r.text)
    assert image["id"] not in [i["id"] for i in stack.call("GET", "/v1/images", token=other).json()["items"]]

    # public, then private again
    assert image["public_id"] is None
    assert stack.call("GET", f"/v1/public/images/{image['id']}").status_code == 404
    r = stack.call("PATCH", f"/v1/images/{image['id']}", token=token, json={"visibility": "public"})
    assert r.status_code == 200 and r.json()["visibility"] == "public"
    public_id = r.json()["public_id"]
    assert stack.call("GET", f"/v1/public/images/{image['id']}").status_code == 404  # not by id
    public = stack.call("GET", f"/v1/public/images/{public_id}")
    public_url = public.json()["url"]
    assert public.status_code == 200 and requests.get(public_url, timeout=10).status_code == 200
    stack.call("PATCH", f"/v1/images/{image['id']}", token=token, json={"visibility": "private"})
    assert stack.call("GET", f"/v1/public/images/{public_id}").status_code == 404
    assert requests.get(public_url, timeout=10).status_code == 404  # its signed URL too

    # deletion removes the bytes
    assert stack.call("DELETE", f"/v1/images/{image['id']}", token=token).status_code == 204
    assert requests.get(detail["url"], timeout=10).status_code == 404
    assert stack.call("GET", f"/v1/images/{image['id']}", token=token).status_code == 404
    assert not [p for p in stack.objects_dir.rglob("*") if p.is_file() and image["id"] in str(p)]


@pytest.mark.parametrize("data, status, code", [
    (b"just some text, not an image", 415, "unsupported_media_type"),
    (jpeg_with_gps()[:300], 400, "invalid_image"),
    (b"\x00" * 2_100_000, 413, "payload_too_large"),
])
def test_bad_uploads_are_refused_and_nothing_is_kept(stack, users, data, status, code):
    token, _ = users
    before = stack.call("GET", "/v1/images", token=token, params={"limit": 100}).json()["items"]
    r = upload(stack, token, data)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert stack.call("GET", "/v1/images", token=token, params={"limit": 100}).json()["items"] == before


def test_tampered_or_foreign_file_urls_are_refused(stack, users):
    token, _ = users
    image = upload(stack, token, jpeg_with_gps()).json()
    url = stack.call("GET", f"/v1/images/{image['id']}", token=token).json()["url"]
    tampered = url.replace("signature=", "signature=0")
    assert requests.get(tampered, timeout=10).status_code == 403
    assert requests.put(url, data=b"overwrite", timeout=10).status_code == 403  # a GET URL cannot upload
    assert stack.call("GET", f"/v1/images/{uuid.uuid4()}", token=token).status_code == 404
    assert stack.call("GET", "/v1/images/not-a-uuid", token=token).status_code == 404


def test_two_public_images_of_one_user_share_nothing_and_name_nobody(stack, users):
    token, _ = users
    me = stack.call("GET", "/v1/me", token=token).json()
    user_id = me.get("id") or me["user"]["id"]
    ids = [upload(stack, token, jpeg_with_gps()).json()["id"] for _ in range(2)]
    answers = []
    for image_id in ids:
        made = stack.call("PATCH", f"/v1/images/{image_id}", token=token,
                          json={"visibility": "public"}).json()
        public = stack.call("GET", f"/v1/public/images/{made['public_id']}")
        assert public.status_code == 200, public.text
        answers.append((image_id, made["public_id"], public.json()))
    fixed = {"", "v1", "files", "public", "images"}
    components = []
    for image_id, public_id, body in answers:
        page = f"{stack.base_url}/v1/public/images/{public_id}"
        for text in (page, body["url"], body["id"]):
            for needle in (user_id, uuid.UUID(user_id).hex, image_id, uuid.UUID(image_id).hex):
                assert needle not in text, (needle, text)
        split = urllib.parse.urlsplit(body["url"])
        query = urllib.parse.parse_qsl(split.query)
        components.append(({*split.path.split("/"), *page.split("/")[3:]} - fixed,
                           {value for name, value in query if name not in ("expires", "content_type")}))
        assert requests.get(body["url"], timeout=10).status_code == 200
    (paths_a, query_a), (paths_b, query_b) = components
    assert not paths_a & paths_b, (paths_a, paths_b)
    assert not query_a & query_b, (query_a, query_b)
