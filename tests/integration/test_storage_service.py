"""The storage service through its real entrypoint (`nameko run`, the Procfile's
"storage" line) against RabbitMQ and PostgreSQL, once per backend: ``fs`` in a
temporary directory and ``s3`` on the test S3 endpoint (moto in process unless
configured), with the same tests. Called over RPC like the gateway calls it;
its events captured from the ``storage.events`` exchange.

Bytes reach the slots as a client's would: an HTTP PUT to the presigned URL
(s3), or, for fs, whose URLs point at the gateway's /v1/files route (not
running here), a check of the URL's signature and a write straight into the
service's directory. Objects are made to expire by editing their rows.
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
from kombu import Connection, Queue
from nameko.standalone.events import event_dispatcher, get_event_exchange
from nameko.standalone.rpc import ClusterRpcProxy
from PIL import Image
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from services.common import contracts, signing
from services.common.db import make_engine
from services.common.errors import DomainError
from services.common.ids import new_id, utcnow
from services.common.migrations import SERVICES_DIR, upgrade
from services.storage import retention
from services.storage.backends import make_backend
from services.storage.models import PurgeBatch, StoredObject
from services.storage.settings import StorageSettings
from tests.conftest import base_env, free_port, wait_for
from tests.sealed import plaintext
from tests.unit.events import Events
from tests.unit.storage.fakes import MemoryBackend, StoreDown

pytestmark = pytest.mark.integration

URL_SECRET = "storage-test-url-secret"
PUBLIC_BASE_URL = "http://gateway.test:8000"
UPLOAD_MAX_BYTES = 1_000_000
MAX_IMAGE_PIXELS = 4_000_000
URL_TTL_SECONDS = 60
ORPHAN_GRACE_SECONDS = 2
PURGE_BATCH_SIZE = 2


class EventTap:
    """Every event the storage service publishes, from a queue bound before anything happens."""

    def __init__(self, amqp_uri: str):
        self.connection = Connection(amqp_uri)
        exchange = get_event_exchange("storage", {})
        self.queue = Queue(f"test-storage-events-{uuid.uuid4().hex[:8]}", exchange=exchange,
                           routing_key="#", exclusive=True, auto_delete=True)(self.connection.channel())
        exchange(self.queue.channel).declare()
        self.queue.declare()

    def drain(self, event_type: str) -> list[dict]:
        seen = []
        while (message := self.queue.get(no_ack=True)) is not None:
            if message.delivery_info["routing_key"] == event_type:
                seen.append(message.payload)
        return seen

    def close(self):
        self.connection.release()


@pytest.fixture(scope="module", params=["fs", "s3"])
def storage(request, make_vhost, make_database, start_process, tmp_path_factory):
    kind = request.param
    amqp_uri, _ = make_vhost(f"storage-{kind}")
    db_url = make_database(f"storage_{kind}")
    port = free_port()
    env = dict(
        AMQP_URI=amqp_uri, STORAGE_DATABASE_URL=db_url, STORAGE_METRICS_PORT=port,
        STORAGE_BACKEND=kind, STORAGE_URL_SECRET=URL_SECRET, PUBLIC_BASE_URL=PUBLIC_BASE_URL,
        STORAGE_UPLOAD_MAX_BYTES=UPLOAD_MAX_BYTES, STORAGE_MAX_IMAGE_PIXELS=MAX_IMAGE_PIXELS,
        STORAGE_URL_TTL_SECONDS=URL_TTL_SECONDS, STORAGE_ORPHAN_GRACE_SECONDS=ORPHAN_GRACE_SECONDS,
        STORAGE_PURGE_BATCH_SIZE=PURGE_BATCH_SIZE, OUTBOX_RELAY_INTERVAL_SECONDS=1,
    )
    root = tmp_path_factory.mktemp(f"objects-{kind}")
    if kind == "fs":
        env["STORAGE_FS_ROOT"] = str(root)
    else:
        s3 = request.getfixturevalue("s3_endpoint")
        env.update(S3_ENDPOINT=s3.url, S3_ACCESS_KEY=s3.access_key, S3_SECRET_KEY=s3.secret_key,
                   S3_BUCKET=s3.bucket_name("storage"), S3_REGION=s3.region)
    settings = StorageSettings.from_config({"STORAGE": {
        "BACKEND": kind, "FS_ROOT": str(root), "URL_SECRET": URL_SECRET,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL, "S3_ENDPOINT": env.get("S3_ENDPOINT"),
        "S3_ACCESS_KEY": env.get("S3_ACCESS_KEY"), "S3_SECRET_KEY": env.get("S3_SECRET_KEY"),
        "S3_BUCKET": env.get("S3_BUCKET"), "S3_REGION": env.get("S3_REGION"),
    }})
    tap = EventTap(amqp_uri)
    proc = start_process("storage", base_env(**env))
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    engine = make_engine(db_url)
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=30) as rpc:
        wait_for(lambda: rpc.storage.ping(), 30, 0.2, "storage RPC")
        yield SimpleNamespace(kind=kind, rpc=rpc.storage, backend=make_backend(settings), root=root,
                              engine=engine, tap=tap, proc=proc, amqp_uri=amqp_uri)
    engine.dispose()
    tap.close()
    proc.stop()


# ---------------------------------------------------------------- helpers


def refused(call, *args) -> DomainError:
    with pytest.raises(DomainError) as info:
        call(*args)
    return info.value


def image_bytes(fmt: str = "PNG", size=(48, 32), exif: Image.Exif | None = None) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (20, 120, 220)).save(out, fmt, **({"exif": exif} if exif else {}))
    return out.getvalue()


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    return exif


def signed_key(url: str, method: str) -> str:
    """The key of a fs URL, after checking it is this service's signed URL for ``method``."""
    assert url.startswith(PUBLIC_BASE_URL + signing.FILES_PREFIX), url
    parts = urlsplit(url)
    key = unquote(parts.path[len(signing.FILES_PREFIX):])
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    max_bytes = query.get("max_bytes")
    assert (max_bytes is not None) == (method == "PUT")  # upload URLs carry their size cap
    content_type = query.get("content_type")
    assert (content_type is not None) == (method == "GET")  # downloads carry the object's type
    assert signing.verify(URL_SECRET, method, key, query["expires"], query["signature"],
                          max_bytes=max_bytes, content_type=content_type)
    other = "GET" if method == "PUT" else "PUT"
    assert not signing.verify(URL_SECRET, other, key, query["expires"], query["signature"],
                              max_bytes=max_bytes, content_type=content_type)
    return key


