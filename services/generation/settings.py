"""The ``GENERATION`` section of deploy/config/generation.yaml, read once (its
``PROVIDERS_FILE`` names the providers file, read by the provider router and
prompt assist: docs/providers.md; ``MODERATION_POLICY`` and ``TEMPLATES_DIR``
go to :mod:`services.generation.prompts`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.config import Section

PROMPT_RETENTION = ("keep", "redact")


@dataclass(frozen=True)
class GenerationSettings:
    # jobs queued, reserved or running per user; past it, 429 rate_limited
    max_active_jobs_per_user: int = 10
    # jobs one process runs at once (keep it below max_workers: RPCs need workers too);
    # a running job mostly waits (on its provider, on storage), so a process runs many
    max_running_jobs: int = 32
    queue_retry_after_seconds: int = 30
    # "keep": prompts stay with the job (the user's history); "redact": they
    # are removed when the job ends (a redacted job cannot be replayed)
    prompt_retention: str = "keep"
    # a running job's lease, renewed by its worker's heartbeat; a worker silent
    # this long is presumed dead and its job runs again elsewhere
    lease_seconds: int = 120
    # where a job's outputs are uploaded from (the storage slot's URL is
    # used as issued)
    upload_timeout_seconds: float = 120.0
    # a running job waits out an outage of storage, the object store or the
    # broker this long (retrying the failed step) before it fails
    infra_retry_seconds: float = 120.0
    # a running job's RPC to storage gives up after this long (then retried
    # as an outage): longer than a commit of the largest output takes
    rpc_timeout_seconds: float = 30.0
    # how long a price billing quoted is used for new jobs (0: ask every time)
    quote_cache_seconds: float = 60.0
    # webhooks: tries and the private networks an operator allows
    webhook_max_tries: int = 8
    # the total deadline of one attempt: DNS, connect, TLS, the answer's headers and body
    webhook_timeout_seconds: float = 15.0
    webhook_allow: tuple[str, ...] = ()
    # attempts one process runs at once, and at most this many for one receiver (origin)
    webhook_concurrency: int = 16
    webhook_receiver_concurrency: int = 2
    # a receiver failing this many attempts in a row is left alone for the backoff,
    # doubling with each further failure up to the maximum
    webhook_receiver_failures: int = 5
    webhook_receiver_backoff_seconds: float = 60.0
    webhook_receiver_backoff_max_seconds: float = 3600.0

    def receiver_backoff(self):
        from services.generation.deliveries import ReceiverBackoff

        return ReceiverBackoff(self.webhook_receiver_failures,
                               self.webhook_receiver_backoff_seconds,
                               self.webhook_receiver_backoff_max_seconds)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GenerationSettings:
        section, d = Section(config, "GENERATION"), cls()
        get, positive = section.get, section.positive
        # an empty PROMPT_RETENTION is the default too
        retention = str(get("PROMPT_RETENTION", "") or d.prompt_retention).strip().lower()
        if retention not in PROMPT_RETENTION:
            raise ValueError(f"GENERATION.PROMPT_RETENTION must be one of {PROMPT_RETENTION}")
        allow = get("WEBHOOK_ALLOW", ())
        if isinstance(allow, str):
            allow = [part.strip() for part in allow.split(",") if part.strip()]
        return cls(
            max_active_jobs_per_user=int(get("MAX_ACTIVE_JOBS_PER_USER",
                                             d.max_active_jobs_per_user)),
            max_running_jobs=max(1, int(get("MAX_RUNNING_JOBS", d.max_running_jobs))),
            queue_retry_after_seconds=int(get("QUEUE_RETRY_AFTER_SECONDS",
                                              d.queue_retry_after_seconds)),
            prompt_retention=retention,
            lease_seconds=int(get("LEASE_SECONDS", d.lease_seconds)),
            upload_timeout_seconds=float(get("UPLOAD_TIMEOUT_SECONDS", d.upload_timeout_seconds)),
            infra_retry_seconds=max(0.0, float(get("INFRA_RETRY_SECONDS",
                                                   d.infra_retry_seconds))),
            rpc_timeout_seconds=max(0.1, float(get("RPC_TIMEOUT_SECONDS",
                                                   d.rpc_timeout_seconds))),
            quote_cache_seconds=float(get("QUOTE_CACHE_SECONDS", d.quote_cache_seconds)),
            webhook_max_tries=int(get("WEBHOOK_MAX_TRIES", d.webhook_max_tries)),
            webhook_timeout_seconds=positive("WEBHOOK_TIMEOUT_SECONDS",
                                             d.webhook_timeout_seconds, float),
            webhook_allow=tuple(str(a) for a in allow),
            webhook_concurrency=positive("WEBHOOK_CONCURRENCY", d.webhook_concurrency, int),
            webhook_receiver_concurrency=positive("WEBHOOK_RECEIVER_CONCURRENCY",
                                                  d.webhook_receiver_concurrency, int),
            webhook_receiver_failures=positive("WEBHOOK_RECEIVER_FAILURES",
                                               d.webhook_receiver_failures, int),
            webhook_receiver_backoff_seconds=positive("WEBHOOK_RECEIVER_BACKOFF_SECONDS",
                                                      d.webhook_receiver_backoff_seconds, float),
            webhook_receiver_backoff_max_seconds=positive(
                "WEBHOOK_RECEIVER_BACKOFF_MAX_SECONDS", d.webhook_receiver_backoff_max_seconds,
                float),
        )
