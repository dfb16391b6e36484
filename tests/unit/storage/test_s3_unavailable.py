"""The s3 backend when the store does not serve: S3's "try again" answers
(503 ``SlowDown``/``ServiceUnavailable`` with its XML body) and refused
connections become 503 ``storage_unavailable`` with ``retry_after``, whatever
the operation; a refusal that is not an outage (``AccessDenied``) stays an
S3Error. The store is a real loopback server (tests/s3_proxy.py switched to
503, or a port nobody listens on); minio-py's own retries are turned off here
so each case takes one request."""

from __future__ import annotations

import io

import pytest
import urllib3
from minio.error import S3Error

from services.common.errors import DomainError
from services.storage.backends.s3 import S3Backend
from tests.conftest import free_port
from tests.s3_proxy import S3Proxy


def backend(url: str) -> S3Backend:
    store = S3Backend(url, "key", "secret", "bucket")
    store.client._http = urllib3.PoolManager(retries=False)
    return store


OPERATIONS = {
    "put": lambda b: b.put("objects/o/1", io.BytesIO(b"abc"), 3, "image/png"),
    "open": lambda b: b.open("objects/o/1"),
    "stat": lambda b: b.stat("objects/o/1"),
    "copy": lambda b: b.copy("objects/o/1", "public/p/1"),
    "delete_many": lambda b: b.delete_many(["objects/o/1"]),
    "list": lambda b: list(b.list("objects/")),
}


@pytest.fixture
def failing():
    proxy = S3Proxy("http://127.0.0.1:9").start()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("code", ["SlowDown", "ServiceUnavailable"])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_store_answering_503_is_storage_unavailable(failing, code, operation):
    failing.fail(code)
    with pytest.raises(DomainError) as raised:
        OPERATIONS[operation](backend(failing.url))
    assert (raised.value.status, raised.value.code) == (503, "storage_unavailable")
    assert raised.value.details["retry_after"] >= 1
    assert failing.refused >= 1


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_store_not_listening_is_storage_unavailable(operation):
    with pytest.raises(DomainError) as raised:
        OPERATIONS[operation](backend(f"http://127.0.0.1:{free_port()}"))
    assert raised.value.code == "storage_unavailable"


def test_a_refusal_is_not_an_outage(failing):
    failing.fail("AccessDenied", status=403)
    with pytest.raises(S3Error) as raised:
        backend(failing.url).stat("objects/o/1")
    assert raised.value.code == "AccessDenied"
