"""Personal fields encrypted in the databases, with real parts: the auth and
notifications services (their real entrypoints, on a SQLite file and on
PostgreSQL) never leave an address, a name or a bio in clear in a database
file or a pg_dump; they refuse to start with a missing or wrong key ring;
`darkroom-ops fields rekey` rotates the key; the migrations convert rows
written before encryption (and back)."""

from __future__ import annotations

import json
import subprocess
import uuid
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from alembic import command
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from services.auth.lookup import find_user_by_email
from services.auth.models import AccountChange, EmailVerification, User, UserSession
from services.common import fieldcrypt
from services.common.db import make_engine
from services.common.keyring import new_key_entry
from services.common.migrations import SERVICES_DIR, alembic_config
from tests.conftest import base_env, free_port, wait_for
from tests.integration.test_ops_users import ops

pytestmark = pytest.mark.integration

K1 = new_key_entry("k1")
K2 = new_key_entry("k2")
INDEX = "integration-field-index-key-0123456789"
PASSWORD = "correct horse battery staple"
NAME, BIO = "Ada Marker-Lovelace", "Writes about analytical engines, marker 7f3e"


def pg_dump(url: str) -> bytes:
    parsed = make_url(url)
    args = ["pg_dump", "--no-owner", "-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432),
            "-U", parsed.username or "postgres", parsed.database]
    return subprocess.run(args, capture_output=True, check=True, timeout=120).stdout


