"""``darkroom-ops backup`` on a laptop stack (SQLite databases, the fs object
store): a set holds every database and object, encrypted; verify finds a
damaged file; check says how old the newest set is; restore brings the
databases and objects back; a production start refuses a placeholder key."""

from __future__ import annotations

import base64
import json
import os
import sqlite3

import pytest
from click.testing import CliRunner

from ops import cli as cli_module
from services.common.contracts.privacy import PART_SERVICES
from services.common.migrations import SERVICES_DIR, upgrade
from tests.sealed import plaintext


@pytest.fixture
def laptop(tmp_path, monkeypatch):
    for service in PART_SERVICES:
        url = f"sqlite:///{tmp_path / service}.db"
        monkeypatch.setenv(f"{service.upper()}_DATABASE_URL", url)
        upgrade(SERVICES_DIR / service / "migrations", url)
    objects = tmp_path / "objects"
    (objects / "objects" / "owner").mkdir(parents=True)
    (objects / "objects" / "owner" / "one").write_bytes(b"ada@example.com's picture")
    monkeypatch.setenv("STORAGE_FS_ROOT", str(objects))
    monkeypatch.setenv("BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.delenv("DARKROOM_ENV", raising=False)
    with sqlite3.connect(tmp_path / "auth.db") as db:
        db.execute("CREATE TABLE marker (address TEXT)")
        db.execute("INSERT INTO marker VALUES ('ada@example.com')")
    return tmp_path


def run(*args):
    return CliRunner().invoke(cli_module.cli, ["backup", *args])


def test_run_verify_check_restore(laptop):
    taken = run("run")
    assert taken.exit_code == 0, taken.output
    assert "6 databases, 1 objects" in taken.output
    (name,) = [p.name for p in (laptop / "backups").iterdir() if not p.name.startswith(".")]
    for path in (laptop / "backups" / name).rglob("*.enc"):
        assert b"ada@example.com" not in path.read_bytes()
    verified = run("verify")
    assert verified.exit_code == 0, verified.output
    assert "is complete and restorable" in verified.output
    assert all(f"{s}: restorable" in verified.output for s in PART_SERVICES)
    checked = run("check")
    assert checked.exit_code == 0 and "the newest backup set is 0.0 h old" in checked.output
    listed = run("list")
    assert name in listed.output and "newest" in listed.output

    # lose everything, restore
    for service in PART_SERVICES:
        (laptop / f"{service}.db").unlink()
    (laptop / "objects" / "objects" / "owner" / "one").unlink()
    refused = run("restore")
    assert refused.exit_code == 2 and "--yes" in refused.output
    restored = run("restore", "--yes")
    assert restored.exit_code == 0, restored.output
    restored_file = laptop / "objects" / "objects" / "owner" / "one"
    assert plaintext(restored_file) == b"ada@example.com's picture"
    assert b"ada@example.com" not in restored_file.read_bytes()  # sealed again, at rest
    with sqlite3.connect(laptop / "auth.db") as db:
        assert db.execute("SELECT address FROM marker").fetchall() == [("ada@example.com",)]


def test_verify_names_a_damaged_or_missing_file(laptop):
    assert run("run").exit_code == 0
    (name,) = [p for p in (laptop / "backups").iterdir() if not p.name.startswith(".")]
    dump = name / "databases" / "billing.enc"
    data = bytearray(dump.read_bytes())
    data[-5] ^= 1
    dump.write_bytes(bytes(data))
    (name / "objects" / "00000000.enc").unlink()
    verified = run("verify")
    assert verified.exit_code == 1
    assert "PROBLEM: billing: billing.enc: checksum does not match" in verified.output
    assert "PROBLEM: object objects/00000000.enc: 00000000.enc is missing" in verified.output
    assert "auth: restorable" in verified.output


def test_check_fails_when_the_newest_set_is_too_old(laptop):
    assert run("run").exit_code == 0
    (made,) = [p for p in (laptop / "backups").iterdir() if not p.name.startswith(".")]
    made.rename(made.with_name("20200101T000000Z"))
    result = run("check", "--max-age", "86400")
    assert result.exit_code == 1 and "h old (limit 24.0 h)" in result.output


def test_another_key_cannot_verify_or_restore(laptop, monkeypatch):
    assert run("run").exit_code == 0
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    for args in (("verify",), ("restore", "--yes")):
        result = run(*args)
        assert result.exit_code == 1
        assert "encrypted with another key" in result.output


def test_without_a_set_or_a_key(laptop, monkeypatch):
    assert run("check").exit_code == 1
    assert "no backup set" in run("verify").output
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", "")
    result = run("run")
    assert result.exit_code == 2 and "BACKUP_ENCRYPTION_KEY is not set" in result.output


def test_production_refuses_a_placeholder_key(laptop, monkeypatch):
    monkeypatch.setenv("DARKROOM_ENV", "production")
    for name, value in (("AMQP_URI", "amqp://darkroom:" + "x9" * 20 + "@rabbitmq:5672/"),
                        ("RABBIT_MANAGEMENT_URL", "http://darkroom:" + "x9" * 20 + "@rabbitmq:15672")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", "change-me-backup-encryption-key")
    result = run("run")
    assert result.exit_code == 2
    assert "BACKUP_ENCRYPTION_KEY" in result.output and "change-me" not in result.output


def test_an_erasure_log_that_cannot_be_read_stops_the_restore(laptop):
    assert run("run").exit_code == 0
    result = run("restore", "--yes", "--erasure-log-db", f"sqlite:///{laptop / 'empty.db'}")
    assert result.exit_code == 1
    assert "cannot read the erasure log of sqlite:///" in result.output


def test_restore_erases_again_a_user_erased_after_the_set(laptop):
    """Even with a job restored as running (no worker runs during a restore)."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from services.auth.models import User
    from services.common.config import config_path, load_config
    from services.common.engine import make_engine
    from services.common.ids import new_id, pseudonym, utcnow
    from services.generation.models import Job
    from services.privacy.models import ErasedSubject
    from services.privacy.settings import PrivacySettings

    now = utcnow()
    gone, kept = new_id(), new_id()

    def session(service):
        return Session(make_engine(f"sqlite:///{laptop / service}.db"))

    with session("auth") as db:
        for uid in (gone, kept):
            db.add(User(id=uid, email=f"{uid}@example.com", password_hash="x", plan="free",
                        created_at=now, updated_at=now))
        db.commit()
    with session("generation") as db:
        for uid, status in ((gone, "running"), (gone, "succeeded"), (kept, "running")):
            db.add(Job(id=new_id(), user_id=uid, type="text-to-image", status=status,
                       params={}, price=1, stage="render", created_at=now, updated_at=now))
        db.commit()
    assert run("run").exit_code == 0
    # erased after the set: the live privacy database remembers the keyed hash
    key = PrivacySettings.from_config(load_config(config_path("privacy"))).pseudonym_key
    with session("privacy") as db:
        db.add(ErasedSubject(subject=pseudonym(key, gone), erased_at=now))
        db.commit()

    restored = run("restore", "--yes")
    assert restored.exit_code == 0, restored.output
    assert "1 erased user(s) erased again" in restored.output
    with session("auth") as db:
        assert set(db.scalars(select(User.id))) == {kept}
    with session("generation") as db:
        assert db.scalar(select(func.count()).select_from(Job).where(Job.user_id == gone)) == 0
        assert db.scalar(select(Job.status).where(Job.user_id == kept)) == "running"
    with session("privacy") as db:  # the log survives the restore of an older privacy database
        assert db.get(ErasedSubject, pseudonym(key, gone)) is not None


def test_progress_bars_per_database_and_per_object_on_stderr_and_not_with_json(laptop,
                                                                                monkeypatch):
    monkeypatch.setattr("click._termui_impl.isatty", lambda f: True)  # as on a terminal
    (laptop / "objects" / "objects" / "owner" / "two").write_bytes(b"another picture")
    steps = len(PART_SERVICES)
    taken = run("run")
    assert taken.exit_code == 0, taken.output
    assert "dumping databases  [####" in taken.stderr and f"{steps}/{steps}" in taken.stderr
    assert "copying objects" in taken.stderr and "2/2" in taken.stderr
    assert "dumping" not in taken.stdout
    assert "2 objects (40 B; 0 unchanged since the last set); 1 kept, 0 rotated out" in taken.stdout

    verified = run("verify")
    assert "checking databases" in verified.stderr and "checking objects" in verified.stderr
    assert "2/2" in verified.stderr
    restored = run("restore", "--yes")
    assert restored.exit_code == 0, restored.output
    assert "restoring databases" in restored.stderr and "restoring objects" in restored.stderr
    assert restored.stdout.endswith("0 erased user(s) erased again (the erasure log knows 0)\n")

    (made,) = [p for p in (laptop / "backups").iterdir() if not p.name.startswith(".")]
    made.rename(made.with_name("20200101T000000Z"))  # a set per second: this one is older
    for args in (("run",), ("verify",), ("restore", "--yes")):
        quiet = run(*args, "--json")
        assert quiet.exit_code == 0, quiet.output
        assert quiet.stderr == "", args
        json.loads(quiet.stdout)
