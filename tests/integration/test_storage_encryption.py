"""Encryption at rest, with real parts: the storage service (its real
entrypoint, fs backend) never leaves a stored byte in clear on disk, refuses
to start with a missing or wrong key ring, and `darkroom-ops storage rekey`
rotates the master key; the s3 backend asks a real S3 endpoint (moto, or
MinIO) for server-side encryption on every object."""

from __future__ import annotations

import hashlib
import io
import uuid
from types import SimpleNamespace

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from PIL import Image

from services.storage.backends.fs import SignedFiles
from services.storage.backends.s3 import PROBE_KEY, SSE_HEADER, S3Backend
from services.storage.backends.sealed import HEADER_SIZE, KeyRing, new_key_entry
from tests.conftest import base_env, free_port, wait_for
from tests.integration.test_ops_users import ops
from tests.sealed import plaintext

pytestmark = pytest.mark.integration

URL_SECRET = "encryption-test-url-secret"
BASE = "http://gateway.test:8000"
MARKER = b"PLAINTEXT-MARKER-4c1d-nobody-may-read-this-on-disk"
K1 = new_key_entry("k1")
K2 = new_key_entry("k2")


# ------------------------------------------------------------------ the fs backend


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, tmp_path_factory):
    amqp_uri, _ = make_vhost("storage-encryption")
    root = tmp_path_factory.mktemp("sealed-objects")
    return SimpleNamespace(amqp_uri=amqp_uri, db_url=make_database("storage_encryption"),
                           root=root)


def storage_env(stack, keys: str, port: int) -> dict:
    return base_env(AMQP_URI=stack.amqp_uri, STORAGE_DATABASE_URL=stack.db_url,
                    STORAGE_METRICS_PORT=port, STORAGE_BACKEND="fs",
                    STORAGE_FS_ROOT=str(stack.root), STORAGE_URL_SECRET=URL_SECRET,
                    PUBLIC_BASE_URL=BASE, STORAGE_ENCRYPTION_KEYS=keys)


def start_storage(start_process, stack, keys: str):
    port = free_port()
    proc = start_process("storage", storage_env(stack, keys, port))
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    return proc


def refused_start(start_process, stack, keys: str) -> str:
    """The storage service's output when it exits instead of starting."""
    proc = start_process("storage", storage_env(stack, keys, free_port()))
    wait_for(lambda: not proc.alive(), 60, 0.2, "the storage service to refuse to start")
    return proc.logs()


