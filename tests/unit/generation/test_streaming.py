"""Outputs stream from the vendor to storage: a download is written to a
:class:`Body` chunk by chunk, within ``max_download_bytes`` (a declared
length first, then the running total), its size and hash counted on the
way, its temporary file deleted on failure, after the upload and when the
job's run ends; the upload streams the body's file with its length.

Responses are stand-ins here (the integration test downloads over HTTP);
uploads go to the runner tests' real loopback server.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile

import pytest
import requests

from services.generation import runner
from services.generation.providers import base
from services.generation.providers.base import (
    Body,
    ProviderOutput,
    ProviderResult,
    TransientProviderError,
    collecting,
)
from services.generation.providers.http import ProviderHttp
from services.generation.providers.media import image_output, video_output
from services.generation.providers.router import RoutedResult
from tests.fakes.providers import mp4_bytes, padded_mp4, png_bytes
from tests.unit.generation.test_runner import SPEC, Clock, Storage, Uploads


def temp_files() -> list[str]:
    """This process's open files in the temporary directory (anonymous
    temporary files show as ``<tmpdir>/#123 (deleted)``)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(tempfile.gettempdir()):
            found.append(target)
    return found


def padded_mp4_bytes(total: int) -> bytes:
    """A real MP4 followed by a ``free`` box: ``total`` bytes, still valid."""
    return b"".join(padded_mp4(total).chunks())


class Response:
    """What ``_stream_capped`` reads of a ``requests`` answer."""

    def __init__(self, chunks, length: int | None = None, broken: bool = False):
        self.headers = {} if length is None else {"Content-Length": str(length)}
        self.chunks, self.broken, self.read = list(chunks), broken, 0

    def iter_content(self, size):
        for chunk in self.chunks:
            self.read += len(chunk)
            yield chunk
        if self.broken:
            raise requests.ConnectionError("reset by peer")


def http(cap: int) -> ProviderHttp:
    return ProviderHttp("vendor", "https://api.example.com", max_download_bytes=cap)


# ------------------------------------------------------------------ Body


def test_a_body_counts_size_and_hash_as_it_is_written_and_spools_to_a_file():
    data = os.urandom(3 * base.SPOOL_BYTES + 17)
    with Body() as body:
        for start in range(0, len(data), 65536):
            body.write(data[start:start + 65536])
        assert not body.in_memory
        assert (body.size, len(body)) == (len(data), len(data))
        assert body.sha256 == hashlib.sha256(data).hexdigest()
        assert any("(deleted)" in f for f in temp_files())
        first, second = body.open(), body.open()  # each reader has its own position
        assert first.read(10) == data[:10]
        assert second.read(5) == data[:5] and first.read(5) == data[10:15]
        first.close()
        second.close()
        assert body.read_all() == data
        assert body[4:8] == data[4:8] and body[-3:] == data[-3:]
        before = len(temp_files())
    assert body.closed and len(temp_files()) == before - 1  # the file is gone with it


def test_a_small_body_stays_in_memory_and_bytes_wrap_without_a_file():
    with Body() as small:
        small.write(b"abc")
        small.write(b"def")
        assert small.in_memory and small.read_all() == b"abcdef"
        assert small.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    wrapped = Body.of(b"x" * (5 * base.SPOOL_BYTES))
    assert wrapped.in_memory and wrapped.size == 5 * base.SPOOL_BYTES
    assert wrapped.sha256 == hashlib.sha256(b"x" * (5 * base.SPOOL_BYTES)).hexdigest()
    output = ProviderOutput(b"png", "image/png", 1, 1)  # adapters and tests may pass bytes
    assert isinstance(output.body, Body) and output.data == b"png"


def test_collecting_closes_every_body_made_inside_it_even_on_failure():
    outside = Body()
    with pytest.raises(RuntimeError), collecting() as bodies:
        made = [Body(), Body.of(b"x")]
        made[0].write(os.urandom(2 * base.SPOOL_BYTES))
        with collecting() as inner:
            nested = Body()
        assert inner == [nested] and nested.closed and not made[0].closed
        raise RuntimeError("the attempt failed")
    assert bodies == made and all(b.closed for b in made)
    assert not outside.closed
    outside.close()


# ------------------------------------------------------------------ the cap


def test_a_declared_length_over_the_cap_is_refused_before_reading():
    response = Response([b"x" * 100], length=101)
    with pytest.raises(TransientProviderError) as caught:
        http(100)._stream_capped(response)
    assert caught.value.code == "invalid_provider_output"
    assert "too large" in caught.value.message and response.read == 0


