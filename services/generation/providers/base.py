"""The one interface every model provider adapter implements.

A :class:`ProviderRequest` carries what a provider needs to render and nothing
that identifies an account: no user id, email, API key, job id or webhook. The
router hands the same request to each provider it tries, so keeping identity
out of this type keeps it out of every adapter (docs/design.md §4).

Errors split in two because the router treats them differently:
:class:`TransientProviderError` (timeouts, connection failures, 429, 5xx, a
malformed answer) is retried with backoff and counts against the provider's
circuit breaker; :class:`PermanentProviderError` (any other 4xx, a content
refusal) is about the request, so it is not retried on the same provider.

An output's bytes are a :class:`Body`: a download is written to it chunk by
chunk (in memory up to :data:`SPOOL_BYTES`, then in an anonymous temporary
file), its size and SHA-256 counted on the way, so a video is never held
whole in memory. Bodies made while :func:`collecting` runs (the runner wraps
a job in it) are closed when it ends, whatever happened: a failed attempt's
downloads are freed by the same rule as a delivered job's.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from services.common.contracts.generation import JOB_TYPES

TEXT_TO_IMAGE, IMAGE_TO_IMAGE, IMAGE_TO_VIDEO = JOB_TYPES

#: Camera moves a shot may ask for; the local renderer draws each of them and
#: the templates only use these.
CAMERA_MOVES = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out")

#: The error code of a vendor's content-policy refusal (every adapter raises
#: ``PermanentProviderError(CONTENT_REFUSED, ...)`` for one).
CONTENT_REFUSED = "content_refused"

#: ``progress(fraction, stage)``: fraction in [0, 1], stage a short snake_case word.
ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class Shot:
    """One segment of a storyboard video."""

    prompt: str
    camera: str = "static"
    duration_s: float = 3.0

    def __post_init__(self):
        if self.camera not in CAMERA_MOVES:
            raise ValueError(f"unknown camera move {self.camera!r}")
        if not self.duration_s > 0:
            raise ValueError("a shot's duration must be positive")

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "camera": self.camera, "duration_s": self.duration_s}


@dataclass(frozen=True)
class ProviderRequest:
    """What is sent to a provider: the prompt, the parameters, the source image.

    ``seed`` None lets the provider choose (the local renderer derives one from
    the prompt, so it stays deterministic). ``width``/``height`` None means the
    provider's default size.
    """

    job_type: str
    prompt: str
    negative_prompt: str | None = None
    n: int = 1
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    strength: float | None = None
    source_image: bytes | None = field(default=None, repr=False)
    source_content_type: str | None = None
    duration_s: float | None = None
    shots: tuple[Shot, ...] = ()

    def __post_init__(self):
        if self.job_type not in JOB_TYPES:
            raise ValueError(f"unknown job type {self.job_type!r}")
        if not 1 <= self.n <= 4:
            raise ValueError("n must be between 1 and 4")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive")
        if self.strength is not None and not 0.0 <= self.strength <= 1.0:
            raise ValueError("strength must be between 0 and 1")
        if self.job_type == IMAGE_TO_IMAGE and self.source_image is None:
            raise ValueError("image-to-image needs a source image")
        object.__setattr__(self, "shots", tuple(
            s if isinstance(s, Shot) else Shot(**s) for s in self.shots))

    @property
    def size(self) -> str | None:
        """``"WxH"``, or None when the provider's default applies."""
        if self.width and self.height:
            return f"{self.width}x{self.height}"
        return None


#: A body up to this size stays in memory; a larger one goes to a temporary file.
SPOOL_BYTES = 1024 * 1024

_collectors = threading.local()  # green under nameko's eventlet: one stack per job


@contextmanager
def collecting() -> Iterator[list[Body]]:
    """Every :class:`Body` made in this thread (greenlet) inside the block is
    closed when it ends, on success or failure; nested blocks each close their own."""
    stack = getattr(_collectors, "stack", None)
    if stack is None:
        stack = _collectors.stack = []
    bodies: list[Body] = []
    stack.append(bodies)
    try:
        yield bodies
    finally:
        stack.remove(bodies)
        for body in bodies:
            body.close()


