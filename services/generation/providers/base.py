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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

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


@dataclass(frozen=True)
class ProviderOutput:
    data: bytes = field(repr=False)
    content_type: str
    width: int
    height: int
    duration_s: float | None = None  # videos only


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
