"""The end-to-end stack: every Procfile process, started once per session."""

from __future__ import annotations

import pytest

from tests.conftest import base_env, free_port
from tests.e2e.stack import Stack


@pytest.fixture(scope="session")
def stack(amqp_uri, make_database, start_process, tmp_path_factory):
    mail_dir = tmp_path_factory.mktemp("mail")
    objects_dir = tmp_path_factory.mktemp("objects")
    port = free_port()
    env = base_env(
        AMQP_URI=amqp_uri,
        AUTH_DATABASE_URL=make_database("auth"),
        NOTIFICATIONS_DATABASE_URL=make_database("notifications"),
        STORAGE_DATABASE_URL=make_database("storage"),
        STORAGE_METRICS_PORT=free_port(),
        STORAGE_BACKEND="fs",
        STORAGE_FS_ROOT=objects_dir,
        STORAGE_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        STORAGE_URL_SECRET="e2e-url-secret",
        STORAGE_UPLOAD_MAX_BYTES=2_000_000,
        AUTH_METRICS_PORT=free_port(),
        NOTIFICATIONS_METRICS_PORT=free_port(),
        MAIL_URL=f"file://{mail_dir}",
        APP_BASE_URL="http://app.example",
        GATEWAY_PORT=port,
        GATEWAY_AUTH_CACHE_SECONDS=2,
        RATELIMIT_AUTH="10000 per minute",
        RATELIMIT_DEFAULT="10000 per minute",
        AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT=5,
        AUTH_RESEND_MIN_INTERVAL_SECONDS=0,
    )
    processes = {}
    for name in ("auth", "notifications", "storage"):
        processes[name] = start_process(name, env)
    for name in ("auth", "notifications", "storage"):
        processes[name].wait_ready(f"http://127.0.0.1:{env[name.upper() + '_METRICS_PORT']}/readyz")
    processes["gateway"] = start_process("gateway", env)
    processes["gateway"].wait_ready(f"http://127.0.0.1:{port}/readyz")
    return Stack(f"http://127.0.0.1:{port}", mail_dir, processes, objects_dir)