def store_output(rpc, files: SignedFiles, owner: str, data: bytes) -> str:
    """What the generation service does through the gateway: an output slot,
    the bytes PUT to its /v1/files URL (written by SignedFiles, as the
    gateway does), then the commit, which checks size and sha256."""
    slot = rpc.create_output_slot(owner, {
        "kind": "output", "content_type": "video/mp4", "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "job_id": str(uuid.uuid4())})
    key = files.key_of_url(slot["url"], "PUT")
    assert key is not None
    files.write(key, io.BytesIO(data), len(data))
    (committed,) = rpc.commit_objects(owner, [slot["object_id"]])["items"]
    assert committed["size"] == len(data)
    return key


def every_file(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_encryption_at_rest_rotation_and_refusals(stack, start_process):
    files = SignedFiles(stack.root, URL_SECRET, BASE, keys=KeyRing.parse(K1))
    owner = str(uuid.uuid4())
    data = MARKER * 40_000  # 2 MB: many chunks
    proc = start_storage(start_process, stack, K1)
    with ClusterRpcProxy({"AMQP_URI": stack.amqp_uri}, timeout=30) as cluster:
        rpc = cluster.storage
        wait_for(lambda: rpc.ping(), 30, 0.2, "storage RPC")
        key = store_output(rpc, files, owner, data)
        # an upload too: staged through the gateway's write, re-encoded and stored by the service
        slot = rpc.create_upload_slot(owner)
        staged = files.key_of_url(slot["url"], "PUT")
        out = io.BytesIO()
        Image.new("RGB", (8, 8), (1, 2, 3)).save(out, "PNG")
        png = out.getvalue()
        files.write(staged, io.BytesIO(png), len(png))
        rpc.finish_upload(owner, slot["upload_id"])

    on_disk = every_file(stack.root)
    assert key in on_disk
    for name, raw in on_disk.items():
        assert raw.startswith(b"DRKSEAL\x01"), name  # every file sealed, none in clear
        assert MARKER[:12] not in raw and b"\x89PNG" not in raw, name
    assert plaintext(stack.root / key, files.keys) == data
    proc.stop()

    # a missing or wrong key ring: the service does not start, and says why
    logs = refused_start(start_process, stack, "")
    assert "STORAGE_ENCRYPTION_KEYS is empty" in logs
    logs = refused_start(start_process, stack, K2)
    assert "STORAGE_ENCRYPTION_KEYS lacks the master key 'k1'" in logs
    logs = refused_start(start_process, stack, "k1:" + K2.split(":")[1])
    assert "the master key 'k1' in STORAGE_ENCRYPTION_KEYS is not the key" in logs
    assert K2.split(":")[1] not in logs  # never a key in the logs

    # rotation: the new key first, rekey (the real CLI), then the old key removed
    rotating = storage_env(stack, f"{K2},{K1}", free_port())
    result = ops(rotating, "storage", "rekey")
    assert result.returncode == 0, result.stderr
    assert "re-wrapped" in result.stdout and "k1 may now be removed" in result.stdout
    assert "re-keying" in result.stderr  # the progress bar
    body = (stack.root / key).read_bytes()[HEADER_SIZE:]
    assert body == on_disk[key][HEADER_SIZE:]  # chunks untouched: only the header changed
    again = ops(rotating, "storage", "rekey")  # resumable: a rerun has nothing left to do
    assert again.returncode == 0 and "re-wrapped 0 files" in again.stdout, again.stdout

    start_storage(start_process, stack, K2)  # k1 gone: starts
    with ClusterRpcProxy({"AMQP_URI": stack.amqp_uri}, timeout=30) as cluster:
        rpc = cluster.storage
        wait_for(lambda: rpc.ping(), 30, 0.2, "storage RPC")
        listed = rpc.list_objects(owner, {})
        assert {item["size"] for item in listed["items"]} >= {len(data)}
    assert plaintext(stack.root / key, KeyRing.parse(K2)) == data


# ------------------------------------------------------------------ the s3 backend


def s3_backend(s3_endpoint, **kwargs) -> S3Backend:
    backend = S3Backend(s3_endpoint.endpoint, s3_endpoint.access_key, s3_endpoint.secret_key,
                        s3_endpoint.bucket_name("sse"), region=s3_endpoint.region,
                        secure=s3_endpoint.secure, part_size=5 * 1024 * 1024, **kwargs)
    backend.ensure_ready(31)
    return backend


def encryption_of(backend: S3Backend, key: str) -> dict[str, str]:
    stat = backend.client.stat_object(backend.bucket, key)
    return {k.lower(): v for k, v in (stat.metadata or {}).items() if "encryption" in k.lower()}


def test_s3_every_object_is_encrypted_server_side(s3_endpoint):
    backend = s3_backend(s3_endpoint)
    assert backend.client.get_bucket_encryption(backend.bucket).rule.sse_algorithm == "AES256"
    small, large = b"small object", b"L" * (6 * 1024 * 1024)
    backend.put("objects/o/small", io.BytesIO(small), len(small), "text/plain")
    backend.put("objects/o/large", io.BytesIO(large), len(large), "video/mp4")  # multipart
    backend.copy("objects/o/small", "public/copy")
    url, headers = backend.presigned_put("objects/o/presigned", 60, "image/png", 100)
    requests.put(url, data=b"\x89PNG presigned", headers=headers, timeout=10).raise_for_status()
    for key in ("objects/o/small", "objects/o/large", "public/copy", "objects/o/presigned"):
        assert encryption_of(backend, key).get(SSE_HEADER) == "AES256", key
    with backend.open("objects/o/large") as stream:
        assert stream.read() == large
    # the start probe (a key of its own per start) cleans up after itself
    assert not list(backend.client.list_objects(backend.bucket, prefix=PROBE_KEY.split("/")[0],
                                                recursive=True))


def test_s3_kms_uses_the_configured_key(s3_endpoint):
    # MinIO's KMS knows only the key it was started with (tests/conftest.py)
    key_id = "darkroom-test" if s3_endpoint.kind == "minio" else "darkroom-test-kms-key"
    backend = s3_backend(s3_endpoint, sse="kms", kms_key_id=key_id)
    backend.put("objects/o/k", io.BytesIO(b"kms"), 3, "text/plain")
    found = encryption_of(backend, "objects/o/k")
    assert found[SSE_HEADER] == "aws:kms"
    assert found["x-amz-server-side-encryption-aws-kms-key-id"].endswith(key_id)
