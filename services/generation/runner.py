"""Running leased jobs, in two layers.

:func:`run` runs one job: the source image in, the providers, the outputs
out to storage (an output slot per file, PUT, then one commit that checks
every declared size and hash). It does not touch the database: it reports
through a ``progress`` callback and returns the outputs or raises
:class:`JobFailure`.

:class:`Worker` is what the service's worker does with the run queue: it
claims the most urgent reserved job while the process has a free run slot,
holds the job's :class:`Lease` while :func:`run` runs (a heartbeat renews it,
progress is written at most once a second, a lost lease stops the job
without a word: another worker runs it), and finishes the job with what
:func:`run` returned (``succeeded``, or outputs deleted when the job is no
longer this worker's to deliver) or raised (``failed``).

An outage of our own infrastructure in the middle of a job (storage or its
object store restarting, an RPC without an answer, the broker reconnecting,
the database restarting) does not fail the job at once: :class:`Steps`
retries the failed step with backoff for up to
``GENERATION_INFRA_RETRY_SECONDS`` (the lease is kept alive meanwhile), then
fails it with ``storage_unavailable``. The provider call is never repeated
for it: it is paid, and the router already handles providers' failures. A
progress write that meets a database outage is skipped (the next one catches
up), and the job's final write (succeeded or failed) is retried through it
within the same bound, so a job whose outputs are stored is not left
``running`` for its lease to lapse and its provider to be called again.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu.exceptions import OperationalError as KombuOperationalError
from nameko.exceptions import RemoteError, ReplyQueueExpiredWithPendingReplies, UnknownService
from requests.adapters import HTTPAdapter
from sqlalchemy.orm import Session
from urllib3.util.retry import Retry

from services.common.bounded_rpc import BoundedProxy, RpcTimeout
from services.common.concurrency import Heartbeat
from services.common.contracts.generation import DEFAULT_N, DEFAULT_SIZE, JobState, parse_size
from services.common.db import is_outage
from services.common.errors import DomainError
from services.common.ids import utcnow
from services.common.messaging import Dispatch
from services.generation import disclosures, error_text, jobs, privacy
from services.generation.models import Job
from services.generation.providers.base import (
    ProgressCallback,
    ProviderError,
    ProviderOutput,
    ProviderRequest,
    Shot,
    collecting,
)
from services.generation.providers.router import AttemptCallback, Router
from services.generation.settings import GenerationSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

# how the job's progress is split: the providers' work, then the uploads
PROVIDER_SHARE = 0.85
# progress is written at most this often: enough for watchers
PROGRESS_WRITE_INTERVAL_SECONDS = 1.0


def transfer_session() -> requests.Session:
    """Transfers to and from storage reuse connections (a pool per host, shared
    by the process's jobs) instead of a TCP handshake for every file. A pooled
    connection the server has just closed (keep-alive ran out) is retried once
    on a new one: GET and PUT of a slot are idempotent."""
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=Retry(total=1, connect=1, read=1, status=0, redirect=0))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


transfers = transfer_session()


class JobFailure(Exception):
    """The job cannot succeed: ``code`` becomes its error code. The message is
    what the user, the webhook and the logs see, so it is cleaned here
    (:func:`services.generation.error_text.clean`), whoever raises it."""

    def __init__(self, code: str, message: str, provider: str | None = None):
        message = error_text.clean(message)
        super().__init__(code, message)
        self.code, self.message, self.provider = code, message, provider


# ------------------------------------------------------------------ outages

# what a RemoteError from one of our services says when an infrastructure
# call failed inside it (its database, the object store, the network)
REMOTE_INFRA_ERRORS = frozenset({
    "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "BrokenPipeError",
    "TimeoutError", "timeout", "OSError", "MaxRetryError", "NewConnectionError",
    "ConnectTimeoutError", "ReadTimeoutError", "ProtocolError", "RemoteDisconnected",
    "OperationalError", "InterfaceError", "DisconnectionError", "ConnectTimeout", "ReadTimeout",
    "UnknownService", "ReplyQueueExpiredWithPendingReplies",
})
# an object store's codes for "try again"
S3_RETRY_CODES = ("ServiceUnavailable", "InternalError", "SlowDown", "RequestTimeout")


def infrastructure_failure(exc: BaseException) -> str | None:
    """What went wrong when ``exc`` is an outage of our own infrastructure
    (storage or billing down or timing out, the broker reconnecting, the
    object store refusing connections or answering 5xx), which a job waits
    out; None for anything else (a refusal, a bug), which fails it at once.
    Providers' failures never get here: the router handles them."""
    if isinstance(exc, RpcTimeout):
        return str(exc)
    if is_outage(exc):  # this service's own database
        return f"the database is unavailable ({type(exc).__name__})"
    if isinstance(exc, UnknownService):
        return f"{exc} (no instance is consuming)"
    if isinstance(exc, ReplyQueueExpiredWithPendingReplies | KombuOperationalError
                  | AmqpConnectionError):
        return f"the broker connection failed ({type(exc).__name__})"
    if isinstance(exc, DomainError):
        return f"storage answered {exc.status} ({exc.code})" if exc.status >= 500 else None
    if isinstance(exc, RemoteError):
        if exc.exc_type in REMOTE_INFRA_ERRORS or (
                exc.exc_type == "S3Error" and any(c in str(exc.value) for c in S3_RETRY_CODES)):
            return f"a service failed with {exc.exc_type}"
        return None
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return error_text.describe_http_failure(exc) if status in (500, 502, 503, 504) else None
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return error_text.describe_http_failure(exc)
    if isinstance(exc, ConnectionError | TimeoutError):  # OSError's: the broker's socket
        return f"a connection failed ({type(exc).__name__})"
    return None


@dataclass(frozen=True)
class OutagePolicy:
    """How long a running job waits out an outage of our infrastructure
    (``GENERATION_INFRA_RETRY_SECONDS``), retrying the failed step with
    backoff from ``base_delay`` to ``max_delay`` seconds."""

    retry_seconds: float = 120.0
    base_delay: float = 1.0
    max_delay: float = 10.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


class Steps:
    """Runs one job's steps (not the provider call, which is paid), retrying
    a step that fails on an infrastructure outage until the policy's bound
    since its first failure; then the job fails with ``storage_unavailable``.
    Before each wait ``waiting(stage)`` is called: the service records the
    stage (the user sees ``waiting_for_storage``) and stops the job if its
    lease was lost."""

    def __init__(self, job_id: str, policy: OutagePolicy, waiting: Callable[[str], None]):
        self.job_id, self.policy, self.waiting = job_id, policy, waiting

    def run(self, what: str, step: Callable[[], T], code: str = "storage_unavailable") -> T:
        first_failure = None
        delay = self.policy.base_delay
        tries = 0
        while True:
            try:
                return step()
            except Exception as exc:
                reason = infrastructure_failure(exc)
                if reason is None:
                    raise
                tries += 1
                now = self.policy.clock()
                first_failure = now if first_failure is None else first_failure
                left = first_failure + self.policy.retry_seconds - now
                if left <= 0:
                    log.warning("job %s: cannot %s after %d tries: %s", self.job_id, what, tries,
                                error_text.clean(reason))
                    raise JobFailure(code, f"cannot {what}: {reason}") from None
                wait = min(delay, left)
                log.warning("job %s: cannot %s (%s); try %d, retrying in %.1fs", self.job_id,
                            what, error_text.clean(reason), tries, wait)
                try:
                    self.waiting("waiting_for_storage")
                except Exception as exc:  # the stage is not recorded; the wait goes on
                    if not is_outage(exc):
                        raise
                self.policy.sleep(wait)
                delay = min(delay * 2, self.policy.max_delay)


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs of a job row, read before it starts running."""

    id: str
    user_id: str
    type: str
    prompt: str
    negative_prompt: str | None
    params: dict
    shots: tuple[dict, ...]
    # the regions the user refuses processing in, as the job starts: its
    # route skips providers there
    refused_regions: frozenset[str] = frozenset()

    @classmethod
    def of(cls, job, refused_regions: frozenset[str] = frozenset()) -> JobSpec:
        return cls(str(job.id), str(job.user_id), job.type, job.prompt or "",
                   job.negative_prompt, dict(job.params or {}), tuple(job.shots or ()),
                   refused_regions)


def fetch_source(storage, spec: JobSpec, timeout: float,
                 steps: Steps) -> tuple[bytes | None, str | None]:
    """The source image's bytes, read from storage at its internal address."""
    source_id = spec.params.get("source_image_id")
    if not source_id:
        return None, None
    try:
        source = steps.run("find the source image",
                           lambda: storage.get_source(spec.user_id, source_id))
    except DomainError as exc:
        if exc.status == 404:
            raise JobFailure("source_unavailable", "the source image is gone") from None
        raise

    def read() -> bytes:
        response = transfers.get(source["url"], timeout=timeout)
        response.raise_for_status()
        return response.content

    try:
        return steps.run("read the source image", read), source["content_type"]
    except requests.RequestException as exc:
        raise JobFailure("storage_unavailable", "cannot read the source image: "
                         + error_text.describe_http_failure(exc)) from None


def provider_request(spec: JobSpec, source: bytes | None, source_type: str | None) -> ProviderRequest:
    """What providers see: prompt, parameters and source bytes, never who asked."""
    width, height = parse_size(spec.params.get("size") or DEFAULT_SIZE)
    return ProviderRequest(
        job_type=spec.type, prompt=spec.prompt, negative_prompt=spec.negative_prompt,
        n=int(spec.params.get("n") or DEFAULT_N), width=width, height=height,
        seed=spec.params.get("seed"), strength=spec.params.get("strength"),
        source_image=source, source_content_type=source_type,
        duration_s=spec.params.get("duration_s"),
        shots=tuple(Shot(**{k: v for k, v in s.items() if k in ("prompt", "camera", "duration_s")})
                    for s in spec.shots),
    )


def upload_outputs(storage, spec: JobSpec, outputs: tuple[ProviderOutput, ...], timeout: float,
                   progress: ProgressCallback, steps: Steps) -> list[str]:
    """Each output into a storage slot, then one commit (which verifies the
    bytes); returns the committed object ids. Each step is retried through
    an outage: a slot is asked for again, the same slot is PUT again (a PUT
    to a slot is idempotent), the commit is asked again (so is a commit).
    A body is streamed from its file with its exact length (its size and hash
    were counted as it was downloaded): never read into memory whole."""
    object_ids = []
    for index, output in enumerate(outputs):
        body = output.body
        declared = {
            "job_id": spec.id, "content_type": output.content_type, "size": body.size,
            "sha256": body.sha256, "width": output.width, "height": output.height,
        }
        slot = steps.run("get an output slot",
                         lambda d=declared: storage.create_output_slot(spec.user_id, d))

        def put(slot=slot, body=body) -> None:
            headers = {**slot["headers"], "Content-Length": str(body.size)}
            with body.open() as reader:
                response = transfers.request(slot["method"], slot["url"], data=reader,
                                             headers=headers, timeout=timeout)
            response.raise_for_status()

        try:
            steps.run("upload an output", put)
        except requests.RequestException as exc:
            raise JobFailure("storage_unavailable", "cannot upload an output: "
                             + error_text.describe_http_failure(exc)) from None
        body.close()  # uploaded: its temporary file is not needed any more
        object_ids.append(slot["object_id"])
        progress(PROVIDER_SHARE + (1 - PROVIDER_SHARE) * (index + 1) / (len(outputs) + 1),
                 "uploading")
    steps.run("commit the outputs", lambda: storage.commit_objects(spec.user_id, object_ids))
    return object_ids


def run(spec: JobSpec, router: Router, storage, progress: Callable[[float, str], None],
        timeout: float, outages: OutagePolicy | None = None,
        on_attempt: AttemptCallback | None = None) -> tuple[str, list[str]]:
    """Run the job; ``(provider, output ids)`` or :class:`JobFailure`.
    ``storage`` is the storage service's proxy (its calls bounded by a
    timeout, :class:`services.common.bounded_rpc.BoundedProxy`); ``on_attempt``
    hears of each provider try (the disclosure log)."""
    last = [0.0]

    def report(fraction: float, stage: str) -> None:
        last[0] = fraction
        progress(fraction, stage)

    steps = Steps(spec.id, outages or OutagePolicy(), lambda stage: progress(last[0], stage))
    report(0.02, "preparing")
    source, source_type = fetch_source(storage, spec, timeout, steps)
    request = provider_request(spec, source, source_type)
    # every output body downloaded for the job (a failed attempt's too) is
    # closed, its temporary file deleted, when the job's run ends, however
    with collecting():
        try:
            named = {"model": spec.params["model"]} if spec.params.get("model") else {}
            routed = router.run(request, lambda f, stage: report(
                0.05 + (PROVIDER_SHARE - 0.05) * f, stage), on_attempt,
                refused_regions=spec.refused_regions, **named)
        except ProviderError as exc:
            raise JobFailure(exc.code, exc.message) from None
        report(PROVIDER_SHARE, "uploading")
        try:
            object_ids = upload_outputs(storage, spec, routed.result.outputs, timeout, report,
                                        steps)
        except DomainError as exc:
            raise JobFailure("storage_unavailable" if exc.status >= 500 else "output_rejected",
                             exc.message, routed.provider) from None
        except JobFailure as exc:
            exc.provider = routed.provider
            raise
    return routed.provider, object_ids


# ------------------------------------------------------------------ the worker


class LeaseLost(Exception):
    """The job's lease ran out while this worker ran it."""


class Lease:
    """This worker's lease on a running job, held ``with`` it while the job
    runs: a heartbeat renews it every third of ``GENERATION.LEASE_SECONDS``
    whatever a provider call (or an outage the job waits out) takes, on its
    own session (the worker's is busy with the job). :meth:`progress` writes
    the job's progress, also renewing the lease, at most once per
    ``PROGRESS_WRITE_INTERVAL_SECONDS``. Either one finding the lease gone
    (it ran out and another worker took the job) raises :class:`LeaseLost`."""

    def __init__(self, db: Session, settings: GenerationSettings, job_id, token: str,
                 clock: Callable[[], float] = time.monotonic):
        self.db, self.settings, self.job_id, self.token, self.clock = (
            db, settings, job_id, token, clock)
        self.last_write: float | None = None
        self.heartbeat = Heartbeat(settings.lease_seconds / 3, self.renew)

    def __enter__(self) -> Lease:
        self.heartbeat.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.heartbeat.__exit__(*exc)

    def renew(self) -> bool:
        with Session(self.db.get_bind()) as session:
            kept = jobs.renew_lease(session, self.settings, self.job_id, self.token, utcnow())
            session.commit()
            return kept

    def check(self) -> None:
        if not self.heartbeat.alive:
            raise LeaseLost(str(self.job_id))

    def progress(self, fraction: float, stage: str) -> None:
        self.check()
        now = self.clock()
        if self.last_write is not None and now - self.last_write < PROGRESS_WRITE_INTERVAL_SECONDS:
            return
        try:
            kept = jobs.record_progress(self.db, self.settings, self.job_id, self.token, fraction,
                                        stage, utcnow())
            self.db.commit()
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.db.rollback()  # progress is for watchers: skipped, the next write catches up
            log.warning("job %s: progress not recorded (the database is unavailable)",
                        self.job_id)
            return
        if not kept:
            raise LeaseLost(str(self.job_id))
        self.last_write = now


@dataclass
class Worker:
    """Runs reserved jobs on a service worker's session. ``storage`` is the
    storage service's proxy: :func:`run` calls it through a
    :class:`~services.common.bounded_rpc.BoundedProxy`."""

    db: Session
    settings: GenerationSettings
    router: Router
    storage: Any
    dispatch: Dispatch

    def run_next(self, slots: threading.BoundedSemaphore) -> None:
        """Run reserved jobs, most urgent first, while the process has a free
        slot in ``slots`` and there is one to run."""
        while slots.acquire(blocking=False):
            try:
                job = jobs.claim_next(self.db, self.settings, utcnow())
                self.db.commit()
                if job is None:
                    return
                self.execute(job)
            finally:
                slots.release()

    def execute(self, job) -> None:
        """Run a job this worker has just leased (``jobs.claim_next``) to its end."""
        token = job.lease_token
        spec = JobSpec.of(job, privacy.refused_regions(self.db, job.user_id))
        log.info("job started", extra={"job_id": spec.id, "attempt": job.attempt})
        storage = BoundedProxy(self.storage, self.settings.rpc_timeout_seconds, "storage")
        outages = OutagePolicy(retry_seconds=self.settings.infra_retry_seconds)
        self.end_read()
        lease = Lease(self.db, self.settings, job.id, token)
        lease.last_write = lease.clock()  # the claim has just written the lease and the stage
        try:
            with lease:
                provider, output_ids = run(spec, self.router, storage, lease.progress,
                                           self.settings.upload_timeout_seconds, outages,
                                           self.disclosures(job))
            lease.check()
        except LeaseLost:
            self.db.rollback()
            log.warning("job %s: lease lost, another worker runs it", spec.id)
            return
        except JobFailure as failure:
            self.finish(spec, "record the failure",
                        lambda failure=failure: self.fail(job, token, failure))
            return
        except Exception as exc:
            # a bug, or a failure nothing expects: the job fails now rather than
            # staying "running" until its lease lapses and a paid provider call
            # is made again; the log names the place, not the text (it may hold
            # a URL)
            self.finish(spec, "record the failure", lambda: self.fail(
                job, token, JobFailure("internal_error", "the job failed on an internal error")))
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            log.error("job %s: %s at %s:%s: %s", spec.id, type(exc).__name__,
                      Path(frame.filename).name, frame.lineno, error_text.clean(exc))
            return
        tried = []

        def succeed() -> None:
            # a commit whose answer was lost in the outage may have happened
            if tried and self.succeeded_already(job, output_ids):
                return
            tried.append(True)
            self.succeed(job, token, spec, provider, output_ids)

        self.finish(spec, "record the success", succeed)

    def end_read(self) -> None:
        """End the session's read (the refused regions) before the run: its
        connection goes back to the pool instead of being held through a
        provider call that can take minutes, by every run slot. Nothing was
        written, so an outage here changes nothing: the run goes on."""
        try:
            self.db.commit()
        except Exception as exc:
            if not is_outage(exc):
                raise
            try:
                self.db.rollback()
            except Exception:  # the connection is gone already: nothing to undo
                log.debug("rollback after a failed read's end failed", exc_info=True)

    def finish(self, spec: JobSpec, what: str, write: Callable[[], None]) -> None:
        """The job's final write, retried through a database outage for up to
        ``GENERATION_INFRA_RETRY_SECONDS``; past that the job stays ``running``
        and the recovery timer requeues it when its lease lapses."""
        steps = Steps(spec.id, OutagePolicy(retry_seconds=self.settings.infra_retry_seconds),
                      lambda _stage: None)

        def attempt() -> None:
            try:
                write()
            except Exception:
                try:
                    self.db.rollback()
                except Exception:  # the connection is gone already: nothing to undo
                    log.debug("rollback after a failed write failed", exc_info=True)
                raise

        try:
            steps.run(what, attempt)
        except JobFailure as exc:
            log.error("job %s: cannot %s: %s; its lease will lapse", spec.id, what, exc.message)

    def succeeded_already(self, job, output_ids: list[str]) -> bool:
        """Did an earlier try of the success write commit (its answer lost)?"""
        row = self.db.get(Job, job.id, populate_existing=True)
        return (row is not None and row.attempt == job.attempt
                and row.status == JobState.SUCCEEDED
                and [str(i) for i in row.output_ids or []] == [str(i) for i in output_ids])

    def disclosures(self, job) -> disclosures.Recorder:
        """The job's disclosure log: a row per request sent to a vendor."""
        return disclosures.Recorder(
            self.db.get_bind(), job.user_id, job.id, job.attempt,
            lambda name: self.router.region_of(name),
            lambda name: disclosures.sends_data(self.router.providers.get(name)),
            retry_seconds=self.settings.infra_retry_seconds)

    def succeed(self, job, token: str, spec: JobSpec, provider: str,
                output_ids: list[str]) -> None:
        """Deliver the outputs; a job that is no longer this worker's to finish,
        or whose hold expired (billing gave its credits back), is not
        delivered: its outputs are deleted."""
        done = jobs.succeed(self.db, self.settings, job.id, token, output_ids, provider, utcnow(),
                            self.dispatch)
        self.db.commit()
        if done:
            log.info("job succeeded", extra={"job_id": spec.id, "provider": provider,
                                             "outputs": len(output_ids)})
            return
        for object_id in output_ids:
            try:
                self.storage.delete_object(spec.user_id, str(object_id))
            except DomainError as exc:
                log.warning("could not delete an undelivered output: %s", exc.code,
                            extra={"job_id": spec.id, "object_id": str(object_id)})

    def fail(self, job, token: str, failure: JobFailure) -> None:
        """Fail the running job with ``failure`` (whose message is already
        clean: it is what the user, the webhook and the log see). Tried again
        after an outage, a failure already recorded is left as it is (the
        lease token is gone)."""
        self.db.rollback()
        jobs.fail(self.db, self.settings, job.id, token, failure.code, failure.message,
                  failure.provider, utcnow(), self.dispatch)
        self.db.commit()
        log.warning("job failed", extra={"job_id": str(job.id), "code": failure.code,
                                         "reason": failure.message})
