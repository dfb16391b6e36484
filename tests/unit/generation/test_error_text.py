"""error_text.clean on the failure text our dependencies really produce
(requests/urllib3, minio, nameko, providers' error bodies): no signed URL,
credential or internal host name is left; the kind of failure, the peer's
public host and the status are."""

from __future__ import annotations

import socket

import pytest
import requests
from minio.error import S3Error
from nameko.exceptions import RemoteError

from services.generation import error_text
from services.generation.error_text import clean, describe_http_failure, is_internal_host, peer

SIGNATURE = "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SIGNED_QUERY = (f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={ACCESS_KEY}%2F20261203%2F"
                f"us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261203T100000Z&X-Amz-Expires=900"
                f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}")
OWNER = "0b7c9a3e-5d1f-4c2b-9a8e-7f6d5c4b3a21"
OBJECT_KEY = f"objects/{OWNER}/1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"

LEAKS = (SIGNATURE, ACCESS_KEY, "X-Amz-Credential=AKIA", "minio", "storage.internal",
         "10.0.3.7", "127.0.0.1", OBJECT_KEY, "sk-proj-", "whsec_", "drk_")


def assert_clean(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, (leak, text)
    assert clean(text) == text  # idempotent


def refused_put_message() -> str:
    """What requests says when the object store refuses the upload connection."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/darkroom/{OBJECT_KEY}?{SIGNED_QUERY}"
        with pytest.raises(requests.ConnectionError) as info:
            requests.put(url, data=b"png", timeout=2)
    return info.value


def test_a_refused_upload_keeps_the_kind_of_failure_only():
    exc = refused_put_message()
    assert SIGNATURE in str(exc) and "127.0.0.1" in str(exc)  # what requests says
    text = clean(f"cannot upload an output: {exc}")
    assert_clean(text)
    assert "Connection refused" in text and "host='[internal]'" in text
    assert describe_http_failure(exc) == "[internal] refused the connection"


def test_an_unresolvable_internal_host_is_not_named():
    with pytest.raises(requests.ConnectionError) as info:
        requests.get(f"http://minio.invalid-darkroom-test:9000/darkroom/x?{SIGNED_QUERY}",
                     timeout=2)
    text = clean(str(info.value).replace("minio.invalid-darkroom-test", "minio"))
    assert_clean(text)
    assert "Failed to resolve '[internal]'" in text


def test_an_http_error_for_a_signed_url_keeps_the_status_and_a_public_host():
    response = requests.models.Response()
    response.status_code, response.reason = 403, "Forbidden"
    response.url = f"https://objects.example.com/darkroom/{OBJECT_KEY}?{SIGNED_QUERY}"
    with pytest.raises(requests.HTTPError) as info:
        response.raise_for_status()
    text = clean(info.value)
    assert_clean(text)
    assert text == "403 Client Error: Forbidden for url: https://objects.example.com"
    response.url = f"http://storage.internal:8000/v1/files/staging/abc?sig={SIGNATURE}&exp=1"
    with pytest.raises(requests.HTTPError) as info:
        response.raise_for_status()
    assert clean(info.value) == "403 Client Error: Forbidden for url: http://[internal]"
    assert describe_http_failure(info.value) == "[internal] answered 403"


def test_minio_errors_lose_the_resource_and_the_object_key():
    exc = S3Error(None, "NoSuchKey", "The specified key does not exist.", f"/darkroom/{OBJECT_KEY}",
                  "17C8A1B2C3D4E5F6", "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
                  bucket_name="darkroom", object_name=OBJECT_KEY)
    text = clean(exc)
    assert_clean(text)
    assert text.startswith("S3 operation failed; code: NoSuchKey, message: The specified key")
    assert "dd9025bab4ad464b" not in text and "17C8A1B2C3D4E5F6" not in text


def test_a_remote_error_from_storage_loses_its_url_and_host():
    exc = RemoteError("MaxRetryError", f"HTTPConnectionPool(host='minio', port=9000): Max retries "
                      f"exceeded with url: /darkroom/{OBJECT_KEY}?{SIGNED_QUERY} (Caused by "
                      f"NewConnectionError('<urllib3.connection.HTTPConnection object at "
                      f"0x7f3a2c1b9d90>: Failed to establish a new connection: [Errno 111] "
                      f"Connection refused'))")
    text = clean(exc)
    assert_clean(text)
    assert "with url: [path]" in text and "<urllib3.connection.HTTPConnection>" in text


@pytest.mark.parametrize("body", [
    # an OpenAI-style error body echoing the key it was sent
    '{"error": {"message": "Incorrect API key provided: sk-proj-AbCdEf0123456789AbCdEf0123. '
    'You can find your API key at https://platform.openai.com/account/api-keys.", '
    '"type": "invalid_request_error", "code": "invalid_api_key"}}',
    # a provider echoing our request headers and the signed source URL
    f'upstream failed: Authorization: Bearer drk_abc12345_{SIGNATURE[:43]} '
    f'image_url=https://10.0.3.7:9000/darkroom/{OBJECT_KEY}?{SIGNED_QUERY}',
    # key=value credentials, a webhook secret and a JWT
    f"retry with api_key={SIGNATURE[:40]}&token=s3cr3t-t0ken; secret: whsec_{SIGNATURE[:43]} "
    "id_token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl",
    # internal host names and addresses in prose
    "cannot connect to storage.internal:8000 nor 10.0.3.7 nor minio:9000 nor localhost",
])
def test_provider_error_bodies_lose_credentials_and_internal_hosts(body):
    text = clean(f"openai answered 500: {body}")
    assert_clean(text)
    assert text.startswith("openai answered 500")
    for secret in ("s3cr3t-t0ken", "eyJhbGciOiJIUzI1NiJ9", "drk_abc12345", "localhost"):
        assert secret not in text


def test_what_a_job_error_should_say_is_kept():
    for text in ("openai answered 429", "provider_unavailable: every provider failed",
                 "video task failed: content_policy",
                 f"object {OWNER} does not match its declaration: sha256",
                 "api.openai.com:443 did not answer in time"):
        assert clean(text) == text


def test_long_text_is_capped():
    text = clean("x " * 1000)
    assert len(text) == error_text.MAX_LENGTH and text.endswith("…")


def test_internal_hosts_and_peers():
    for host in ("minio", "storage", "localhost", "127.0.0.1", "10.1.2.3", "::1", "169.254.169.254",
                 "db.internal", "s3.svc", "printer.lan", "rabbit.default.svc.cluster.local", ""):
        assert is_internal_host(host), host
    for host in ("api.openai.com", "8.8.8.8", "objects.example.com"):
        assert not is_internal_host(host), host
    assert peer(f"https://user:pw@api.example.com:8443/v1/x?{SIGNED_QUERY}") == "api.example.com:8443"
    assert peer("http://minio:9000/darkroom/key") == "[internal]"
    assert peer("not a url") == "[internal]"
