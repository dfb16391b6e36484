"""The export archive: a JSON file per service, the media streamed in from
storage, big parts read back from their stored zip, a README of what each
file holds and what was left out, and the archive stored as an export object."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
import zipfile

import pytest
import requests

from services.common import privacy_parts as parts
from services.common.errors import DomainError, not_found
from services.privacy import archive
from tests.unit.privacy.conftest import NOW

USER = str(uuid.uuid4())
REQUEST = str(uuid.uuid4())


class Response:
    def __init__(self, status: int, body: bytes = b""):
        self.status_code = status
        self.content = body

    def iter_content(self, size):
        for start in range(0, len(self.content), 3):  # small chunks: streaming, not one read
            yield self.content[start:start + 3]

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeHttp:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.put: dict[str, bytes] = {}
        self.fail_get = False

    def get(self, url, stream=False, timeout=None):
        if self.fail_get:
            raise requests.ConnectionError("refused")
        if url not in self.files:
            return Response(404)
        return Response(200, self.files[url])

    def request(self, method, url, data=None, headers=None, timeout=None):
        body = data.read() if hasattr(data, "read") else data
        assert int(headers["Content-Length"]) == len(body)
        self.put[url] = body
        return Response(200)


class FakeStorage:
    """storage's RPC surface: objects of one user, by id."""

    def __init__(self, objects: dict[str, dict]):
        self.objects = objects
        self.slots = []

    def get_source(self, owner_id, object_id):
        obj = self.objects.get(object_id)
        if owner_id != USER or obj is None or obj.get("expired"):
            raise not_found("object")
        return {**obj, "url": f"http://internal/{object_id}"}

    def create_output_slot(self, owner_id, payload):
        self.slots.append(payload)
        return {"object_id": "archive-1", "method": "PUT", "url": "http://internal/archive-1",
                "headers": {}}

    def commit_objects(self, owner_id, object_ids):
        return {"items": [{"id": object_ids[0], "size": self.slots[-1]["size"],
                           "expires_at": "2026-11-29T12:00:00Z"}]}


def setup():
    upload, output, gone, export = (str(uuid.uuid4()) for _ in range(4))
    objects = {
        upload: {"id": upload, "kind": "upload", "content_type": "image/png"},
        output: {"id": output, "kind": "output", "content_type": "video/mp4"},
        gone: {"id": gone, "kind": "output", "content_type": "image/png", "expired": True},
        export: {"id": export, "kind": "export", "content_type": "application/zip"},
    }
    big = {"ledger": [{"n": i} for i in range(50)]}
    objects["part-1"] = {"id": "part-1", "kind": "export"}
    files = {f"http://internal/{upload}": b"PNG-bytes", f"http://internal/{output}": b"MP4-bytes",
             "http://internal/part-1": parts.zipped(json.dumps(big).encode())}
    storage_part = archive.Part("storage", {"objects": list(objects.values())[:4]}, None,
                                "your files", [{"what": "earlier exports", "why": "listed only"}])
    billing_part = archive.Part("billing", None, "part-1", "your credits", [])
    auth_part = archive.Part("auth", {"account": {"email": "ada@example.com"}}, None,
                             "your account", [{"what": "your password", "why": "hashed"}])
    return (FakeStorage(objects), FakeHttp(files), [auth_part, billing_part, storage_part],
            {"upload": upload, "output": output, "gone": gone, "big": big})


def test_the_archive_holds_every_part_the_media_and_a_readme(tmp_path):
    storage, http, part_list, ids = setup()
    built = archive.build(storage, http, REQUEST, USER, part_list, NOW, str(tmp_path), 5)
    try:
        with zipfile.ZipFile(built.path) as zf:
            names = set(zf.namelist())
            assert names == {"auth.json", "billing.json", "storage.json", "README.md",
                             f"media/uploads/{ids['upload']}.png",
                             f"media/outputs/{ids['output']}.mp4"}
            assert zf.read(f"media/outputs/{ids['output']}.mp4") == b"MP4-bytes"
            auth = json.loads(zf.read("auth.json"))
            assert auth == {"service": "auth", "exported_at": "2026-11-22T12:00:00Z",
                            "about": "your account",
                            "withheld": [{"what": "your password", "why": "hashed"}],
                            "data": {"account": {"email": "ada@example.com"}}}
            assert json.loads(zf.read("billing.json"))["data"] == ids["big"]  # from its zip
            readme = zf.read("README.md").decode()
        assert built.media == 2 and built.size == os.path.getsize(built.path)
        with open(built.path, "rb") as fh:
            assert built.sha256 == hashlib.sha256(fh.read()).hexdigest()
        assert REQUEST in readme and "`billing.json`: your credits" in readme
        assert "`media/uploads/` (1)" in readme and "`media/outputs/` (1)" in readme
        assert "- auth: your password — hashed" in readme
        assert f"output {ids['gone']} — it has expired" in readme
    finally:
        archive.discard(built)
    assert not os.path.exists(built.path)


def test_the_archive_is_stored_as_an_export_object(tmp_path):
    storage, http, part_list, _ = setup()
    built = archive.build(storage, http, REQUEST, USER, part_list, NOW, str(tmp_path), 5)
    stored = archive.store(storage, http, USER, REQUEST, built, 5)
    assert storage.slots == [{"job_id": REQUEST, "content_type": "application/zip",
                              "size": built.size, "sha256": built.sha256, "kind": "export"}]
    assert hashlib.sha256(http.put["http://internal/archive-1"]).hexdigest() == built.sha256
    assert stored["id"] == "archive-1"
    archive.discard(built)


def test_a_download_that_fails_leaves_no_file_behind(tmp_path):
    storage, http, part_list, _ = setup()
    http.fail_get = True
    with pytest.raises(archive.ArchiveError):
        archive.build(storage, http, REQUEST, USER, part_list, NOW, str(tmp_path), 5)
    assert list(tmp_path.iterdir()) == []


def test_a_storage_error_other_than_not_found_stops_the_build(tmp_path):
    storage, http, part_list, _ = setup()

    def down(owner_id, object_id):
        raise DomainError("service_unavailable", "storage is down", 503)

    storage.get_source = down
    with pytest.raises(DomainError):
        archive.build(storage, http, REQUEST, USER, part_list[2:], NOW, str(tmp_path), 5)
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_stored_part_is_an_archive_error(tmp_path):
    storage, http, part_list, _ = setup()
    http.files["http://internal/part-1"] = b"not a zip"
    with pytest.raises(archive.ArchiveError):
        archive.build(storage, http, REQUEST, USER, part_list, NOW, str(tmp_path), 5)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("other.json", "{}")
    http.files["http://internal/part-1"] = zipped.getvalue()
    with pytest.raises(archive.ArchiveError):
        archive.build(storage, http, REQUEST, USER, part_list, NOW, str(tmp_path), 5)
