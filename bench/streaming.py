"""Large outputs: a 100 MB video streamed from the vendor to storage and to
the client, with the gateway's and generation's memory staying flat.

Measured: the whole stack as processes (gateway under gunicorn, auth,
notifications, storage on the fs backend, billing, generation, privacy;
SQLite databases, one RabbitMQ vhost) and a fake async task video vendor on
loopback (tests/fakes/providers.py) whose result is a valid MP4 of SIZE_MB
megabytes (a tiny real MP4 and a ``free`` box of zeros, written by the fake
chunk by chunk). One image-to-video job runs through the gateway (the source
image uploaded first), then its output is downloaded through the gateway
(``GET /v1/images/{id}/content`` -> the fs backend's signed ``/v1/files/``
URL), streamed to a file.

Memory: the resident set (``VmRSS``, sampled every 20 ms) and its high-water
mark (``VmHWM``, exact) of the gateway's worker processes, generation and
storage, after a warm-up job with a small video (so the libraries a video job
loads are counted in the baseline) and after the large job. PASS when the
gateway's and generation's high-water marks grew by at most MAX_GROWTH_MB.

Time, against a floor measured in the same run: the same bytes copied once
over loopback HTTP with ``requests`` streaming into a file (the fake serving
them to this process). The job moves them three times (vendor -> generation's
temporary file, generation -> the gateway -> storage's file, then storage
reads them to check the hash), the client's download once.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import requests

from bench.pipeline import stack
from bench.stack import children, processes
from services.storage.backends.fs import TEMP_PREFIX
from tests.fakes.providers import FakeAsyncTasks, Streamed, padded_mp4, png_bytes

SIZE_MB = int(os.environ.get("DARKROOM_BENCH_STREAMING_MB", "100"))
MAX_GROWTH_MB = float(os.environ.get("DARKROOM_BENCH_STREAMING_MAX_GROWTH_MB", "30"))
MB = 1024 * 1024
JOB = {"type": "image-to-video", "prompt": "a slow pan over a harbour", "size": "512x512",
       "duration_s": 4}


# ---------------------------------------------------------------- memory


def status_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Poller:
    """Calls ``poll()`` every ``interval`` seconds on a thread while ``with`` it."""

    interval = 0.02

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Sampler(Poller):
    """Samples ``VmRSS`` of ``pids`` (name -> pid) every 20 ms, keeping each one's peak."""

    def __init__(self, pids: dict[str, int]):
        super().__init__()
        self.pids, self.peak = pids, {name: 0 for name in pids}

    def poll(self) -> None:
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak[name], status_kb(pid, "VmRSS"))


