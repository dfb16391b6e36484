"""runner.run through outages of our own infrastructure: storage RPCs that
time out or fail with 503, an upload connection refused, the broker gone. The
failed step is retried with backoff up to the bound (on a fake clock), the
paid provider call is never repeated, and past the bound the job fails with
``storage_unavailable``; anything that is not an outage fails at once.

Uploads go to a real loopback HTTP server; storage and the provider router
are stand-ins (their real versions run in the integration tests).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import eventlet
import pytest
import requests
from amqp.exceptions import RecoverableConnectionError
from kombu.exceptions import OperationalError
from nameko.exceptions import RemoteError, UnknownService

from services.common.bounded_rpc import BoundedProxy, RpcTimeout
from services.common.errors import DomainError
from services.generation import runner
from services.generation.providers.base import ProviderOutput, ProviderResult
from services.generation.providers.router import RoutedResult
from tests.fakes.providers import png_bytes

SIGNED = "X-Amz-Credential=AKIAIOSFODNN7EXAMPLE&X-Amz-Signature=" + "ab12" * 16


class Uploads(ThreadingHTTPServer):
    """Takes PUTs; answers ``fail_first`` of them with ``status``."""

    daemon_threads = True

    def __init__(self, port: int = 0, fail_first: int = 0, status: int = 503):
        self.received: list[tuple[str, bytes]] = []
        self.fail_first, self.status = fail_first, status
        super().__init__(("127.0.0.1", port), UploadHandler)
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


class UploadHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.fail_first > 0:
            self.server.fail_first -= 1
            status = self.server.status
        else:
            self.server.received.append((self.path, body))
            status = 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Storage:
    """The storage RPCs a job makes; ``fail[method]`` lists exceptions its
    next calls raise, one per call."""

    def __init__(self, base_url: str, fail: dict | None = None):
        self.base_url = base_url
        self.fail = {k: list(v) for k, v in (fail or {}).items()}
        self.calls: list[str] = []
        self.slots: list[str] = []
        self.committed: list[list[str]] = []

    def _call(self, method: str):
        self.calls.append(method)
        if self.fail.get(method):
            raise self.fail[method].pop(0)

    def get_source(self, user_id, object_id):
        self._call("get_source")
        return {"url": f"{self.base_url}/source?{SIGNED}", "content_type": "image/png"}

    def create_output_slot(self, user_id, declared):
        self._call("create_output_slot")
        object_id = str(uuid.uuid4())
        self.slots.append(object_id)
        return {"object_id": object_id, "method": "PUT", "headers": {},
                "url": f"{self.base_url}/objects/{object_id}?{SIGNED}"}

    def commit_objects(self, user_id, object_ids):
        self._call("commit_objects")
        self.committed.append(list(object_ids))
        return {"items": []}


class Router:
    """Counts provider calls (each one is paid)."""

    def __init__(self):
        self.calls = 0

    def run(self, request, progress, on_attempt=None, refused_regions=frozenset()):
        self.calls += 1
        data = png_bytes(64, 64)
        return RoutedResult("local", ProviderResult((ProviderOutput(data, "image/png", 64, 64),)),
                            ())


class Clock:
    """A fake clock that ``sleep`` advances; ``on_sleep`` runs at each sleep."""

    def __init__(self, on_sleep=None):
        self.now, self.sleeps, self.on_sleep = 0.0, [], on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


SPEC = runner.JobSpec(str(uuid.uuid4()), str(uuid.uuid4()), "text-to-image", "a red fox", None,
                      {"n": 1, "size": "512x512"}, ())


def run(storage, clock, bound=120.0, stages=None, router=None):
    stages = [] if stages is None else stages
    policy = runner.OutagePolicy(retry_seconds=bound, clock=clock, sleep=clock.sleep)
    return runner.run(SPEC, router or Router(), storage,
                      lambda fraction, stage: stages.append((round(fraction, 3), stage)), 5.0,
                      policy)


@pytest.fixture
def uploads():
    server = Uploads()
    yield server
    server.stop()


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_storage_rpcs_timing_out_or_failing_503_are_waited_out(uploads):
    storage = Storage(url(uploads), fail={
        "create_output_slot": [RpcTimeout("storage", "create_output_slot", 30),
                               UnknownService("storage")],
        "commit_objects": [DomainError("storage_unavailable", "the object store could not "
                                       "read the object; try again", 503)],
    })
    clock, stages, router = Clock(), [], Router()
    provider, object_ids = run(storage, clock, stages=stages, router=router)
    assert (provider, object_ids) == ("local", storage.slots)
    assert router.calls == 1  # the paid call is never repeated for an outage
    assert storage.calls == ["create_output_slot"] * 3 + ["commit_objects"] * 2
    assert storage.committed == [storage.slots]
    assert clock.sleeps == [1.0, 2.0, 1.0]  # backoff per step
    assert (0.85, "waiting_for_storage") in stages  # the user sees the wait, the lease is kept
    assert [o[0] for o in uploads.received] == [f"/objects/{storage.slots[0]}?{SIGNED}"]


def test_a_refused_upload_connection_is_retried_on_the_same_slot():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = sock.getsockname()[1]
        storage = Storage(f"http://127.0.0.1:{port}")
        started = []

        def object_store_back(sleeps):
            if sleeps == 2:  # the object store comes back after two waits
                sock.close()
                started.append(Uploads(port))

        clock = Clock(object_store_back)
        try:
            provider, object_ids = run(storage, clock)
        finally:
            for server in started:
                server.stop()
    assert len(storage.slots) == 1 and object_ids == storage.slots
    assert clock.sleeps == [1.0, 2.0]
    assert started[0].received == [(f"/objects/{storage.slots[0]}?{SIGNED}", png_bytes(64, 64))]


def test_an_outage_past_the_bound_fails_the_job_with_storage_unavailable(uploads):
    storage = Storage(url(uploads), fail={
        "commit_objects": [RpcTimeout("storage", "commit_objects", 30)] * 100})
    clock = Clock()
    with pytest.raises(runner.JobFailure) as failure:
        run(storage, clock, bound=20)
    assert failure.value.code == "storage_unavailable"
    assert failure.value.provider == "local"
    assert failure.value.message == ("cannot commit the outputs: storage did not answer "
                                     "commit_objects within 30s")
    assert clock.now == 20  # waited exactly the bound: 1 + 2 + 4 + 8 + 5
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 5.0]


def test_an_upload_refused_past_the_bound_says_only_what_failed_and_where():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        storage = Storage(f"http://127.0.0.1:{sock.getsockname()[1]}")
        with pytest.raises(runner.JobFailure) as failure:
            run(storage, Clock(), bound=5)
    assert failure.value.code == "storage_unavailable"
    assert failure.value.message == "cannot upload an output: [internal] refused the connection"


@pytest.mark.parametrize("error, code", [
    (DomainError("object_mismatch", "object does not match its declaration: sha256", 409),
     "output_rejected"),
    (DomainError("payload_too_large", "an output is limited to 10 bytes", 413), "output_rejected"),
])
def test_a_refusal_is_not_an_outage_and_fails_at_once(uploads, error, code):
    storage = Storage(url(uploads), fail={"commit_objects": [error]})
    clock = Clock()
    with pytest.raises(runner.JobFailure) as failure:
        run(storage, clock)
    assert failure.value.code == code and clock.sleeps == []


def test_an_upload_refused_with_a_4xx_fails_at_once():
    server = Uploads(fail_first=5, status=403)  # an expired signature, say
    try:
        clock = Clock()
        with pytest.raises(runner.JobFailure) as failure:
            run(Storage(url(server)), clock)
    finally:
        server.stop()
    assert failure.value.code == "storage_unavailable" and clock.sleeps == []
    assert failure.value.message == "cannot upload an output: [internal] answered 403"


def test_an_object_store_answering_503_is_waited_out():
    server = Uploads(fail_first=2, status=503)
    try:
        clock = Clock()
        run(Storage(url(server)), clock)
    finally:
        server.stop()
    assert clock.sleeps == [1.0, 2.0] and len(server.received) == 1


def test_a_lost_lease_stops_the_wait(uploads):
    class LeaseLost(Exception):
        pass

    def progress(fraction, stage):
        if stage == "waiting_for_storage":
            raise LeaseLost()

    storage = Storage(url(uploads), fail={"commit_objects": [UnknownService("storage")] * 5})
    clock = Clock()
    with pytest.raises(LeaseLost):
        runner.run(SPEC, Router(), storage, progress, 5.0,
                   runner.OutagePolicy(clock=clock, sleep=clock.sleep))
    assert clock.sleeps == []


def test_a_source_image_is_read_through_an_outage(uploads):
    storage = Storage(url(uploads), fail={"get_source": [RpcTimeout("storage", "get_source", 30)]})
    spec = runner.JobSpec(SPEC.id, SPEC.user_id, "image-to-image", "a fox", None,
                          {"n": 1, "size": "512x512", "source_image_id": str(uuid.uuid4())}, ())
    clock = Clock()
    with pytest.raises(runner.JobFailure) as failure:  # the source URL answers 501 (no GET)
        runner.run(spec, Router(), storage, lambda f, s: None, 5.0,
                   runner.OutagePolicy(clock=clock, sleep=clock.sleep))
    assert storage.calls[:2] == ["get_source", "get_source"] and clock.sleeps == [1.0]
    assert failure.value.message == "cannot read the source image: [internal] answered 501"
    assert SIGNED not in str(failure.value)


def http_error(status: int) -> requests.HTTPError:
    response = requests.models.Response()
    response.status_code, response.url = status, f"http://minio:9000/b/k?{SIGNED}"
    return requests.HTTPError(f"{status} Error for url: {response.url}", response=response)


@pytest.mark.parametrize("exc", [
    RpcTimeout("storage", "commit_objects", 30),
    UnknownService("storage"),
    OperationalError("[Errno 111] Connection refused"),
    RecoverableConnectionError("connection already closed"),
    ConnectionRefusedError(111, "Connection refused"),
    DomainError("storage_unavailable", "try again", 503),
    RemoteError("MaxRetryError", "HTTPConnectionPool(host='minio', port=9000): Max retries"),
    RemoteError("OperationalError", "could not connect to server"),
    RemoteError("S3Error", "S3 operation failed; code: ServiceUnavailable, message: Reduce"),
    requests.ConnectionError("refused"),
    requests.ReadTimeout("read timed out"),
    http_error(503),
])
def test_outages_of_our_infrastructure(exc):
    reason = runner.infrastructure_failure(exc)
    assert reason and "X-Amz-Signature" not in reason and "minio" not in reason


@pytest.mark.parametrize("exc", [
    DomainError("object_mismatch", "sha256", 409),
    DomainError("not_found", "object not found", 404),
    RemoteError("ValueError", "a bug"),
    RemoteError("S3Error", "S3 operation failed; code: AccessDenied"),
    http_error(403),
    ValueError("a bug"),
])
def test_what_is_not_an_outage(exc):
    assert runner.infrastructure_failure(exc) is None


def test_a_job_failure_message_is_clean():
    failure = runner.JobFailure("storage_unavailable",
                                f"cannot upload: 403 for url: http://minio:9000/b/k?{SIGNED}")
    assert failure.message == "cannot upload: 403 for url: http://[internal]"


class Reply:
    """nameko's RpcReply: ``result()`` waits on the reply listener's event."""

    def __init__(self, event):
        self.reply_event = event

    def result(self):
        return self.reply_event.wait()


class Proxy:
    """A nameko service proxy (``ServiceProxy``) whose replies come when the
    test sends ``event``; its reply listener keeps an event per pending call."""

    service_name = "storage"

    def __init__(self):
        self.event = eventlet.event.Event()
        self.reply_listener = type("ReplyListener", (), {"_reply_events": {}})()

    def __getattr__(self, method):
        proxy = self

        class Method:
            def call_async(self, *args):
                proxy.reply_listener._reply_events[str(uuid.uuid4())] = proxy.event
                return Reply(proxy.event)

        return Method()


def test_a_bounded_proxy_gives_up_after_its_timeout_and_forgets_the_call():
    proxy = Proxy()
    bounded = BoundedProxy(proxy, 0.2)
    started = time.monotonic()
    with pytest.raises(RpcTimeout) as info:
        bounded.commit_objects("user", ["id"])
    assert 0.2 <= time.monotonic() - started < 2
    assert str(info.value) == "storage did not answer commit_objects within 0.2s"
    assert proxy.reply_listener._reply_events == {}


def test_a_bounded_proxy_returns_the_reply():
    proxy = Proxy()
    eventlet.spawn_after(0.05, proxy.event.send, {"ok": True})
    assert BoundedProxy(proxy, 5).get_source("user", "id") == {"ok": True}


def test_the_outage_settings_come_from_the_generation_section():
    from services.generation.settings import GenerationSettings

    settings = GenerationSettings.from_config({"GENERATION": {
        "INFRA_RETRY_SECONDS": "45", "RPC_TIMEOUT_SECONDS": 5}})
    assert (settings.infra_retry_seconds, settings.rpc_timeout_seconds) == (45.0, 5.0)
    defaults = GenerationSettings.from_config({"GENERATION": {
        "INFRA_RETRY_SECONDS": "", "RPC_TIMEOUT_SECONDS": None}})
    assert (defaults.infra_retry_seconds, defaults.rpc_timeout_seconds) == (120.0, 30.0)
