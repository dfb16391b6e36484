"""`darkroom-ops jobs cancel` (the installed console script) against the real
auth, billing and generation services, started by their Procfile commands.

Generation runs one job at a time (``GENERATION_MAX_RUNNING_JOBS=1``) on an
async-task provider (tests/fakes/providers.py:FakeAsyncTasks) whose tasks
never finish: the first job runs, the second waits ``reserved`` with its
credits held. Cancelling the second goes through the generation service's
cancel rule and billing releases its hold; the running one cannot be
cancelled (409 ``not_cancellable``, exit 1), and a job of any account can be
named: operators are not its owner.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, base_env, free_port, providers_file, wait_for
from tests.fakes.providers import FakeAsyncTasks
from tests.integration.test_generation_service import new_user, ready

pytestmark = pytest.mark.integration

OPS = str(Path(sys.executable).parent / "darkroom-ops")


def ops(env: dict, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([OPS, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=90, input=input)


@pytest.fixture(scope="module")
def tasks():
    fake = FakeAsyncTasks().start()
    fake.outcome = "never"
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, tasks, tmp_path_factory):
    amqp_uri, _ = make_vhost("ops-jobs")
    common = dict(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1)
    ports = {name: free_port() for name in ("auth", "billing", "generation")}
    auth_db = make_database("opsjobs_auth")
    procs = {
        "auth": start_process("auth", base_env(**common, AUTH_DATABASE_URL=auth_db,
                                               AUTH_METRICS_PORT=ports["auth"])),
        "billing": start_process("billing", base_env(
            **common, BILLING_DATABASE_URL=make_database("opsjobs_billing"),
            BILLING_METRICS_PORT=ports["billing"])),
        "generation": start_process("generation", base_env(
            **common, GENERATION_DATABASE_URL=make_database("opsjobs_generation"),
            GENERATION_METRICS_PORT=ports["generation"], GENERATION_MAX_RUNNING_JOBS=1,
            GENERATION_PROVIDERS_FILE=providers_file(
                tmp_path_factory.mktemp("providers"),
                {"slow": {"type": "async_task", "base_url": tasks.url, "timeout_s": 5,
                          "job_types": ["text-to-image"], "poll_interval_s": 1,
                          "task_timeout_s": 600}},
                {"text-to-image": ["slow"]})))}
    with ready(amqp_uri, procs, ports, auth_db) as ready_stack:
        ready_stack.env = base_env(AMQP_URI=amqp_uri, OPS_RPC_TIMEOUT_SECONDS=15)
        yield ready_stack


def status(stack, user: str, job_id: str, wanted: str) -> dict:
    return wait_for(lambda: (job := stack.rpc.generation.get_job(user, job_id))["status"]
                    == wanted and job, 30, 0.2, f"job {job_id} {wanted}")


def test_cancel_releases_the_hold_of_a_waiting_job_and_refuses_a_running_one(stack):
    user = new_user(stack)
    submit = {"type": "text-to-image", "prompt": "a slow fox", "n": 1, "size": "512x512"}
    running = stack.rpc.generation.submit(user, submit)
    status(stack, user, running["id"], "running")
    waiting = stack.rpc.generation.submit(user, {**submit, "prompt": "a patient fox"})
    status(stack, user, waiting["id"], "reserved")
    held = stack.rpc.billing.get_balance(user)
    assert held["held"] == running["price"] + waiting["price"]

    without_yes = ops(stack.env, "jobs", "cancel", waiting["id"], input="n\n")
    assert without_yes.returncode == 1 and "Cancel 1 job?" in without_yes.stderr
    assert stack.rpc.generation.get_job(user, waiting["id"])["status"] == "reserved"

    result = ops(stack.env, "jobs", "cancel", waiting["id"], running["id"], "--yes", "--json")
    assert result.returncode == 1, result.stderr  # the running one could not be cancelled
    outcomes = {o["job_id"]: o for o in json.loads(result.stdout)["outcomes"]}
    assert outcomes[waiting["id"]]["done"] is True
    assert (outcomes[running["id"]]["done"], outcomes[running["id"]]["code"]) \
        == (False, "not_cancellable")
    status(stack, user, waiting["id"], "cancelled")
    # billing released the cancelled job's hold; the running one's stays
    balance = wait_for(lambda: (b := stack.rpc.billing.get_balance(user))["held"]
                       == running["price"] and b, 30, 0.2, "the hold released")
    assert balance["available"] == 50 - running["price"]
    assert stack.rpc.generation.get_job(user, running["id"])["status"] == "running"

    text = ops(stack.env, "jobs", "cancel", waiting["id"], "--yes")
    assert text.returncode == 1
    assert text.stdout.splitlines()[0] == "cancelled 0 of 1 job; 1 could not be cancelled:"
    assert "not_cancellable" in text.stdout
    bad = ops(stack.env, "jobs", "cancel", "not-a-uuid", "--yes")
    assert bad.returncode == 2 and "not a job id" in bad.stderr