def snapshot(pids: dict[str, int]) -> dict[str, tuple[int, int]]:
    return {name: (status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")) for name, pid in pids.items()}


# ---------------------------------------------------------------- the vendor


class Timed:
    """A streamed result that notes when the vendor's first and last chunk went out."""

    def __init__(self, streamed: Streamed):
        self.streamed, self.first, self.last = streamed, None, None

    def result(self) -> Streamed:
        def chunks():
            for chunk in self.streamed.chunks():
                self.first = self.first or time.time()
                yield chunk
            self.last = time.time()

        return Streamed(self.streamed.length, chunks, self.streamed.declared)


class DiskWatch(Poller):
    """Watches storage's directory (every 10 ms) for the large output: when
    its temporary file first has bytes (the PUT reached the disk), when it
    is complete, and when it is in place under its key (fsynced, renamed)."""

    interval = 0.01

    def __init__(self, root: Path, size: int):
        super().__init__()
        self.root, self.size = root, size
        self.started = self.written = self.stored = None

    def poll(self) -> None:
        for path in self.root.rglob("*") if self.root.exists() else ():
            try:
                size = path.stat().st_size
            except OSError:
                continue
            temporary = path.name.startswith(TEMP_PREFIX)
            if temporary and size and self.started is None:
                self.started = time.time()
            if size == self.size and temporary and self.written is None:
                self.written = time.time()
            if size == self.size and not temporary and self.stored is None:
                self.stored = time.time()


def floor(url: str, tmp: Path) -> float:
    """Seconds to copy the result once over loopback HTTP into a file."""
    started = time.perf_counter()
    with requests.get(url, stream=True, timeout=60) as response, \
            open(tmp / "floor.bin", "wb") as out:
        response.raise_for_status()
        for chunk in response.iter_content(256 * 1024):
            out.write(chunk)
    elapsed = time.perf_counter() - started
    assert (tmp / "floor.bin").stat().st_size == SIZE_MB * MB
    (tmp / "floor.bin").unlink()
    return elapsed


# ---------------------------------------------------------------- the job


def run_job(client, source_id: str) -> dict:
    """Submit the job; its final state (succeeded, or the assertion says why not)."""
    submitted = time.time()
    response = client.session.post(f"{client.base}/v1/generations",
                                   json={**JOB, "source_image_id": source_id},
                                   headers=client.headers, timeout=30)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 300
    while True:
        job = client.session.get(f"{client.base}/v1/generations/{job_id}",
                                 headers=client.headers, timeout=30).json()
        if job["status"] not in ("queued", "reserved", "running"):
            break
        assert time.monotonic() < deadline, f"the job did not finish: {job}"
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    job["submitted_at"] = submitted
    return job


def download(client, object_id: str, tmp: Path) -> tuple[int, float]:
    """The output through the gateway, streamed to a file: (bytes, seconds)."""
    started = time.perf_counter()
    size = 0
    with client.session.get(f"{client.base}/v1/images/{object_id}/content",
                            headers=client.headers, stream=True, timeout=60) as response, \
            open(tmp / "output.mp4", "wb") as out:
        response.raise_for_status()
        for chunk in response.iter_content(256 * 1024):
            out.write(chunk)
            size += len(chunk)
    elapsed = time.perf_counter() - started
    (tmp / "output.mp4").unlink()
    return size, elapsed


def main() -> None:
    big = Timed(padded_mp4(SIZE_MB * MB))
    with FakeAsyncTasks(api_key="sk-bench", polls_to_finish=1) as vendor, \
            processes() as (start, free_port), tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        started = start.by_name
        client = stack(start, free_port, vendor.url, tmp, warm_up=False, providers={
            "clips": {"type": "async_task", "base_url": vendor.url, "api_key": "sk-bench",
                      "poll_interval_s": 0.1, "max_download_bytes": 2 * SIZE_MB * MB},
        }, routes={"image-to-video": ["clips"]})
        gateway = started["gateway"].proc.pid
        pids = {f"gateway worker {n}": pid for n, pid in enumerate(children(gateway), 1)}
        pids["generation"] = started["generation"].proc.pid
        pids["storage"] = started["storage"].proc.pid

        upload = client.session.post(f"{client.base}/v1/uploads", headers=client.headers,
                                     files={"file": ("source.png", png_bytes(512, 512),
                                                     "image/png")}, timeout=30)
        assert upload.status_code in (200, 201), upload.text
        source_id = upload.json()["id"]

        # warm-up: a small video through every step, so what a video job loads
        # (PyAV, the upload path) is in the baseline
        vendor.result = padded_mp4(2 * MB)
        warm = run_job(client, source_id)
        download(client, warm["outputs"][0], tmp)
        before = snapshot(pids)

        vendor.result = big.result()
        with Sampler(pids) as sampler, DiskWatch(tmp / "objects", SIZE_MB * MB) as disk:
            job = run_job(client, source_id)
            size, download_s = download(client, job["outputs"][0], tmp)
        after = snapshot(pids)
        vendor_s, vendor_done = big.last - big.first, big.last
        floor_s = floor(f"{vendor.url}/results/floor", tmp)  # the same bytes again

    assert size == SIZE_MB * MB, f"downloaded {size} bytes of {SIZE_MB * MB}"
    finished = datetime.fromisoformat(job["finished_at"]).timestamp()
    job_s = finished - job["submitted_at"]
    print(f"one image-to-video job with a {SIZE_MB} MB MP4 from a fake async task vendor on "
          f"loopback, the whole stack as processes (fs storage backend); floor: the same "
          f"{SIZE_MB} MB copied once over loopback HTTP with requests, streamed to a file")
    print("memory (MB): RSS before -> after, sampled peak during; high-water mark before -> after")
    growth = {}
    for name in pids:
        (rss0, hwm0), (rss1, hwm1) = before[name], after[name]
        growth[name] = (hwm1 - hwm0) / 1024
        print(f"  {name:18s} {rss0 / 1024:7.1f} -> {rss1 / 1024:7.1f}   peak "
              f"{sampler.peak[name] / 1024:7.1f}   HWM {hwm0 / 1024:7.1f} -> {hwm1 / 1024:7.1f}"
              f"   (+{growth[name]:.1f})")
    print("time (s):")
    print(f"  floor: one loopback copy           {floor_s:7.2f}   "
          f"({SIZE_MB / floor_s:.0f} MB/s)")
    print(f"  vendor -> generation download      {vendor_s:7.2f}   "
          f"({vendor_s / floor_s:.1f}x floor)")
    print(f"  then check, upload, hash, commit   {finished - vendor_done:7.2f}   "
          f"({(finished - vendor_done) / floor_s:.1f}x floor), of which:")
    if disk.started and disk.written and disk.stored:
        print(f"    video check, slot RPC, PUT start {disk.started - vendor_done:7.2f}")
        print(f"    PUT -> gateway -> storage's file {disk.written - disk.started:7.2f}   "
              f"({(disk.written - disk.started) / floor_s:.1f}x floor)")
        print(f"    fsync and rename                 {disk.stored - disk.written:7.2f}")
        print(f"    PUT answered, commit (re-hash)   {finished - disk.stored:7.2f}")
    print(f"  job: submit -> succeeded           {job_s:7.2f}   ({job_s / floor_s:.1f}x floor; "
          f"polls every 0.1 s before the download)")
    print(f"  client download through gateway    {download_s:7.2f}   "
          f"({download_s / floor_s:.1f}x floor)")
    checked = {name: g for name, g in growth.items() if not name.startswith("storage")}
    worst = max(checked, key=checked.get)
    verdict = "PASS" if checked[worst] <= MAX_GROWTH_MB else "FAIL"
    print(f"{verdict}: largest high-water growth of the gateway and generation "
          f"{checked[worst]:.1f} MB ({worst}; limit {MAX_GROWTH_MB:g} MB for {SIZE_MB} MB)")


if __name__ == "__main__":
    main()
