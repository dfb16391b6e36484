"""Retention purge throughput against S3.

Baseline: deleting N objects with the raw ``minio`` client's ``remove_objects``
(bulk DeleteObjects, 1000 keys per request): the floor for any purge.
Measured: the storage service's purge, ``retention.purge_batch`` in a loop
(each batch one transaction: lock and tombstone the rows ``FOR UPDATE SKIP
LOCKED``, bulk delete their keys through the s3 backend, write the audit row
and the ``storage.objects_purged`` event to the outbox, commit) on N expired
objects, in batches of the service's default ``STORAGE_PURGE_BATCH_SIZE``.

Both run against the same in-process moto S3 server over HTTP, in the same
run, warmed up first and timed with the garbage collector off. The objects are
put straight into the server's in-memory store (uploading 20,000 objects over
HTTP takes a minute and measures nothing), so the rounds are cheap: ROUNDS
rounds alternate purge and raw on fresh objects, and the figures are the
medians (a busy 2-core machine moves single timings by +-30%). A SQLite
database (``DARKROOM_BENCH_STORAGE_DATABASE_URL`` for another one, e.g. a
local PostgreSQL database). Prints objects/s for both and their ratio
(target >= 0.8).
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import tempfile
import time
import uuid
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
ROUNDS = int(os.environ.get("DARKROOM_BENCH_PURGE_ROUNDS", "5"))
OWNERS = 100
WARMUP = 2000
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


def put_direct(bucket: str, keys: list[str]) -> None:
    """Put objects straight into the in-process moto server's store (the
    bucket was created over HTTP; the deletes measured go over HTTP)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    store = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in keys:
        store.put_object(bucket, key, PAYLOAD)


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
    put_direct(backend.bucket, [r["key"] for r in rows])


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


def purge_round(engine, backend: S3Backend, settings: StorageSettings, n: int) -> tuple[float, int]:
    """Seconds to purge ``n`` freshly expired objects, and the batches it took;
    checks that no row and no byte is left."""
    seed_expired(engine, backend, n)
    batches: list[int] = []
    seconds = timed(lambda: batches.append(purge_all(engine, backend, settings)))
    with Session(engine) as db:
        live = db.scalar(select(func.count()).select_from(StoredObject)
                         .where(StoredObject.deleted_at.is_(None)))
    left = count_keys(backend, "objects/")
    assert live == 0 and left == 0, f"purge left {live} rows and {left} objects"
    return seconds, batches[0]


def raw_round(backend: S3Backend, n: int) -> float:
    """Seconds for the raw client to delete ``n`` objects of the same shape."""
    keys = new_keys(n)
    put_direct(backend.bucket, keys)
    seconds = timed(lambda: remove_raw(backend, keys))
    assert count_keys(backend, "objects/") == 0
    return seconds


def main() -> None:
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        settings = StorageSettings(backend="s3", s3_endpoint=endpoint, s3_access_key="bench",
                                   s3_secret_key="bench-secret", s3_bucket="darkroom-bench-purge")
        if os.environ.get("DARKROOM_BENCH_PURGE_BATCH_SIZE"):
            settings.purge_batch_size = int(os.environ["DARKROOM_BENCH_PURGE_BATCH_SIZE"])
        backend = S3Backend(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                            settings.s3_bucket, region=settings.s3_region)
        backend.ensure_ready(settings.safety_expiry_days())
        url = os.environ.get("DARKROOM_BENCH_STORAGE_DATABASE_URL") or f"sqlite:///{tmp}/storage.db"
        upgrade(SERVICES_DIR / "storage" / "migrations", url)
        engine = make_engine(url)

        # warm up both paths (connections, statement caches, the server)
        purge_round(engine, backend, settings, WARMUP)
        raw_round(backend, WARMUP)

        purge_times, raw_times, ratios = [], [], []
        for _ in range(ROUNDS):  # alternate, so a slow spell of the machine hits both
            seconds, batches = purge_round(engine, backend, settings, OBJECTS)
            purge_times.append(seconds)
            raw_times.append(raw_round(backend, OBJECTS))
            ratios.append(raw_times[-1] / purge_times[-1])
        engine.dispose()

    purge_rate = OBJECTS / statistics.median(purge_times)
    raw_rate = OBJECTS / statistics.median(raw_times)
    print(f"{OBJECTS} expired objects of {len(PAYLOAD)} bytes, {ROUNDS} rounds, on an in-process "
          f"moto S3 server; database {url.split(':', 1)[0]}")
    print(f"  raw minio remove_objects          {raw_rate:8.0f} objects/s   "
          f"(median of {', '.join(f'{t:.2f}' for t in raw_times)} s)")
    print(f"  purge, {batches} batches of {settings.purge_batch_size:<5d}  {purge_rate:8.0f} objects/s   "
          f"(median of {', '.join(f'{t:.2f}' for t in purge_times)} s)")
    print(f"  ratio purge/raw: {purge_rate / raw_rate:.2f} (target >= 0.8); per round "
          f"{', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
