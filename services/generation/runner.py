"""Running one leased job: the source image in, the providers, the outputs
out to storage (an output slot per file, PUT, then one commit that checks
every declared size and hash).

Nothing here touches the database: the service passes a ``progress``
callback that records progress and renews the lease, and finishes the job
with what :func:`run` returns or raises.

An outage of our own infrastructure in the middle of a job (storage or its
object store restarting, an RPC without an answer, the broker reconnecting)
does not fail the job at once: :class:`Steps` retries the failed step with
backoff for up to ``GENERATION_INFRA_RETRY_SECONDS`` (the lease is kept alive
meanwhile), then fails it with ``storage_unavailable``. The provider call is
never repeated for it: it is paid, and the router already handles providers'
failures.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu.exceptions import OperationalError as KombuOperationalError
from nameko.exceptions import RemoteError, ReplyQueueExpiredWithPendingReplies, UnknownService
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from services.common.bounded_rpc import RpcTimeout
from services.common.contracts.billing import parse_size
from services.common.errors import DomainError
from services.generation import error_text
from services.generation.providers.base import (
    ProgressCallback,
    ProviderError,
    ProviderOutput,
    ProviderRequest,
    Shot,
)
from services.generation.providers.router import Router

log = logging.getLogger(__name__)
T = TypeVar("T")

# how the job's progress is split: the providers' work, then the uploads
PROVIDER_SHARE = 0.85


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
                self.waiting("waiting_for_storage")
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

    @classmethod
    def of(cls, job) -> JobSpec:
        return cls(str(job.id), str(job.user_id), job.type, job.prompt or "",
                   job.negative_prompt, dict(job.params or {}), tuple(job.shots or ()))


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
    width, height = parse_size(spec.params.get("size") or "1024x1024")
    return ProviderRequest(
        job_type=spec.type, prompt=spec.prompt, negative_prompt=spec.negative_prompt,
        n=int(spec.params.get("n") or 1), width=width, height=height,
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
    to a slot is idempotent), the commit is asked again (so is a commit)."""
    object_ids = []
    for index, output in enumerate(outputs):
        declared = {
            "job_id": spec.id, "content_type": output.content_type, "size": len(output.data),
            "sha256": hashlib.sha256(output.data).hexdigest(),
            "width": output.width, "height": output.height,
        }
        slot = steps.run("get an output slot",
                         lambda d=declared: storage.create_output_slot(spec.user_id, d))

        def put(slot=slot, output=output) -> None:
            response = transfers.request(slot["method"], slot["url"], data=output.data,
                                         headers=slot["headers"], timeout=timeout)
            response.raise_for_status()

        try:
            steps.run("upload an output", put)
        except requests.RequestException as exc:
            raise JobFailure("storage_unavailable", "cannot upload an output: "
                             + error_text.describe_http_failure(exc)) from None
        object_ids.append(slot["object_id"])
        progress(PROVIDER_SHARE + (1 - PROVIDER_SHARE) * (index + 1) / (len(outputs) + 1),
                 "uploading")
    steps.run("commit the outputs", lambda: storage.commit_objects(spec.user_id, object_ids))
    return object_ids


def run(spec: JobSpec, router: Router, storage, progress: Callable[[float, str], None],
        timeout: float, outages: OutagePolicy | None = None) -> tuple[str, list[str]]:
    """Run the job; ``(provider, output ids)`` or :class:`JobFailure`.
    ``storage`` is the storage service's proxy (its calls bounded by a
    timeout, :class:`services.common.bounded_rpc.BoundedProxy`)."""
    last = [0.0]

    def report(fraction: float, stage: str) -> None:
        last[0] = fraction
        progress(fraction, stage)

    steps = Steps(spec.id, outages or OutagePolicy(), lambda stage: progress(last[0], stage))
    report(0.02, "preparing")
    source, source_type = fetch_source(storage, spec, timeout, steps)
    request = provider_request(spec, source, source_type)
    try:
        routed = router.run(request, lambda f, stage: report(0.05 + (PROVIDER_SHARE - 0.05) * f,
                                                             stage))
    except ProviderError as exc:
        raise JobFailure(exc.code, exc.message) from None
    report(PROVIDER_SHARE, "uploading")
    try:
        object_ids = upload_outputs(storage, spec, routed.result.outputs, timeout, report, steps)
    except DomainError as exc:
        raise JobFailure("storage_unavailable" if exc.status >= 500 else "output_rejected",
                         exc.message, routed.provider) from None
    except JobFailure as exc:
        exc.provider = routed.provider
        raise
    return routed.provider, object_ids