class _Reader(io.RawIOBase):
    """A read-only view of a body's temporary file with its own position
    (``os.pread``): readers never disturb each other or the writer."""

    def __init__(self, file: BinaryIO, size: int):
        super().__init__()
        self._file, self._size, self._pos = file, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self._size - self._pos)
        if wanted <= 0:
            return 0
        if self._file.closed:  # never a read of whatever file reuses the number
            raise ValueError("the body is closed")
        data = os.pread(self._file.fileno(), wanted, self._pos)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, start + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


class Body:
    """An output's bytes, written once (:meth:`write`, or :meth:`of` some
    bytes) and then read (:meth:`open`, as often as needed, each reader with
    its own position). Up to ``spool_bytes`` they stay in memory, beyond that
    they move to an anonymous temporary file, removed by :meth:`close` (or by
    the system when the process ends). ``size`` and ``sha256`` are counted as
    the bytes are written. ``len(body)`` is its size and ``body[4:8]`` reads
    a few bytes (adapters sniff a file's magic number that way)."""

    def __init__(self, spool_bytes: int = SPOOL_BYTES):
        self.spool_bytes = spool_bytes
        self.size = 0
        self.closed = False
        self._memory: list[bytes] | None = []
        self._bytes: bytes | None = None
        self._file: BinaryIO | None = None
        self._sha = hashlib.sha256()
        stack = getattr(_collectors, "stack", None)
        if stack:
            stack[-1].append(self)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Body:
        """Bytes already in memory (a base64 answer, the local renderer's) as a body."""
        body = cls(spool_bytes=max(len(data), SPOOL_BYTES))
        body._memory, body._bytes, body.size = None, bytes(data), len(data)
        body._sha = None  # hashed when asked
        return body

    def write(self, chunk: bytes) -> None:
        if self.closed or self._bytes is not None:
            raise ValueError("the body is closed for writing")
        self._sha.update(chunk)
        self.size += len(chunk)
        if self._file is None and self.size <= self.spool_bytes:
            self._memory.append(bytes(chunk))
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile()
            self._file.writelines(self._memory)
            self._memory = None
        self._file.write(chunk)

    @property
    def sha256(self) -> str:
        if self._sha is None:
            self._sha = hashlib.sha256(self._bytes)
        return self._sha.hexdigest()

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def open(self) -> BinaryIO:
        """A new reader of the whole body, from its first byte (closing it
        leaves the body open)."""
        if self.closed:
            raise ValueError("the body is closed")
        if self._file is None:
            if self._bytes is None:
                self._bytes, self._memory = b"".join(self._memory), None
            return io.BytesIO(self._bytes)  # shares the bytes, no copy
        self._file.flush()
        return io.BufferedReader(_Reader(self._file, self.size), 1024 * 1024)

    def read_all(self) -> bytes:
        """Every byte at once: for small images and tests, never for a video."""
        with self.open() as reader:
            return reader.read()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: slice) -> bytes:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("a body is read by contiguous slices only")
        start, stop, _ = index.indices(self.size)
        with self.open() as reader:
            reader.seek(start)
            return reader.read(max(0, stop - start))

    def close(self) -> None:
        """Free the bytes (the temporary file is deleted); idempotent."""
        self.closed = True
        self._memory = self._bytes = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "closed" if self.closed else "memory" if self.in_memory else "file"
        return f"<Body {self.size} bytes, {where}>"


@dataclass(frozen=True)
class ProviderOutput:
    """One output. ``body`` may be given as bytes: it is wrapped in a :class:`Body`."""

    body: Body = field(repr=False)
    content_type: str
    width: int
    height: int
    duration_s: float | None = None  # videos only

    def __post_init__(self):
        if not isinstance(self.body, Body):
            object.__setattr__(self, "body", Body.of(self.body))

    @property
    def data(self) -> bytes:
        """All of the bytes at once: for tests and small images; the runner
        streams :attr:`body`."""
        return self.body.read_all()


@dataclass(frozen=True)
class ProviderResult:
    outputs: tuple[ProviderOutput, ...]


