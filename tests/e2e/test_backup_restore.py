"""The restore drill: back up a running stack holding users, jobs, ledger
entries, privacy requests and images with ``darkroom-ops backup run``;
``backup verify`` it; erase one user after the backup; restore into fresh
databases and a fresh object store with ``backup restore``; start the real
services on what was restored. The restored stack serves the kept user's
data exactly as before, ``billing verify`` is clean, and the user erased
after the backup is erased again before any service starts."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.db import normalise_url
from tests.conftest import free_port, wait_for
from tests.e2e.conftest import SERVICES
from tests.e2e.stack import PASSWORD, Stack, verified_login
from tests.e2e.test_privacy import (
    ERASURE,
    call_ok,
    certificate,
    database_urls,
    generate,
    pay,
    query,
    upload_png,
)

pytestmark = pytest.mark.e2e

OPS = str(Path(sys.executable).parent / "darkroom-ops")
REPO = Path(__file__).resolve().parents[2]


def ops(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OPS, *args], env={**env, "OPS_RPC_TIMEOUT_SECONDS": "30"}, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def view(stack, token: str, images: list[str], request: str) -> dict:
    """What the API shows a user: account, balance, ledger, orders, jobs,
    gallery, a privacy request (its export archive's bytes rather than the
    signed URL), and the bytes of each image."""
    shown = {path: call_ok(stack, "GET", path, token=token) for path in (
        "/v1/me", "/v1/billing/balance", "/v1/billing/ledger?limit=50", "/v1/generations",
        "/v1/images", f"/v1/privacy/requests/{request}", "/v1/billing/orders")}
    for item in shown["/v1/images"]["items"]:
        item.pop("url", None)  # signed for one address and a while: not data
    for job in shown["/v1/generations"]["items"]:
        job.pop("output_urls", None)  # signed too (the outputs' bytes are compared below)
    archive = shown[f"/v1/privacy/requests/{request}"].pop("download_url")
    response = stack.http.get(archive, timeout=30)
    assert response.status_code == 200, response.text
    shown["archive"] = response.content
    for image in images:
        response = stack.call("GET", f"/v1/images/{image}/content", token=token)
        assert response.status_code == 200, response.text
        shown[image] = response.content
    return shown


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_restored_stack_serves_the_same_data_and_erased_users_stay_erased(
        stack, make_database, make_vhost, start_process, tmp_path):
    # ---- a stack with data: a kept user, and one who is erased after the backup
    address, registered, token = verified_login(stack)
    uid = registered["user"]["id"]
    upload = upload_png(stack, token, (10, 200, 30))
    output = generate(stack, token, "a restored lighthouse")["outputs"][0]
    pay(stack, token)
    export = call_ok(stack, "POST", "/v1/privacy/requests", 202, token=token,
                     json={"type": "export"})
    wait_for(lambda: call_ok(stack, "GET", f"/v1/privacy/requests/{export['id']}",
                             token=token)["status"] == "completed", 60, 0.5, "the export")
    gone_address, gone, gone_token = verified_login(stack)
    gone_id = gone["user"]["id"]
    gone_upload = upload_png(stack, gone_token, (250, 250, 0))
    before = view(stack, token, [upload, output], export["id"])

    backups = tmp_path / "backups"
    env = {**stack.env, "BACKUP_DIR": str(backups),
           "BACKUP_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode()}
    taken = ops(env, "backup", "run")
    assert taken.returncode == 0, taken.stderr
    assert "6 databases" in taken.stdout
    checked = ops(env, "backup", "verify", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (name,) = [p.name for p in backups.iterdir() if not p.name.startswith(".")]
    # nothing of the users in plain text in the set
    for path in backups.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in (address, uid, gone_address, gone_id):
                assert needle.encode() not in data, (path, needle)

    # ---- the user erased after the backup
    erasure = call_ok(stack, "POST", "/v1/privacy/requests", 202, token=gone_token, json=ERASURE)
    certificate(stack, erasure["id"])

    # ---- restore into fresh databases and a fresh object store
    objects = tmp_path / "restored-objects"
    mail = tmp_path / "restored-mail"
    mail.mkdir()
    port = free_port()
    restored_env = {**env, **{k: str(v) for k, v in {
        **{f"{s.upper()}_DATABASE_URL": make_database(f"restored_{s}") for s in SERVICES},
        **{f"{s.upper()}_METRICS_PORT": free_port() for s in SERVICES},
        "AMQP_URI": make_vhost("restored")[0], "STORAGE_FS_ROOT": objects,
        "MAIL_URL": f"file://{mail}", "GATEWAY_PORT": port,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}.items()}}
    live_privacy = database_urls(stack)["privacy"]
    restored = ops(restored_env, "backup", "restore", name, "--yes",
                   "--erasure-log-db", live_privacy)
    assert restored.returncode == 0, restored.stderr
    assert "1 erased user(s) erased again" in restored.stdout

    # before any service runs: the erased user is gone again, the kept one is whole
    urls = {s: normalise_url(restored_env[f"{s.upper()}_DATABASE_URL"]) for s in SERVICES}
    assert query(urls["auth"], "SELECT count(*) FROM users WHERE id = :u", u=gone_id) == 0
    assert query(urls["auth"], "SELECT count(*) FROM users WHERE id = :u", u=uid) == 1
    assert query(urls["storage"], "SELECT count(*) FROM objects WHERE owner_id = :u "
                 "AND deleted_at IS NULL", u=gone_id) == 0
    assert query(urls["billing"], "SELECT count(*) FROM ledger_entries WHERE user_id = :u",
                 u=gone_id) == 0
    assert query(urls["privacy"], "SELECT count(*) FROM privacy_requests WHERE user_id = :u",
                 u=gone_id) == 0
    assert query(urls["privacy"], "SELECT count(*) FROM erased_subjects") >= 1
    stored = files_under(objects)
    assert not [f for f in stored if gone_id in f or gone_upload in f]
    assert [f for f in stored if upload in f] and [f for f in stored if output in f]

    # ---- the restored stack, through the real entrypoints
    processes = {name: start_process(name, restored_env) for name in SERVICES}
    try:
        for service in SERVICES:
            processes[service].wait_ready(
                f"http://127.0.0.1:{restored_env[service.upper() + '_METRICS_PORT']}/readyz")
        processes["gateway"] = start_process("gateway", restored_env)
        processes["gateway"].wait_ready(f"http://127.0.0.1:{port}/readyz")
        again = Stack(f"http://127.0.0.1:{port}", mail, processes, objects, env=restored_env)
        login = again.call("POST", "/v1/auth/login", json={"email": address, "password": PASSWORD})
        assert login.status_code == 200, login.text
        assert view(again, login.json()["token"], [upload, output], export["id"]) == before
        assert view(again, token, [upload, output], export["id"]) == before  # the session was restored too
        refused = again.call("POST", "/v1/auth/login",
                             json={"email": gone_address, "password": PASSWORD})
        assert refused.status_code == 401
        assert again.call("GET", "/v1/me", token=gone_token).status_code == 401
        verified = ops(restored_env, "billing", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        for process in processes.values():
            process.stop()