def put_to_slot(st, slot: dict, data: bytes) -> None:
    if st.kind == "fs":
        path = Path(st.root) / signed_key(slot["url"], "PUT")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        requests.put(slot["url"], data=data, headers=slot["headers"], timeout=10).raise_for_status()


def download(st, url: str) -> bytes:
    if st.kind == "fs":
        return plaintext(Path(st.root) / signed_key(url, "GET"))
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return response.content


def upload(st, owner: str, data: bytes) -> dict:
    slot = st.rpc.create_upload_slot(owner)
    put_to_slot(st, slot, data)
    return st.rpc.finish_upload(owner, slot["upload_id"])


def output_slot(st, owner: str, data: bytes, job_id: str | None = None, **declared) -> dict:
    return st.rpc.create_output_slot(owner, {
        "job_id": job_id or str(new_id()), "content_type": "image/png", "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "width": 48, "height": 32, **declared,
    })


def output(st, owner: str, job_id: str | None = None, data: bytes | None = None) -> dict:
    data = data or image_bytes()
    slot = output_slot(st, owner, data, job_id)
    put_to_slot(st, slot, data)
    [obj] = st.rpc.commit_objects(owner, [slot["object_id"]])["items"]
    return obj


def key_of(owner: str, object_id: str) -> str:
    return f"objects/{owner}/{object_id}"