def sqlite_files(path) -> bytes:
    """The database file and whatever journal files sit beside it."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


# ------------------------------------------------------------------ the running services


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, tmp_path_factory):
    amqp_uri, _ = make_vhost("field-encryption")
    workdir = tmp_path_factory.mktemp("fields")
    return SimpleNamespace(amqp_uri=amqp_uri, workdir=workdir, auth_db=workdir / "auth.db",
                           notifications_url=make_database("field_encryption_notifications"))


def env(stack, keys: str, **extra) -> dict:
    return base_env(AMQP_URI=stack.amqp_uri, AUTH_DATABASE_URL=f"sqlite:///{stack.auth_db}",
                    NOTIFICATIONS_DATABASE_URL=stack.notifications_url,
                    MAIL_URL=f"file://{stack.workdir / 'mail'}", FIELD_ENCRYPTION_KEYS=keys,
                    FIELD_INDEX_KEY=INDEX, **extra)


def start(start_process, stack, service: str, keys: str):
    port = free_port()
    proc = start_process(service, env(stack, keys, **{f"{service.upper()}_METRICS_PORT": port}))
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    return proc


def refused_start(start_process, stack, keys: str) -> str:
    proc = start_process("auth", env(stack, keys, AUTH_METRICS_PORT=free_port()))
    wait_for(lambda: not proc.alive(), 60, 0.2, "the auth service to refuse to start")
    return proc.logs()


def test_no_personal_field_in_clear_on_disk_refusals_and_rotation(stack, start_process):
    email = f"fields-{uuid.uuid4().hex[:8]}@example.com"
    auth = start(start_process, stack, "auth", K1)
    notifications = start(start_process, stack, "notifications", K1)
    with ClusterRpcProxy({"AMQP_URI": stack.amqp_uri}, timeout=30) as cluster:
        wait_for(lambda: cluster.auth.ping(), 30, 0.2, "auth RPC")
        user = cluster.auth.register({"email": email, "password": PASSWORD},
                                     client_ip="203.0.113.9")["user"]
        cluster.auth.update_profile(user["id"], {"display_name": NAME, "bio": BIO})
        session = cluster.auth.login({"email": email.upper(), "password": PASSWORD},
                                     client_ip="203.0.113.9", user_agent="Marker-Agent/1.0")
        assert session["user"]["id"] == user["id"]  # found by the blind index
        assert cluster.auth.get_user(user["id"])["display_name"] == NAME
    records = make_engine(stack.notifications_url)
    try:
        wait_for(lambda: records.connect().execute(sa.text(
            "SELECT count(*) FROM notifications")).scalar_one() >= 1, 30, 0.2,
            "the verification mail's record")
    finally:
        records.dispose()
    secrets = [email.encode(), NAME.encode(), BIO.encode(), b"Marker-Agent", b"203.0.113"]
    # while auth runs: its WAL holds every frame written since the last
    # checkpoint, the outbox rows of the events that carried the address too
    running = sqlite_files(stack.auth_db)
    assert stack.auth_db.with_name("auth.db-wal").exists()
    for secret in secrets:
        assert secret not in running, secret
    auth.stop()
    notifications.stop()

    auth_file = sqlite_files(stack.auth_db)
    dump = pg_dump(stack.notifications_url)
    assert b"fc1:k1:" in auth_file and b"fc1:k1:" in dump
    for secret in secrets:
        assert secret not in auth_file, secret
        assert secret not in dump, secret

    # a missing or wrong key ring: auth does not start, and says why (never a key)
    assert "FIELD_ENCRYPTION_KEYS is empty" in refused_start(start_process, stack, "")
    logs = refused_start(start_process, stack, K2)
    assert "under the key 'k1', which FIELD_ENCRYPTION_KEYS lacks" in logs
    logs = refused_start(start_process, stack, "k1:" + K2.split(":")[1])
    assert "the key 'k1' in FIELD_ENCRYPTION_KEYS does not decrypt" in logs
    assert K2.split(":")[1] not in logs and K1.split(":")[1] not in logs

    # rotation: the new key first, rekey (the real CLI), then the old key removed
    rotating = env(stack, f"{K2},{K1}")
    services = ("--service", "auth", "--service", "notifications")  # the ones running here
    status = ops(rotating, "fields", "status", *services, "--json")
    assert status.returncode == 0, status.stderr
    # the account, its code, its session and its profile change
    assert json.loads(status.stdout)["auth"] == {"current_key": "k2", "stale_rows": 4}
    result = ops(rotating, "fields", "rekey", *services)
    assert result.returncode == 0, result.stderr
    assert "auth: re-encrypted" in result.stdout and "notifications: re-encrypted" in result.stdout
    assert "older keys may now be removed" in result.stdout
    assert "re-encrypting" in result.stderr  # the progress bar
    again = ops(rotating, "fields", "rekey", *services, "--json")  # resumable: nothing left to do
    assert again.returncode == 0 and '"rewritten_rows": 0' in again.stdout, again.stdout
    assert b"fc1:k1:" not in sqlite_files(stack.auth_db) + pg_dump(stack.notifications_url)

    start(start_process, stack, "auth", K2)  # k1 gone: starts, and reads everything
    with ClusterRpcProxy({"AMQP_URI": stack.amqp_uri}, timeout=30) as cluster:
        wait_for(lambda: cluster.auth.ping(), 30, 0.2, "auth RPC")
        again = cluster.auth.login({"email": email, "password": PASSWORD})
        assert again["user"]["id"] == user["id"]
        assert cluster.auth.get_user(user["id"])["bio"] == BIO


# ------------------------------------------------------------------ migrations


@pytest.fixture(params=["sqlite", "postgresql"])
def old_auth_database(request, tmp_path, make_database):
    """An auth database at revision 0006 (before encryption), with rows."""
    url = f"sqlite:///{tmp_path / 'auth.db'}" if request.param == "sqlite" \
        else make_database("auth_fields_migration")
    config = alembic_config(SERVICES_DIR / "auth" / "migrations", url)
    command.upgrade(config, "0006")
    engine = make_engine(url)
    user_id, now = uuid.uuid4(), "2026-01-01 00:00:00"
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO users (id, email, email_verified, password_hash, display_name, bio, plan,"
            " processing_restricted, is_admin, created_at, updated_at) VALUES (:id, :e, true,"
            " 'x', :n, :b, 'free', false, false, :t, :t)"),
            {"id": user_id if request.param == "postgresql" else user_id.hex, "e": "old@example.com",
             "n": NAME, "b": BIO, "t": now})
        uid = user_id if request.param == "postgresql" else user_id.hex
        conn.execute(sa.text(
            "INSERT INTO email_verifications (id, user_id, purpose, email, code_hmac, attempts,"
            " created_at, expires_at) VALUES (:id, :u, 'email_change', 'new@example.com', 'h', 0,"
            " :t, :t)"), {"id": uuid.uuid4() if request.param == "postgresql" else uuid.uuid4().hex,
                          "u": uid, "t": now})
        conn.execute(sa.text(
            "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at, user_agent,"
            " network) VALUES (:id, :u, 'tok', :t, :t, 'Marker-Agent/1.0', '203.0.113.0/24')"),
            {"id": uuid.uuid4() if request.param == "postgresql" else uuid.uuid4().hex,
             "u": uid, "t": now})
        conn.execute(sa.text(
            "INSERT INTO account_changes (id, user_id, kind, changes, created_at) VALUES"
            " (:id, :u, 'email_changed', :c, :t)"),
            {"id": uuid.uuid4() if request.param == "postgresql" else uuid.uuid4().hex, "u": uid,
             "c": '{"email": {"from": "older@example.com", "to": "old@example.com"}}', "t": now})
    yield SimpleNamespace(kind=request.param, url=url, config=config, engine=engine,
                          user_id=user_id)
    engine.dispose()


def test_the_migration_encrypts_existing_rows_and_the_downgrade_restores_them(old_auth_database):
    db = old_auth_database
    fieldcrypt.configure(fieldcrypt.FieldKeys.parse(K1, INDEX))
    try:
        command.upgrade(db.config, "head")
        with db.engine.connect() as conn:
            stored = conn.execute(sa.text(
                "SELECT email, display_name, bio FROM users")).one()
            others = [conn.execute(sa.text(q)).scalar_one() for q in (
                "SELECT email FROM email_verifications", "SELECT user_agent FROM sessions",
                "SELECT network FROM sessions", "SELECT changes FROM account_changes")]
        assert all(str(v).startswith("fc1:k1:") for v in [*stored, *others])
        if db.kind == "postgresql":
            dump = pg_dump(db.url)
            for secret in (b"old@example.com", b"new@example.com", NAME.encode(), b"Marker-Agent"):
                assert secret not in dump, secret
        with Session(db.engine) as session:
            user = find_user_by_email(session, "old@example.com")
            assert (user.id, user.display_name, user.bio) == (db.user_id, NAME, BIO)
            assert session.scalars(sa.select(EmailVerification)).one().email == "new@example.com"
            assert session.scalars(sa.select(UserSession)).one().network == "203.0.113.0/24"
            assert session.scalars(sa.select(AccountChange)).one().changes == \
                {"email": {"from": "older@example.com", "to": "old@example.com"}}
            assert session.scalar(sa.select(User.email_index)) == \
                fieldcrypt.email_index("old@example.com")

        command.downgrade(db.config, "0006")
        with db.engine.connect() as conn:
            assert tuple(conn.execute(sa.text("SELECT email, display_name, bio FROM users")).one()) \
                == ("old@example.com", NAME, BIO)
            assert conn.execute(sa.text("SELECT network FROM sessions")).scalar_one() == \
                "203.0.113.0/24"
    finally:
        fieldcrypt.configure(None)
