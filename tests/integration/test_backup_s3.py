"""``darkroom-ops backup`` with PostgreSQL databases and an S3 object store
(the compose setup): the bucket is mirrored through the storage backend
into the set and restored into a fresh bucket and fresh databases; an
object's bytes never appear in the set in plain text."""

from __future__ import annotations

import base64
import io
import os

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from ops import cli as cli_module
from services.common.contracts.privacy import PART_SERVICES
from services.common.db import normalise_url
from services.common.migrations import SERVICES_DIR, upgrade
from services.storage.backends.s3 import S3Backend


def backend_for(s3, bucket: str) -> S3Backend:
    return S3Backend(s3.endpoint, s3.access_key, s3.secret_key, bucket, region=s3.region,
                     secure=s3.secure)


def point_at(monkeypatch, make_database, s3, bucket: str, label: str) -> dict[str, str]:
    urls = {}
    for service in PART_SERVICES:
        urls[service] = make_database(f"{label}_{service}")
        monkeypatch.setenv(f"{service.upper()}_DATABASE_URL", urls[service])
    for name, value in {"STORAGE_BACKEND": "s3", "S3_ENDPOINT": s3.endpoint,
                        "S3_ACCESS_KEY": s3.access_key, "S3_SECRET_KEY": s3.secret_key,
                        "S3_BUCKET": bucket, "S3_REGION": s3.region,
                        "S3_SECURE": str(s3.secure).lower()}.items():
        monkeypatch.setenv(name, value)
    return urls


def test_backup_and_restore_through_postgres_and_s3(monkeypatch, make_database, s3_endpoint,
                                                     tmp_path):
    monkeypatch.delenv("DARKROOM_ENV", raising=False)
    monkeypatch.setenv("BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    source_bucket = s3_endpoint.bucket_name("backup-source")
    urls = point_at(monkeypatch, make_database, s3_endpoint, source_bucket, "source")
    for service, url in urls.items():
        upgrade(SERVICES_DIR / service / "migrations", url)
    engine = create_engine(normalise_url(urls["billing"]))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE drill (note text)"))
        conn.execute(text("INSERT INTO drill VALUES ('kept')"))
    engine.dispose()
    source = backend_for(s3_endpoint, source_bucket)
    source.ensure_ready(31)
    picture = os.urandom(50_000) + b"ada@example.com"
    source.put("objects/owner/picture", io.BytesIO(picture), len(picture), "image/png")
    source.put("objects/owner/empty", io.BytesIO(b""), 0, "image/png")

    runner = CliRunner()
    taken = runner.invoke(cli_module.cli, ["backup", "run"])
    assert taken.exit_code == 0, taken.output
    assert "6 databases, 2 objects" in taken.output
    for path in (tmp_path / "backups").rglob("*.enc"):
        assert b"ada@example.com" not in path.read_bytes()
    verified = runner.invoke(cli_module.cli, ["backup", "verify", "--json"])
    assert verified.exit_code == 0, verified.output
    assert '"objects": 2' in verified.output and "archive entries" in verified.output

    # a fresh stack: new databases, a bucket that does not exist yet
    target_bucket = s3_endpoint.bucket_name("backup-target")
    restored_urls = point_at(monkeypatch, make_database, s3_endpoint, target_bucket, "target")
    restored = runner.invoke(cli_module.cli, ["backup", "restore", "--yes"])
    assert restored.exit_code == 0, restored.output
    target = backend_for(s3_endpoint, target_bucket)
    with target.open("objects/owner/picture") as fh:
        assert fh.read() == picture
    with target.open("objects/owner/empty") as fh:
        assert fh.read() == b""
    engine = create_engine(normalise_url(restored_urls["billing"]))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT note FROM drill")).scalar() == "kept"
        heads = conn.execute(text("SELECT count(*) FROM alembic_version")).scalar()
    engine.dispose()
    assert heads == 1