@pytest.mark.parametrize("declared", [None, 10])  # no length, or a false one
def test_the_running_total_is_capped_and_the_partial_body_deleted(declared):
    chunk = b"x" * (base.SPOOL_BYTES // 2)
    response = Response([chunk] * 8, length=declared)
    before = len(temp_files())
    with collecting() as bodies, pytest.raises(TransientProviderError) as caught:
        http(3 * base.SPOOL_BYTES)._stream_capped(response)
    assert caught.value.code == "invalid_provider_output"
    assert response.read == 7 * len(chunk)  # stopped at the first chunk past the cap
    assert len(bodies) == 1 and bodies[0].closed
    assert len(temp_files()) == before


def test_a_body_exactly_at_the_cap_is_kept():
    data = os.urandom(2 * base.SPOOL_BYTES)
    body = http(len(data))._stream_capped(Response([data[:1000], data[1000:]], len(data)))
    with body:
        assert body.size == len(data) and body.sha256 == hashlib.sha256(data).hexdigest()


def test_a_download_that_breaks_off_is_a_connection_failure_and_leaves_no_file():
    before = len(temp_files())
    response = Response([b"x" * (2 * base.SPOOL_BYTES)], broken=True)
    with collecting() as bodies, pytest.raises(TransientProviderError) as caught:
        http(10 * base.SPOOL_BYTES)._stream_capped(response)
    assert caught.value.code == "provider_connection_failed"
    assert bodies[0].closed and len(temp_files()) == before


# ------------------------------------------------------------------ media


def test_a_video_is_checked_from_its_file():
    data = padded_mp4_bytes(4 * base.SPOOL_BYTES)
    body = Body()
    body.write(data)
    assert not body.in_memory
    output = video_output(body, "vendor")
    assert output.body is body and (output.width, output.height) == (64, 64)
    assert output.duration_s and output.body.sha256 == hashlib.sha256(data).hexdigest()
    body.close()


@pytest.mark.parametrize("check", [image_output, video_output])
def test_an_invalid_output_closes_its_body(check):
    body = Body()
    body.write(b"\x00" * (2 * base.SPOOL_BYTES))
    with pytest.raises(TransientProviderError) as caught:
        check(body, "vendor")
    assert caught.value.code == "invalid_provider_output" and body.closed


def test_bytes_are_still_accepted():
    assert image_output(png_bytes(8, 8), "vendor").body.read_all() == png_bytes(8, 8)
    assert video_output(mp4_bytes(), "vendor").content_type == "video/mp4"


# ------------------------------------------------------------------ the upload


class BodyRouter:
    """Answers with a downloaded (file-backed) video body."""

    def __init__(self, data: bytes):
        self.data, self.bodies = data, []

    def run(self, request, progress, on_attempt=None, refused_regions=frozenset()):
        body = Body()
        for start in range(0, len(self.data), 65536):
            body.write(self.data[start:start + 65536])
        self.bodies.append(body)
        return RoutedResult("vendor", ProviderResult(
            (ProviderOutput(body, "video/mp4", 64, 64, 1.0),)), ())


def run_job(storage, router):
    clock = Clock()
    return runner.run(SPEC, router, storage, lambda f, s: None, 10,
                      runner.OutagePolicy(retry_seconds=5, clock=clock, sleep=clock.sleep))


def test_the_upload_streams_the_body_with_its_length_and_hash(monkeypatch):
    data = padded_mp4_bytes(3 * base.SPOOL_BYTES)
    declared = []
    monkeypatch.setattr(Body, "read_all", lambda self: pytest.fail("read whole"))
    server = Uploads(fail_first=1)  # the PUT is sent again from the first byte
    try:
        storage = Storage(f"http://127.0.0.1:{server.server_address[1]}")
        slot = storage.create_output_slot
        storage.create_output_slot = lambda user, d: (declared.append(d), slot(user, d))[1]
        router = BodyRouter(data)
        before = len(temp_files())
        provider, ids = run_job(storage, router)
    finally:
        server.stop()
    assert provider == "vendor" and len(ids) == 1
    assert [body for _, body in server.received] == [data]
    assert declared[0]["size"] == len(data)
    assert declared[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert router.bodies[0].closed and len(temp_files()) == before


def test_a_failed_upload_deletes_the_body():
    server = Uploads(fail_first=1, status=403)  # not an outage: the job fails at once
    try:
        router = BodyRouter(os.urandom(2 * base.SPOOL_BYTES))
        with pytest.raises(runner.JobFailure):
            run_job(Storage(f"http://127.0.0.1:{server.server_address[1]}"), router)
    finally:
        server.stop()
    assert router.bodies[0].closed


def test_a_failed_attempts_bodies_are_deleted_when_the_job_ends():
    class FailingRouter(BodyRouter):
        def run(self, *args, **kwargs):
            super().run(*args, **kwargs)  # downloaded, then the attempt failed
            raise TransientProviderError("provider_unavailable", "every provider failed")

    router = FailingRouter(os.urandom(2 * base.SPOOL_BYTES))
    with pytest.raises(runner.JobFailure) as caught:
        run_job(Storage("http://127.0.0.1:9"), router)
    assert caught.value.code == "provider_unavailable" and router.bodies[0].closed


def test_a_reader_seeks_like_a_file():
    with Body() as body:
        body.write(os.urandom(2 * base.SPOOL_BYTES))
        with body.open() as reader:
            assert reader.seek(0, io.SEEK_END) == body.size
            assert reader.read(1) == b""
            reader.seek(-4, io.SEEK_END)
            assert reader.read() == body[-4:]


def test_collecting_keeps_each_greenthreads_bodies_apart(monkeypatch):
    """Under nameko, threading.local is eventlet's: one job's block never
    closes another's bodies, however their greenthreads interleave."""
    import eventlet
    from eventlet import corolocal

    monkeypatch.setattr(base, "_collectors", corolocal.local())
    kept: dict[str, list] = {}

    def job(name: str, fail: bool) -> None:
        try:
            with collecting() as bodies:
                Body().write(b"x")
                eventlet.sleep(0.01)  # the other job runs meanwhile
                Body()
                kept[name] = [(b, b.closed) for b in bodies]
                if fail:
                    raise RuntimeError
        except RuntimeError:
            pass

    pool = eventlet.GreenPool()
    pool.spawn(job, "a", True)
    pool.spawn(job, "b", False)
    pool.waitall()
    assert [len(kept[n]) for n in "ab"] == [2, 2]
    assert not any(closed for n in "ab" for _, closed in kept[n])  # open inside its block
    assert all(b.closed for n in "ab" for b, _ in kept[n])
    assert not {id(b) for b, _ in kept["a"]} & {id(b) for b, _ in kept["b"]}


def test_a_reader_of_a_closed_body_refuses_to_read():
    body = Body()
    body.write(os.urandom(2 * base.SPOOL_BYTES))
    reader = body.open()
    body.close()
    with pytest.raises(ValueError):
        reader.read(10)
