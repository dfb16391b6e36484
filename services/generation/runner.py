"""Running one leased job: the source image in, the providers, the outputs
out to storage (an output slot per file, PUT, then one commit that checks
every declared size and hash).

Nothing here touches the database: the service passes a ``progress``
callback that records progress and renews the lease, and finishes the job
with what :func:`run` returns or raises.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from services.common.contracts.billing import parse_size
from services.common.errors import DomainError
from services.generation.providers.base import (
    ProgressCallback,
    ProviderError,
    ProviderOutput,
    ProviderRequest,
    Shot,
)
from services.generation.providers.router import Router

log = logging.getLogger(__name__)

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
    """The job cannot succeed: ``code`` becomes its error code."""

    def __init__(self, code: str, message: str, provider: str | None = None):
        super().__init__(code, message)
        self.code, self.message, self.provider = code, message, provider


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


def fetch_source(storage, spec: JobSpec, timeout: float) -> tuple[bytes | None, str | None]:
    """The source image's bytes, read from storage at its internal address."""
    source_id = spec.params.get("source_image_id")
    if not source_id:
        return None, None
    try:
        source = storage.get_source(spec.user_id, source_id)
    except DomainError as exc:
        if exc.status == 404:
            raise JobFailure("source_unavailable", "the source image is gone") from None
        raise
    try:
        response = transfers.get(source["url"], timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise JobFailure("storage_unavailable", f"cannot read the source image: {exc}") from None
    return response.content, source["content_type"]


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
                   progress: ProgressCallback) -> list[str]:
    """Each output into a storage slot, then one commit (which verifies the
    bytes); returns the committed object ids."""
    object_ids = []
    for index, output in enumerate(outputs):
        slot = storage.create_output_slot(spec.user_id, {
            "job_id": spec.id, "content_type": output.content_type, "size": len(output.data),
            "sha256": hashlib.sha256(output.data).hexdigest(),
            "width": output.width, "height": output.height,
        })
        try:
            response = transfers.request(slot["method"], slot["url"], data=output.data,
                                        headers=slot["headers"], timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise JobFailure("storage_unavailable", f"cannot upload an output: {exc}") from None
        object_ids.append(slot["object_id"])
        progress(PROVIDER_SHARE + (1 - PROVIDER_SHARE) * (index + 1) / (len(outputs) + 1),
                 "uploading")
    storage.commit_objects(spec.user_id, object_ids)
    return object_ids


def run(spec: JobSpec, router: Router, storage, progress: Callable[[float, str], None],
        timeout: float) -> tuple[str, list[str]]:
    """Run the job; ``(provider, output ids)`` or :class:`JobFailure`."""
    progress(0.02, "preparing")
    source, source_type = fetch_source(storage, spec, timeout)
    request = provider_request(spec, source, source_type)
    try:
        routed = router.run(request, lambda f, stage: progress(0.05 + (PROVIDER_SHARE - 0.05) * f,
                                                               stage))
    except ProviderError as exc:
        raise JobFailure(exc.code, exc.message) from None
    progress(PROVIDER_SHARE, "uploading")
    try:
        object_ids = upload_outputs(storage, spec, routed.result.outputs, timeout, progress)
    except DomainError as exc:
        raise JobFailure("storage_unavailable" if exc.status >= 500 else "output_rejected",
                         exc.message, routed.provider) from None
    except JobFailure as exc:
        exc.provider = routed.provider
        raise
    return routed.provider, object_ids