def row(st, object_id: str) -> StoredObject | None:
    with Session(st.engine) as session:
        return session.get(StoredObject, uuid.UUID(object_id))


def set_expiry(st, object_ids: list[str], expires_at: datetime) -> None:
    with st.engine.begin() as conn:
        conn.execute(text("UPDATE objects SET expires_at = :t WHERE id = ANY(:ids)"),
                     {"t": expires_at, "ids": [uuid.UUID(i) for i in object_ids]})


def owner_keys(st, owner: str) -> list[str]:
    return [info.key for info in st.backend.list(f"objects/{owner}/")]


def new_owner() -> str:
    return str(new_id())


# ---------------------------------------------------------------- uploads


def test_ping(storage):
    assert storage.rpc.ping() == {"service": "storage", "ok": True}


@pytest.mark.parametrize("fmt,content_type", [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                              ("WEBP", "image/webp")])
def test_upload_is_validated_re_encoded_and_stored(storage, fmt, content_type):
    owner = new_owner()
    slot = storage.rpc.create_upload_slot(owner)
    assert (slot["method"], slot["max_bytes"]) == ("PUT", UPLOAD_MAX_BYTES)
    assert slot["url"].startswith(PUBLIC_BASE_URL if storage.kind == "fs" else "http")
    put_to_slot(storage, slot, image_bytes(fmt, exif=gps_exif()))
    obj = storage.rpc.finish_upload(owner, slot["upload_id"])

    assert (obj["kind"], obj["content_type"], obj["width"], obj["height"]) == ("upload", content_type, 48, 32)
    assert (obj["visibility"], obj["job_id"]) == ("private", None)
    created = datetime.fromisoformat(obj["created_at"])
    assert datetime.fromisoformat(obj["expires_at"]) - created == timedelta(days=30)
    stored = download(storage, obj["url"])
    assert (len(stored), hashlib.sha256(stored).hexdigest()) == (obj["size"], obj["sha256"])
    with Image.open(io.BytesIO(stored)) as im:
        assert im.format == fmt and not im.getexif()  # EXIF and GPS gone
    assert storage.backend.stat(f"staging/{slot['upload_id']}") is None
    assert owner_keys(storage, owner) == [key_of(owner, obj["id"])]
    assert storage.rpc.get_object(owner, obj["id"])["sha256"] == obj["sha256"]