class ProviderError(Exception):
    """A provider could not produce the result; ``code`` is snake_case and may
    end up as the job's error code, ``message`` is for humans and logs."""

    transient = False

    def __init__(self, code: str, message: str = "", *, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(code, message)
        self.code = code
        self.message = message or code.replace("_", " ")
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TransientProviderError(ProviderError):
    """Worth retrying: timeout, connection failure, 429, 5xx, malformed answer."""

    transient = True


class PermanentProviderError(ProviderError):
    """Not worth retrying on this provider: a 4xx or a content refusal."""

    transient = False


class Provider(Protocol):
    """An adapter. ``job_types`` is what it can run; the router refuses a
    route that lists a provider for a type it does not support."""

    name: str
    job_types: frozenset[str]

    def generate(self, request: ProviderRequest,
                 progress: ProgressCallback | None = None) -> ProviderResult: ...


def report(progress: ProgressCallback | None, fraction: float, stage: str) -> None:
    if progress is not None:
        progress(max(0.0, min(1.0, float(fraction))), stage)


def submitting(provider: Provider, request: ProviderRequest,
               progress: ProgressCallback | None) -> None:
    """A remote provider's first step: a job type it cannot run is a permanent
    error (the router tries the next provider), then progress "submitting"."""
    if request.job_type not in provider.job_types:
        raise PermanentProviderError("unsupported_job_type",
                                     f"{provider.name} cannot run {request.job_type}")
    report(progress, 0.0, "submitting")


_UNSET = object()


def task_ended(provider: str, what: str, status: str) -> TransientProviderError:
    """A vendor's task that ended without a result (cancelled, expired,
    aborted): worth another try, here or at the next provider."""
    return TransientProviderError("provider_task_failed", f"{provider} {what} ended as {status}")


def unknown_status(provider: str, what: str) -> TransientProviderError:
    """A vendor's task in a status its documentation does not list."""
    return TransientProviderError("invalid_provider_output",
                                  f"{provider} sent an unknown {what} status")


def keep_polling(adapter, poll_interval_s, task_timeout_s, max_poll_errors,
                 sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
    """Set an async adapter's polling settings, the ones :func:`polling` reads."""
    adapter.poll_interval_s = float(poll_interval_s)
    adapter.task_timeout_s = float(task_timeout_s)
    adapter.max_poll_errors = int(max_poll_errors)
    adapter.sleep, adapter.clock = sleep, clock


def polling(adapter) -> dict:
    """:func:`wait_for_task`'s timing from an adapter's ``poll_interval_s``,
    ``task_timeout_s``, ``max_poll_errors``, ``sleep`` and ``clock`` (read
    at each wait, so a test may swap them)."""
    return {"interval_s": adapter.poll_interval_s, "timeout_s": adapter.task_timeout_s,
            "max_errors": adapter.max_poll_errors, "sleep": adapter.sleep,
            "clock": adapter.clock}


def wait_for_task(fetch: Callable[[], dict], read: Callable[[dict], object | None], *,
                  who: str, interval_s: float, timeout_s: float, max_errors: int,
                  sleep: Callable[[float], None], clock: Callable[[], float],
                  cancel: Callable[[], None] | None = None, first=_UNSET,
                  deadline: float | None = None, what: str = "the task",
                  gave_up: Callable[[ProviderError], None] | None = None):
    """Poll a vendor's task until it is done: ``fetch()`` asks the vendor (a
    transient failure is tolerated ``max_errors`` times in a row; then
    ``gave_up(error)`` is called and the error raised), ``read(answer)``
    returns the result when done, None while it runs, or raises how it ended.
    ``first``: an answer already in hand (the submission's), read before the
    first poll. Past ``timeout_s`` (or the absolute ``deadline`` on ``clock``
    when given) the task is cancelled (``cancel``, best effort) and the
    attempt fails with the transient ``provider_timeout``."""
    if deadline is None:
        deadline = clock() + timeout_s
    failed = 0
    answer = first
    while True:
        if answer is _UNSET:
            try:
                answer = fetch()
            except TransientProviderError as error:
                failed += 1
                if failed > max_errors:
                    if gave_up is not None:
                        gave_up(error)
                    raise
            else:
                failed = 0
        if answer is not _UNSET:
            result = read(answer)
            if result is not None:
                return result
        answer = _UNSET
        if clock() + interval_s > deadline:
            if cancel is not None:
                try:
                    cancel()
                except ProviderError:
                    pass  # best effort: the task ends on the vendor's side anyway
            raise TransientProviderError(
                "provider_timeout", f"{who} did not finish {what} within {timeout_s:g}s")
        sleep(interval_s)
