"""What each process loads at start (issue 15: every service at most 100 MB
resident at rest). A service imports the heavy libraries of its own job only:
a fresh interpreter imports the entrypoint's module and the test reads its
``sys.modules``, so an eager import added anywhere in its import graph shows
here (time and memory are for bench/read_path.py, not for tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

# libraries and the processes that may load them at start
HEAVY = {
    "boto3": set(), "botocore": set(),  # S3 through minio, in storage, when its backend is s3
    "minio": set(),
    "av": set(),  # PyAV: only when a video is checked
    "stripe": set(), "httpx": set(),  # billing: at its first payment request or webhook
    "argon2": {"auth"}, "pyotp": {"auth"},
    # auth's sign-in with a provider and passkeys: imported at the first ceremony
    "authlib": set(), "joserfc": set(), "webauthn": set(), "cbor2": set(),
    "PIL": {"generation", "storage"},
    "jinja2": {"notifications", "gateway"},  # the gateway's: flask's templates
    "sqlalchemy": {"auth", "billing", "generation", "privacy", "storage", "notifications"},
    # a service migrates in a child process (services/common/migrations.py)
    "alembic": set(), "mako": set(),
}
ENTRYPOINTS = {
    "auth": "services.auth.service", "billing": "services.billing.service",
    "generation": "services.generation.service", "privacy": "services.privacy.service",
    "storage": "services.storage.service", "notifications": "services.notifications.service",
    "gateway": "gateway.wsgi",
}


def loaded(module: str) -> set[str]:
    code = ("import json, sys; import " + module + "; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize("process", sorted(ENTRYPOINTS))
def test_a_process_loads_only_the_heavy_libraries_of_its_job(process):
    modules = loaded(ENTRYPOINTS[process])
    unexpected = sorted(lib for lib, allowed in HEAVY.items()
                        if lib in modules and process not in allowed)
    assert unexpected == [], f"{process} imports {unexpected} at start"
