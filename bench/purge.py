"""Retention purge throughput against S3.

Baseline: deleting N objects with the raw ``minio`` client's ``remove_objects``
(bulk DeleteObjects, 1000 keys per request): the floor for any purge.
Measured: the storage service's purge, ``retention.purge_batch`` in a loop
(each batch one transaction: lock and tombstone the rows ``FOR UPDATE SKIP
LOCKED``, bulk delete their keys through the s3 backend, write the audit row
and the ``storage.objects_purged`` event to the outbox, commit) on N expired
objects. Same in-process moto S3 server, same run, both paths warmed up first
and timed with the garbage collector off; a SQLite database
(``DARKROOM_BENCH_STORAGE_DATABASE_URL`` for another one, e.g. a local
PostgreSQL database). Prints objects/s for both and their ratio (target >= 0.8).
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

from minio.deleteobjects import DeleteObject
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from services.common import contracts
from services.common import outbox as outbox_rows
from services.common.db import make_engine
from services.common.ids import new_id, utcnow
from services.common.migrations import SERVICES_DIR, upgrade
from services.storage import retention
from services.storage.backends.s3 import S3Backend
from services.storage.models import StoredObject, outbox
from services.storage.settings import StorageSettings
from tests.conftest import free_port

OBJECTS = int(os.environ.get("DARKROOM_BENCH_PURGE_OBJECTS", "20000"))
OWNERS = 100
UPLOAD_THREADS = 16
# Objects per purge batch (two DeleteObjects requests of 1000 keys, the most S3 takes in one).
# What each batch costs besides the deletes (its UPDATE, audit row, event, commit) is about
# 10 ms for 1000 objects: with batches of 500 the ratio is about 0.55, 1000 about 0.77, 2000
# about 0.82 on a 2-core VM (DARKROOM_BENCH_PURGE_BATCH_SIZE to try others).
BATCH_SIZE = int(os.environ.get("DARKROOM_BENCH_PURGE_BATCH_SIZE", "2000"))
WARMUP = 1000
PAYLOAD = b"darkroom-bench!!"  # 16 bytes per object


@contextmanager
def moto_server():
    """An in-process S3 server on a free port, as the tests' ``s3_endpoint`` fixture starts it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def upload(backend: S3Backend, keys: list[str]) -> None:
    def put(key: str) -> None:
        backend.client.put_object(backend.bucket, key, _Bytes(PAYLOAD), len(PAYLOAD))

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(put, keys))


class _Bytes:
    """A tiny readable stream (minio reads ``length`` bytes from it)."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, size: int = -1) -> bytes:
        chunk, self.data = (self.data, b"") if size < 0 else (self.data[:size], self.data[size:])
        return chunk


def new_keys(n: int) -> list[str]:
    owners = [new_id() for _ in range(OWNERS)]
    return [f"objects/{owners[i % OWNERS]}/{new_id()}" for i in range(n)]


def seed_expired(engine, backend: S3Backend, n: int) -> None:
    """``n`` committed objects that expired a minute ago: rows and bytes."""
    now = utcnow()
    rows = []
    for key in new_keys(n):
        _, owner, oid = key.split("/")
        rows.append({
            "id": uuid.UUID(oid), "owner_id": uuid.UUID(owner), "kind": "output",
            "status": "committed", "content_type": "image/png", "size": len(PAYLOAD),
            "sha256": "0" * 64, "visibility": "private", "key": key, "created_at": now,
            "committed_at": now, "expires_at": now - timedelta(minutes=1),
        })
    with engine.begin() as conn:
        for start in range(0, n, 5000):
            conn.execute(insert(StoredObject), rows[start:start + 5000])
    upload(backend, [r["key"] for r in rows])


def outbox_dispatch(db: Session):
    """What the service's EventPublisher does inside the transaction: the event
    row goes to the outbox (publishing after the commit is not measured)."""

    def dispatch(event_type: str, data: dict) -> str:
        body = contracts.make_event(f"storage.{event_type}", data)
        outbox_rows.enqueue(db, outbox, outbox_rows.OutboxRow(body["event_id"], event_type, body, {}))
        return body["event_id"]

    return dispatch


def count_keys(backend: S3Backend, prefix: str) -> int:
    return sum(1 for _ in backend.list(prefix))


def timed(fn) -> float:
    """Seconds ``fn()`` takes, with the garbage collector off as ``timeit`` does
    (the in-process S3 server's garbage would otherwise land in either run)."""
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started
    finally:
        gc.enable()


def purge_all(engine, backend: S3Backend, settings: StorageSettings) -> int:
    """The purge as the service's timer runs it: batches until none is left."""
    batches = 0
    with Session(engine) as db:
        dispatch = outbox_dispatch(db)
        while retention.purge_batch(db, backend, settings, utcnow(), None, dispatch) is not None:
            batches += 1
    return batches


def remove_raw(backend: S3Backend, keys: list[str]) -> None:
    errors = list(backend.client.remove_objects(backend.bucket, (DeleteObject(k) for k in keys)))
    assert not errors, errors[:3]


def main() -> None:
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        settings = StorageSettings(backend="s3", s3_endpoint=endpoint, s3_access_key="bench",
                                   s3_secret_key="bench-secret", s3_bucket="darkroom-bench-purge",
                                   purge_batch_size=BATCH_SIZE)
        backend = S3Backend(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                            settings.s3_bucket, region=settings.s3_region)
        backend.ensure_ready(settings.safety_expiry_days())
        url = os.environ.get("DARKROOM_BENCH_STORAGE_DATABASE_URL") or f"sqlite:///{tmp}/storage.db"
        upgrade(SERVICES_DIR / "storage" / "migrations", url)
        engine = make_engine(url)

        # warm up both paths (connections, statement caches, the server)
        seed_expired(engine, backend, WARMUP)
        purge_all(engine, backend, settings)
        keys = new_keys(WARMUP)
        upload(backend, keys)
        remove_raw(backend, keys)

        # measured: the purge
        seed_started = time.perf_counter()
        seed_expired(engine, backend, OBJECTS)
        seeded = time.perf_counter() - seed_started
        batches: list[int] = []
        purge_seconds = timed(lambda: batches.append(purge_all(engine, backend, settings)))
        with Session(engine) as db:
            live = db.scalar(select(func.count()).select_from(StoredObject)
                             .where(StoredObject.deleted_at.is_(None)))
        left = count_keys(backend, "objects/")
        assert live == 0 and left == 0, f"purge left {live} rows and {left} objects"

        # baseline: the raw client, same server, same number and shape of keys
        keys = new_keys(OBJECTS)
        upload(backend, keys)
        raw_seconds = timed(lambda: remove_raw(backend, keys))
        assert count_keys(backend, "objects/") == 0
        engine.dispose()

    purge_rate, raw_rate = OBJECTS / purge_seconds, OBJECTS / raw_seconds
    print(f"{OBJECTS} expired objects of {len(PAYLOAD)} bytes on an in-process moto S3 server "
          f"(seeded in {seeded:.1f} s), database {url.split(':', 1)[0]}")
    print(f"  raw minio remove_objects            {raw_rate:8.0f} objects/s   ({raw_seconds:.2f} s)")
    print(f"  purge, {batches[0]} batches of {settings.purge_batch_size:<5d}   "
          f"{purge_rate:8.0f} objects/s   ({purge_seconds:.2f} s)")
    print(f"  ratio purge/raw: {purge_rate / raw_rate:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
