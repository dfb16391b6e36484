"""Typed views of the API's objects (docs/api.md). Each is built with
``from_dict`` from the JSON the server sent, which stays in ``raw``: a field
the server adds later is there before this package names it. Times are
timezone-aware ``datetime``s."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from .client import Client

#: A job in one of these states has ended and changes no more.
FINAL_STATES = frozenset({"succeeded", "failed", "rejected", "cancelled"})

T = TypeVar("T")


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value))


def _build(cls, data: dict[str, Any], **convert: Callable[[Any], Any]):
    """``cls`` from the fields of ``data`` it names, each passed through its
    ``convert`` function when it has one; missing fields take their defaults."""
    values = {}
    for f in fields(cls):
        if f.name == "raw" or not f.init:
            continue
        if f.name in data:
            value = data[f.name]
            values[f.name] = convert[f.name](value) if f.name in convert else value
    return cls(**values, raw=data)


def _times(*names: str) -> dict[str, Callable[[Any], Any]]:
    return dict.fromkeys(names, parse_time)


@dataclass
class Error:
    """Why a job failed (``job.error``): ``code`` is machine-readable
    (``provider_unavailable``, ``content_refused``, ``hold_expired``...)."""

    code: str
    message: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Error:
        return _build(cls, data)


@dataclass
class OutputURL:
    """A signed, short-lived download URL of one output (no credential needed)."""

    id: str
    url: str
    url_expires_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputURL:
        return _build(cls, data, **_times("url_expires_at"))


@dataclass
class Job:
    """A generation job. ``wait()`` blocks until it ends; ``refresh()`` reads
    it again (fresh ``output_urls`` too: they expire after a few minutes)."""

    id: str
    type: str
    status: str
    attempt: int = 1
    progress: float = 0.0
    stage: str | None = None
    queue_position: int | None = None
    price: int | None = None
    outputs: list[str] = field(default_factory=list)
    error: Error | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    params: dict[str, Any] | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    provider: str | None = None
    model: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output_urls: list[OutputURL] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    # the client that read it, and the submission (body, Idempotency-Key) that made it
    _client: Client | None = field(default=None, repr=False, compare=False, init=False)
    _submission: tuple[dict, str] | None = field(default=None, repr=False, compare=False,
                                                 init=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], client: Client | None = None,
                  submission: tuple[dict, str] | None = None) -> Job:
        job = _build(cls, data, error=lambda e: Error.from_dict(e) if e else None,
                     output_urls=lambda links: [OutputURL.from_dict(x) for x in links or []],
                     outputs=lambda ids: list(ids or []),
                     **_times("created_at", "started_at", "finished_at"))
        job._client, job._submission = client, submission
        return job

    @property
    def done(self) -> bool:
        """Has the job ended (``succeeded``, ``failed``, ``rejected``, ``cancelled``)?"""
        return self.status in FINAL_STATES

    def _bound(self) -> Client:
        if self._client is None:
            raise RuntimeError("this Job was not read through a Client")
        return self._client

    def wait(self, timeout: float | None = None) -> Job:
        """The job once it has ended (``Client.wait``)."""
        return self._bound().wait(self, timeout=timeout)

    def refresh(self) -> Job:
        return self._bound().get_job(self.id)


@dataclass
class ModelPrice:
    job_type: str
    price: int
    breakdown: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelPrice:
        return _build(cls, data)


@dataclass
class Model:
    """A provider entry a job can name with ``model`` (``GET /v1/models``)."""

    name: str
    job_types: list[str] = field(default_factory=list)
    region: str | None = None
    prices: list[ModelPrice] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        return _build(cls, data, prices=lambda ps: [ModelPrice.from_dict(p) for p in ps or []])


@dataclass
class Balance:
    """Credits: ``available`` to spend, ``held`` by running jobs, ``frozen`` by disputes."""

    available: int
    held: int = 0
    frozen: int = 0
    plan: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    granted_this_period: int = 0
    used_this_period: int = 0
    plan_expires_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Balance:
        return _build(cls, data, **_times("period_start", "period_end", "plan_expires_at"))


@dataclass
class LedgerEntry:
    """A change to the balance: ``amount`` to ``available``, ``held_change`` to ``held``."""

    id: str
    kind: str
    amount: int
    held_change: int = 0
    balance_after: int | None = None
    job_id: str | None = None
    order_id: str | None = None
    attempt: int | None = None
    reason: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerEntry:
        return _build(cls, data, **_times("created_at", "expires_at"))


@dataclass
class Image:
    """An upload or an output in the gallery; ``url`` is signed for a few minutes."""

    id: str
    kind: str
    content_type: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    visibility: str | None = None
    public_id: str | None = None
    job_id: str | None = None
    url: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Image:
        return _build(cls, data, **_times("created_at", "expires_at"))


@dataclass
class Delivery:
    """One webhook delivery of a job; ``id`` is the ``webhook-id`` header it carried."""

    id: str
    job_id: str
    event: str
    status: str
    url: str | None = None
    job_attempt: int | None = None
    attempts: int = 0
    response_status: int | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Delivery:
        return _build(cls, data, **_times("created_at", "last_attempt_at", "next_attempt_at",
                                          "delivered_at"))


@dataclass
class Page(Generic[T]):
    """One page of a list: ``next_cursor`` is ``None`` on the last one."""

    items: list[T]
    next_cursor: str | None = None


@dataclass
class Event:
    """One server-sent event of ``GET /v1/generations/{id}/events``: ``event``
    is ``job`` (``job`` set: the job as it is now) or ``error`` (``error`` set:
    the job can no longer be read)."""

    event: str
    id: str | None = None
    job: Job | None = None
    error: dict[str, Any] | None = None
