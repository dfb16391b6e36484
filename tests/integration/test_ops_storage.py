"""`darkroom-ops storage purge|report` over real nameko RPC, against a stand-in
storage service (tests/integration/probe_service.py:FakeStorageService) that
loads the purge request through the real contract."""

from __future__ import annotations

import json

import pytest

from tests.conftest import base_env
from tests.integration.probe_service import start_probe
from tests.integration.test_ops_users import ops

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(make_vhost, start_process, tmp_path_factory):
    amqp_uri, _ = make_vhost("ops-storage")
    workdir = tmp_path_factory.mktemp("fake-storage")
    start_probe(start_process, workdir, amqp_uri, f"sqlite:///{workdir}/unused.db",
                cls="FakeStorageService")
    return base_env(AMQP_URI=amqp_uri, OPS_RPC_TIMEOUT_SECONDS=10)


def test_report_dry_run_purge_and_report_again(env):
    result = ops(env, "storage", "report")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "KIND    OBJECTS    BYTES",
        "upload        7  3.0 MiB",
        "",
        "AGE (DAYS)  OBJECTS    BYTES",
        "0-7               2  3.0 MiB",
        "30+               5  4.9 KiB",
        "",
        "expired, awaiting purge: 5 objects (4.9 KiB)",
        "deleted (rows kept, bytes gone): 0 objects",
    ]

    result = ops(env, "storage", "purge", "--dry-run", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("dry run: 5 objects (4.9 KiB) past retention would be purged in "
                                     "3 batches; nothing was deleted")

    result = ops(env, "storage", "purge")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "purged 5 objects (4.9 KiB) in 1 batch"
    assert ops(env, "storage", "purge").stdout.strip() == "purged 0 objects (0 B) in 0 batches"

    report = json.loads(ops(env, "storage", "report", "--json").stdout)
    assert report["expired_pending"] == {"objects": 0, "bytes": 0}
    assert report["deleted"] == {"objects": 5}


def test_no_storage_service_is_a_clear_error(make_vhost):
    amqp_uri, _ = make_vhost("ops-no-storage")
    result = ops(base_env(AMQP_URI=amqp_uri, OPS_RPC_TIMEOUT_SECONDS=5), "storage", "report")
    assert result.returncode == 1
    assert "error: no storage service is running" in result.stderr
    assert "Traceback" not in result.stderr