def truncated_png() -> bytes:
    data = image_bytes(size=(300, 300))
    return data[: len(data) // 2]


def pixel_bomb() -> bytes:
    data = bytearray(image_bytes(size=(1, 1)))
    data[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR claims 30000 x 30000
    return bytes(data)


@pytest.mark.parametrize("data,code,status", [
    (b"%PDF-1.7 disguised as photo.png" + b"\0" * 64, "unsupported_media_type", 415),
    (truncated_png(), "invalid_image", 400),
    (pixel_bomb(), "image_too_large", 422),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * (UPLOAD_MAX_BYTES + 1), "payload_too_large", 413),
])
def test_bad_uploads_are_refused_and_nothing_is_kept(storage, data, code, status):
    owner = new_owner()
    slot = storage.rpc.create_upload_slot(owner)
    put_to_slot(storage, slot, data)
    error = refused(storage.rpc.finish_upload, owner, slot["upload_id"])
    assert (error.code, error.status) == (code, status)
    assert owner_keys(storage, owner) == []
    assert storage.backend.stat(f"staging/{slot['upload_id']}") is None
    with Session(storage.engine) as session:
        assert session.scalar(select(func.count()).select_from(StoredObject)
                              .where(StoredObject.owner_id == uuid.UUID(owner))) == 0


def test_finishing_an_empty_or_unknown_slot(storage):
    owner = new_owner()
    slot = storage.rpc.create_upload_slot(owner)
    assert refused(storage.rpc.finish_upload, owner, slot["upload_id"]).code == "upload_missing"
    assert refused(storage.rpc.finish_upload, owner, str(new_id())).status == 404
    assert refused(storage.rpc.create_upload_slot, "not-a-user").code == "invalid_request"


def test_signed_urls_are_short_lived(storage):
    owner = new_owner()
    obj = upload(storage, owner, image_bytes())
    url = obj["url"]
    query = parse_qs(urlsplit(url).query)
    if storage.kind == "fs":
        key, expires, sig = signed_key(url, "GET"), int(query["expires"][0]), query["signature"][0]
        assert abs(expires - (time.time() + URL_TTL_SECONDS)) < 5
        kind = query["content_type"][0]
        assert kind == obj["content_type"]
        assert not signing.verify(URL_SECRET, "GET", key, expires, sig, now=expires + 1,
                                  content_type=kind)
        assert not signing.verify(URL_SECRET, "GET", key_of(owner, str(new_id())), expires, sig,
                                  content_type=kind)
    else:
        assert query["X-Amz-Expires"] == [str(URL_TTL_SECONDS)]
        assert urlsplit(url).path.endswith(key_of(owner, obj["id"]))


# ---------------------------------------------------------------- outputs


def test_output_slot_commit_checks_size_and_sha256(storage):
    owner, job = new_owner(), str(new_id())
    data = image_bytes()
    slot = output_slot(storage, owner, data, job)
    assert slot["object_id"] == slot["upload_id"] and slot["max_bytes"] == len(data)
    assert refused(storage.rpc.get_object, owner, slot["object_id"]).status == 404  # not committed

    error = refused(storage.rpc.commit_objects, owner, [slot["object_id"]])
    assert (error.code, error.status, error.details["reason"]) == ("object_mismatch", 409, "missing")
    put_to_slot(storage, slot, data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    error = refused(storage.rpc.commit_objects, owner, [slot["object_id"]])
    assert (error.code, error.details["reason"]) == ("object_mismatch", "sha256")
    put_to_slot(storage, slot, data + b"trailing")
    assert refused(storage.rpc.commit_objects, owner, [slot["object_id"]]).details["reason"] == "size"
    assert row(storage, slot["object_id"]).status == "pending"

    put_to_slot(storage, slot, data)
    [obj] = storage.rpc.commit_objects(owner, [slot["object_id"]])["items"]
    assert (obj["id"], obj["kind"], obj["job_id"], obj["sha256"]) == (
        slot["object_id"], "output", job, hashlib.sha256(data).hexdigest())
    assert download(storage, obj["url"]) == data
    assert storage.rpc.commit_objects(owner, [slot["object_id"]])["items"][0]["id"] == obj["id"]


# ---------------------------------------------------------------- owners, visibility, list, delete


def test_every_call_hides_other_owners_objects(storage):
    owner, intruder = new_owner(), new_owner()
    obj = output(storage, owner)
    slot = storage.rpc.create_upload_slot(owner)
    put_to_slot(storage, slot, image_bytes())
    pending = output_slot(storage, owner, image_bytes())
    put_to_slot(storage, pending, image_bytes())

    for call, args in [
        (storage.rpc.get_object, (intruder, obj["id"])),
        (storage.rpc.set_visibility, (intruder, obj["id"], {"visibility": "public"})),
        (storage.rpc.delete_object, (intruder, obj["id"])),
        (storage.rpc.commit_objects, (intruder, [pending["object_id"]])),
        (storage.rpc.finish_upload, (intruder, slot["upload_id"])),
        (storage.rpc.get_public_object, (obj["id"],)),  # private
    ]:
        error = refused(call, *args)
        assert (error.code, error.status) == ("not_found", 404), call
    assert storage.rpc.list_objects(intruder, {})["items"] == []
    assert privacy_part(storage, "export", intruder)["data"] == {"objects": []}
    erased = privacy_part(storage, "erasure", intruder)
    assert (erased["objects_deleted"], erased["bytes_deleted"], erased["rows_deleted"]) == (0, 0, 0)
    assert storage.rpc.get_object(owner, obj["id"])["visibility"] == "private"
    assert storage.backend.stat(key_of(owner, obj["id"])) is not None
    assert row(storage, pending["object_id"]).status == "pending"
    assert storage.rpc.finish_upload(owner, slot["upload_id"])["kind"] == "upload"


def test_public_and_private_again(storage):
    owner = new_owner()
    obj, other = output(storage, owner), output(storage, owner)
    shown = storage.rpc.set_visibility(owner, obj["id"], {"visibility": "public"})
    assert shown["visibility"] == "public" and shown["public_id"]
    public = storage.rpc.get_public_object(shown["public_id"])
    assert set(public) == {"id", "kind", "content_type", "size", "width", "height", "created_at",
                           "expires_at", "url"}
    assert public["id"] == shown["public_id"]
    assert download(storage, public["url"]) == download(storage, obj["url"])
    # the public URL names neither the owner nor the object, nor anything another one names
    second = storage.rpc.get_public_object(
        storage.rpc.set_visibility(owner, other["id"], {"visibility": "public"})["public_id"])
    for view, source in ((public, obj), (second, other)):
        path = urlsplit(view["url"]).path
        assert owner not in view["url"] and source["id"] not in view["url"]
        assert view["id"] in path
    assert public["id"] not in second["url"] and second["id"] not in public["url"]
    assert refused(storage.rpc.get_public_object, obj["id"]).status == 404  # not by object id
    storage.rpc.set_visibility(owner, obj["id"], {"visibility": "private"})
    assert refused(storage.rpc.get_public_object, shown["public_id"]).status == 404
    with pytest.raises((FileNotFoundError, requests.HTTPError)):  # the copy is gone
        download(storage, public["url"])
    assert download(storage, obj["url"])  # the object itself is untouched
    assert refused(storage.rpc.set_visibility, owner, obj["id"], {"visibility": "secret"}).code == (
        "invalid_request")


def test_list_filters_and_pages(storage):
    owner, job = new_owner(), str(new_id())
    outputs = [output(storage, owner, job) for _ in range(3)]
    other = output(storage, owner)
    up = upload(storage, owner, image_bytes())

    everything = storage.rpc.list_objects(owner, {})
    assert [o["id"] for o in everything["items"]] == [up["id"], other["id"]] + [
        o["id"] for o in reversed(outputs)]
    assert everything["next_cursor"] is None and all(o["url"] for o in everything["items"])

    seen, cursor = [], None
    while True:
        page = storage.rpc.list_objects(owner, {"limit": 2, **({"cursor": cursor} if cursor else {})})
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [o["id"] for o in everything["items"]]

    by_job = storage.rpc.list_objects(owner, {"job_id": job})["items"]
    assert [o["id"] for o in by_job] == [o["id"] for o in reversed(outputs)]
    assert [o["id"] for o in storage.rpc.list_objects(owner, {"kind": "upload"})["items"]] == [up["id"]]
    assert len(storage.rpc.list_objects(owner, {"kind": "output"})["items"]) == 4
    for bad in ({"kind": "export"}, {"limit": 0}, {"cursor": "garbage!"}, {"owner": owner}):
        assert refused(storage.rpc.list_objects, owner, bad).code == "invalid_request"


def test_delete_removes_the_bytes(storage):
    owner = new_owner()
    obj = output(storage, owner)
    assert storage.rpc.delete_object(owner, obj["id"]) is None
    assert storage.backend.stat(key_of(owner, obj["id"])) is None
    assert row(storage, obj["id"]).deleted_at is not None
    assert refused(storage.rpc.get_object, owner, obj["id"]).status == 404
    assert refused(storage.rpc.delete_object, owner, obj["id"]).status == 404
    assert storage.rpc.list_objects(owner, {})["items"] == []


def test_sign_outputs_signs_the_owners_live_objects_only(storage):
    """A job's ``output_urls``: one call signs a page's outputs; another owner's,
    deleted or unknown objects are left out; the URLs download the bytes."""
    owner, data = new_owner(), image_bytes()
    first, second, deleted = output(storage, owner, data=data), output(storage, owner), \
        output(storage, owner)
    theirs = output(storage, new_owner())
    storage.rpc.delete_object(owner, deleted["id"])
    asked = [first["id"], theirs["id"], deleted["id"], str(new_id()), second["id"]]
    signed = storage.rpc.sign_outputs(owner, {"object_ids": asked})["items"]
    assert [item["id"] for item in signed] == [first["id"], second["id"]]
    expires = datetime.fromisoformat(signed[0]["url_expires_at"])
    assert abs(expires.timestamp() - (time.time() + URL_TTL_SECONDS)) < 5
    assert download(storage, signed[0]["url"]) == data
    too_many = {"object_ids": [str(new_id()) for _ in range(401)]}
    assert refused(storage.rpc.sign_outputs, owner, too_many).status == 400


def privacy_part(storage, kind: str, user: str) -> dict:
    """Storage's answer to a privacy request (``export`` or ``erasure``) for
    ``user``, asked by event as the privacy service asks it."""
    request_id = str(new_id())
    dispatch = event_dispatcher({"AMQP_URI": storage.amqp_uri})
    dispatch("privacy", f"{kind}_requested", contracts.make_event(
        f"privacy.{kind}_requested", {"request_id": request_id, "user_id": user,
                                      "services": ["storage"]}))
    answer = "export_part_ready" if kind == "export" else "erasure_completed"
    [event] = wait_for(lambda: [e for e in storage.tap.drain(answer)
                                if e["request_id"] == request_id], 15, 0.1, answer)
    return event


def test_export_and_erase_a_user(storage):
    owner = new_owner()
    objs = [output(storage, owner), upload(storage, owner, image_bytes("JPEG"))]
    exported = privacy_part(storage, "export", owner)["data"]["objects"]
    assert {o["id"] for o in exported} == {o["id"] for o in objs}
    assert all("url" not in o for o in exported)

    erased = privacy_part(storage, "erasure", owner)
    assert (erased["objects_deleted"], erased["bytes_deleted"]) == (
        2, sum(o["size"] for o in objs))
    assert erased["tables"]["objects"] == 2
    assert owner_keys(storage, owner) == []
    assert all(row(storage, o["id"]) is None for o in objs)
    assert privacy_part(storage, "export", owner)["data"] == {"objects": []}


# ---------------------------------------------------------------- retention


def test_plan_change_moves_expiry_of_existing_and_new_objects(storage):
    owner = new_owner()
    before = output(storage, owner)
    dispatch = event_dispatcher({"AMQP_URI": storage.amqp_uri})
    dispatch("billing", "plan_changed", contracts.make_event(
        "billing.plan_changed", {"user_id": owner, "plan": "studio", "retention_days": 400}))

    created = datetime.fromisoformat(before["created_at"])
    wait_for(lambda: datetime.fromisoformat(storage.rpc.get_object(owner, before["id"])["expires_at"])
             == created + timedelta(days=400), 15, 0.2, "the plan's retention")
    after = upload(storage, owner, image_bytes())
    assert (datetime.fromisoformat(after["expires_at"]) - datetime.fromisoformat(after["created_at"])
            == timedelta(days=400))
    if storage.kind == "s3":  # the safety lifecycle rule moved past the longest retention
        assert storage.backend.safety_expiry_days() == 401


def test_purge_deletes_exactly_the_expired_set(storage):
    owners = [new_owner(), new_owner()]
    objs = [output(storage, owners[i % 2]) for i in range(5)]
    expired, kept = objs[:3], objs[3:]
    now = utcnow()
    set_expiry(storage, [o["id"] for o in expired], now - timedelta(minutes=1))
    set_expiry(storage, [kept[0]["id"]], now + timedelta(hours=1))
    storage.tap.drain("objects_purged")
    expired_bytes = sum(o["size"] for o in expired)

    assert storage.rpc.purge_expired({"dry_run": True}) == {
        "dry_run": True, "batches": 2, "objects": 3, "bytes": expired_bytes}
    assert all(storage.backend.stat(key_of(o_owner, o["id"])) for o, o_owner in
               zip(objs, [owners[i % 2] for i in range(5)], strict=True))

    result = storage.rpc.purge_expired({})
    assert result == {"dry_run": False, "batches": 2, "objects": 3, "bytes": expired_bytes}

    for i, obj in enumerate(objs):
        gone = obj in expired
        assert (storage.backend.stat(key_of(owners[i % 2], obj["id"])) is None) == gone
        assert (row(storage, obj["id"]).deleted_at is not None) == gone
        if gone:
            assert refused(storage.rpc.get_object, owners[i % 2], obj["id"]).status == 404

    events = wait_for(lambda: storage.tap.drain("objects_purged") or None, 10, 0.1, "objects_purged")
    events += storage.tap.drain("objects_purged")
    assert sorted(i for e in events for i in e["object_ids"]) == sorted(o["id"] for o in expired)
    assert sum(e["count"] for e in events) == 3 and sum(e["bytes"] for e in events) == expired_bytes
    with Session(storage.engine) as session:
        audits = {str(a.id): a for a in session.scalars(select(PurgeBatch).where(
            PurgeBatch.id.in_([uuid.UUID(e["batch_id"]) for e in events])))}
    assert len(audits) == len(events) == 2
    for event in events:
        audit = audits[event["batch_id"]]
        assert (audit.reason, audit.objects, audit.bytes) == ("retention", event["count"], event["bytes"])

    assert storage.rpc.purge_expired({}) == {"dry_run": False, "batches": 0, "objects": 0, "bytes": 0}
    assert refused(storage.rpc.purge_expired, {"batch_size": 0}).code == "invalid_request"


def test_report_matches_the_rows(storage):
    output(storage, new_owner())
    report = storage.rpc.report()
    with Session(storage.engine) as session:
        live = session.execute(
            select(StoredObject.kind, func.count(), func.sum(StoredObject.size))
            .where(StoredObject.status == "committed", StoredObject.deleted_at.is_(None))
            .group_by(StoredObject.kind)).all()
        deleted = session.scalar(select(func.count()).select_from(StoredObject)
                                 .where(StoredObject.deleted_at.is_not(None)))
    assert report["by_kind"] == {k: {"objects": n, "bytes": b} for k, n, b in live}
    assert sum(b["objects"] for b in report["by_age_days"].values()) == sum(n for _, n, _ in live)
    assert report["by_age_days"]["0-7"]["objects"] >= 1
    assert report["deleted"] == {"objects": deleted}
    assert set(report["expired_pending"]) == {"objects", "bytes"}


def test_orphans_are_swept_after_the_grace_period(storage):
    owner = new_owner()
    kept = output(storage, owner)
    crashed = key_of(owner, str(new_id()))  # bytes without a row: a crash before the commit
    storage.backend.put(crashed, io.BytesIO(b"orphan"), 6, "image/png")
    abandoned = storage.rpc.create_upload_slot(owner)  # staged, never finished, then expired
    put_to_slot(storage, abandoned, image_bytes())
    with storage.engine.begin() as conn:
        conn.execute(text("UPDATE upload_slots SET expires_at = :t WHERE id = :id"),
                     {"t": utcnow() - timedelta(minutes=1), "id": uuid.UUID(abandoned["upload_id"])})
    open_slot = storage.rpc.create_upload_slot(owner)
    put_to_slot(storage, open_slot, image_bytes())
    never_committed = output_slot(storage, owner, image_bytes())
    put_to_slot(storage, never_committed, image_bytes())
    young = key_of(owner, str(new_id()))

    time.sleep(ORPHAN_GRACE_SECONDS + 0.5)
    storage.backend.put(young, io.BytesIO(b"young"), 5, "image/png")
    result = storage.rpc.sweep_orphans()

    for key in (crashed, f"staging/{abandoned['upload_id']}", key_of(owner, never_committed["object_id"])):
        assert storage.backend.stat(key) is None, key
    for key in (key_of(owner, kept["id"]), f"staging/{open_slot['upload_id']}", young):
        assert storage.backend.stat(key) is not None, key
    assert row(storage, never_committed["object_id"]).deleted_at is not None
    assert storage.rpc.get_object(owner, kept["id"])["id"] == kept["id"]
    assert result["objects"] >= 3
    with Session(storage.engine) as session:
        audit = session.get(PurgeBatch, uuid.UUID(result["batch_id"]))
    assert (audit.reason, audit.objects, audit.bytes) == ("orphan", result["objects"], result["bytes"])
    assert storage.rpc.finish_upload(owner, open_slot["upload_id"])["kind"] == "upload"


# ---------------------------------------------------------------- the purge on PostgreSQL


@pytest.fixture
def pg_engine(make_database):
    url = make_database("storage_purge")
    upgrade(SERVICES_DIR / "storage" / "migrations", url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def expired_rows(engine, n: int) -> list[StoredObject]:
    now = utcnow()
    rows = []
    with Session(engine, expire_on_commit=False) as session:
        for _ in range(n):
            oid, owner = new_id(), new_id()
            rows.append(StoredObject(
                id=oid, owner_id=owner, kind="output", status="committed", content_type="image/png",
                size=1, sha256="0" * 64, key=f"objects/{owner}/{oid}", created_at=now,
                committed_at=now, expires_at=now - timedelta(seconds=1)))
        session.add_all(rows)
        session.commit()
    return rows


def live_count(engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(StoredObject)
                              .where(StoredObject.deleted_at.is_(None)))


def test_concurrent_purges_skip_each_others_rows(pg_engine):
    """Two instances purging at once: the second skips the rows the first has
    locked (FOR UPDATE SKIP LOCKED), so no object is purged twice or skipped."""
    expired_rows(pg_engine, 6)
    settings, now = StorageSettings(purge_batch_size=3), utcnow()
    first, second = Session(pg_engine), Session(pg_engine)
    second.execute(text("SET lock_timeout = '5s'"))  # waiting for the first's rows fails the test
    inner: list = []

    class Interleaving(MemoryBackend):
        def delete_many(self, keys):
            # while the first instance holds its batch, the second one runs
            inner.append(retention.purge_batch(second, MemoryBackend(), settings, now, 10,
                                               Events("storage")))
            return super().delete_many(keys)

    try:
        outer = retention.purge_batch(first, Interleaving(), settings, now, 3, Events("storage"))
    finally:
        first.close()
        second.close()
    [concurrent] = inner
    assert (outer.objects, concurrent.objects) == (3, 3)
    assert not set(outer.object_ids) & set(concurrent.object_ids)
    assert live_count(pg_engine) == 0
    with Session(pg_engine) as session:
        assert session.scalar(select(func.count()).select_from(PurgeBatch)) == 2


def test_an_interrupted_purge_is_resumed(pg_engine):
    rows = expired_rows(pg_engine, 5)
    backend = MemoryBackend()
    for obj in rows:
        backend.add(obj.key)
    backend.raise_after = 2
    settings, events = StorageSettings(purge_batch_size=10), Events("storage")
    with Session(pg_engine) as session, pytest.raises(StoreDown):
        retention.purge_expired(session, backend, settings, utcnow(), events)
    assert len(backend.deleted) == 2 and live_count(pg_engine) == 5 and events.seen == []

    backend.raise_after = None
    with Session(pg_engine) as session:
        totals = retention.purge_expired(session, backend, settings, utcnow(), events)
    assert totals == {"dry_run": False, "batches": 1, "objects": 5, "bytes": 5}
    assert live_count(pg_engine) == 0 and backend.objects == {}
    [event] = events.of("objects_purged")
    assert sorted(event["object_ids"]) == sorted(str(o.id) for o in rows)
