"""A large video through the real generation process (its Procfile command),
billing, auth and storage (s3 backend on the tests' S3 endpoint): the
vendor's result (a fake async task API on loopback, a padded MP4 written
chunk by chunk without a Content-Length) is streamed into a temporary file,
uploaded to the presigned slot from that file, and stored byte for byte; a
provider whose ``max_download_bytes`` is smaller fails the attempt with
``invalid_provider_output`` (the router fails over, or the job fails when the
job names that model); and the generation process keeps no temporary file
open afterwards."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from tests.conftest import base_env, free_port, providers_file, wait_for
from tests.fakes.providers import FakeAsyncTasks, padded_mp4
from tests.integration.test_generation_service import (
    finished,
    new_user,
    png,
    ready,
    storage_env,
    upload,
)

pytestmark = pytest.mark.integration

MB = 1024 * 1024
SIZE = 12 * MB


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint, tmp_path_factory):
    vendor = FakeAsyncTasks(polls_to_finish=1, result=padded_mp4(SIZE, declared=False)).start()
    temp = tmp_path_factory.mktemp("generation-tmp")
    amqp_uri, _ = make_vhost("large_outputs")
    common = dict(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1)
    ports = {name: free_port() for name in ("auth", "billing", "storage", "generation")}
    auth_db = make_database("large_auth")
    task = {"type": "async_task", "base_url": vendor.url, "poll_interval_s": 0.05,
            "timeout_s": 10}
    procs = {
        "auth": start_process("auth", base_env(
            **common, AUTH_DATABASE_URL=auth_db, AUTH_METRICS_PORT=ports["auth"])),
        "billing": start_process("billing", base_env(
            **common, BILLING_DATABASE_URL=make_database("large_billing"),
            BILLING_METRICS_PORT=ports["billing"])),
        "storage": start_process("storage", storage_env(
            common, make_database("large_storage"), ports["storage"], s3_endpoint, "large")),
        "generation": start_process("generation", base_env(
            **common, GENERATION_DATABASE_URL=make_database("large_generation"),
            GENERATION_METRICS_PORT=ports["generation"], TMPDIR=str(temp),
            GENERATION_PROVIDERS_FILE=providers_file(
                tmp_path_factory.mktemp("providers"),
                {"tight": {**task, "max_download_bytes": 4 * MB},
                 "roomy": {**task, "max_download_bytes": 2 * SIZE}},
                {"image-to-video": ["tight", "roomy"]},
                retry={"attempts": 1, "base_delay_s": 0.05, "max_delay_s": 1}))),
    }
    try:
        with ready(amqp_uri, procs, ports, auth_db) as ready_stack:
            yield SimpleNamespace(**vars(ready_stack), generation=procs["generation"],
                                  vendor=vendor, temp=temp)
    finally:
        vendor.stop()


def open_temp_files(stack) -> list[str]:
    """The generation process's open files in its temporary directory (an
    anonymous temporary file shows as ``<dir>/#123 (deleted)``), and the files there."""
    fds = Path(f"/proc/{stack.generation.proc.pid}/fd")
    targets = []
    for fd in os.listdir(fds):
        try:
            targets.append(os.readlink(fds / fd))
        except OSError:
            continue
    return [t for t in targets if t.startswith(str(stack.temp))] + os.listdir(stack.temp)


def video_job(stack, user: str, **extra) -> dict:
    source = upload(stack, user, png(64, 64))
    job = stack.rpc.generation.submit(user, {"type": "image-to-video", "prompt": "a harbour",
                                             "source_image_id": source, "duration_s": 2,
                                             **extra})
    return finished(stack, user, job["id"])


def test_a_large_video_streams_to_storage_after_an_oversized_attempt(stack):
    user = new_user(stack)
    done = video_job(stack, user)
    assert done["status"] == "succeeded", done
    assert done["provider"] == "roomy"  # "tight" refused the result as too large
    assert any(r.path.startswith("/results/") for r in stack.vendor.requests)
    obj = stack.rpc.storage.get_object(user, done["outputs"][0])
    expected = hashlib.sha256(b"".join(padded_mp4(SIZE).chunks())).hexdigest()
    assert (obj["size"], obj["sha256"], obj["content_type"]) == (SIZE, expected, "video/mp4")
    digest = hashlib.sha256()
    with requests.get(obj["url"], stream=True, timeout=30) as response:
        assert response.status_code == 200
        for chunk in response.iter_content(MB):
            digest.update(chunk)
    assert digest.hexdigest() == expected
    assert wait_for(lambda: not open_temp_files(stack), 10, 0.1, "temporary files closed")


def test_a_result_over_the_named_models_cap_fails_the_job_and_leaves_no_file(stack):
    user = new_user(stack)
    done = video_job(stack, user, model="tight")
    assert done["status"] == "failed", done
    assert "tight=invalid_provider_output" in done["error"]["message"]
    assert wait_for(lambda: not open_temp_files(stack), 10, 0.1, "temporary files closed")
