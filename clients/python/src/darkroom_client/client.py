"""``Client``: the Darkroom HTTP API (docs/api.md) over ``requests``.

Retries (``max_retries`` after the first attempt, exponential backoff with
jitter, ``Retry-After`` honoured):

* a GET, or a POST that carries an ``Idempotency-Key`` (``submit`` and
  ``checkout`` make one, a uuid4, and send the same one on every retry, so a
  retried submit never makes a second job): on a connection error, a
  timeout, 429 and any 5xx;
* any other request (an upload, a cancel...): only when the server did not
  act on it: the connection could not be made, 429, or a 5xx that asked to
  be retried with ``Retry-After``;
* never on another 4xx. Every failure raises :class:`DarkroomError`.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import requests
from urllib3.exceptions import NewConnectionError

from . import sse
from .errors import DarkroomError
from .models import Balance, Delivery, Event, Image, Job, LedgerEntry, Model, OutputURL, Page

T = TypeVar("T")

#: The longest ``Prefer: wait`` the API applies (docs/api.md, "Synchronous mode").
WAIT_MAX_S = 60
#: The longest ``Retry-After`` the client sleeps for; a longer one is raised at once.
RETRY_AFTER_MAX_S = 60.0
BACKOFF_MAX_S = 8.0
#: A stream's read timeout: longer than the server's 15 s keepalive.
STREAM_READ_TIMEOUT_S = 45.0


class WaitTimeout(DarkroomError):
    """``wait()`` ran out of time; ``job`` is the job as last read."""

    def __init__(self, job: Job, timeout: float):
        super().__init__(None, "wait_timeout", f"job {job.id} is still {job.status} "
                         f"after {timeout:g} s")
        self.job = job


class Client:
    """A caller of the API with one API key (``drk_...``), sent as
    ``Authorization: Bearer``. ``timeout`` is each request's connect and read
    timeout in seconds."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0,
                 max_retries: int = 3, *, backoff: float = 0.5,
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._session = session or requests.Session()
        self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._session.headers["User-Agent"] = "darkroom-client-python/0.1.0"
        self._sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ account, models, credits

    def me(self) -> dict[str, Any]:
        """The caller's profile (``GET /v1/me``)."""
        return self._json("GET", "/v1/me")

    def webhook_secret(self) -> str:
        """The account's ``whsec_...`` secret that signs its job webhooks."""
        return self._json("GET", "/v1/me/webhook-secret")["secret"]

    def models(self) -> list[Model]:
        return [Model.from_dict(m) for m in self._json("GET", "/v1/models")["items"]]

    def balance(self) -> Balance:
        return Balance.from_dict(self._json("GET", "/v1/billing/balance"))

    def ledger(self, limit: int | None = None, cursor: str | None = None) -> Page[LedgerEntry]:
        return self._page("/v1/billing/ledger", LedgerEntry.from_dict, limit=limit,
                          cursor=cursor)

    def iter_ledger(self, page_size: int | None = None) -> Iterator[LedgerEntry]:
        return self._iterate(self.ledger, page_size)

    def checkout(self, *, pack_id: str | None = None, plan_id: str | None = None,
                 provider: str | None = None,
                 idempotency_key: str | None = None) -> dict[str, Any]:
        """``{order_id, checkout_url}``: send the user to ``checkout_url``.
        ``provider`` (``stripe`` or ``paypal``): who takes the money, among
        those the server enables (its first by default)."""
        body = {k: v for k, v in (("pack_id", pack_id), ("plan_id", plan_id),
                                  ("provider", provider)) if v}
        return self._json("POST", "/v1/billing/checkout", json=body, headers={
            "Idempotency-Key": idempotency_key or str(uuid.uuid4())})

    def capture(self, order_id: str) -> dict[str, Any]:
        """Take the money of a PayPal order the buyer approved (when they come
        back from PayPal): the order. Calling it again is harmless."""
        return self._json("POST", f"/v1/billing/orders/{order_id}/capture")

    # ------------------------------------------------------------ jobs

    def submit(self, type: str, prompt: str | None = None, *, model: str | None = None,
               webhook_url: str | None = None, webhook_events: list[str] | None = None,
               wait: int | None = None, idempotency_key: str | None = None,
               **fields: Any) -> Job:
        """Submit a job (``POST /v1/generations``); ``fields`` are the body's
        others (``n``, ``size``, ``seed``, ``source_image_id``, ``strength``,
        ``template``, ``inputs``, ``duration_s``, ``negative_prompt``).
        ``wait=N`` asks the server to answer with the finished job if it ends
        within N seconds (at most 60); the job may still be running, so check
        ``job.done`` or call ``job.wait()``."""
        given = {"type": type, "prompt": prompt, "model": model, "webhook_url": webhook_url,
                 "webhook_events": webhook_events, **fields}
        body = {k: v for k, v in given.items() if v is not None}
        key = idempotency_key or str(uuid.uuid4())
        return self._submit(body, key, wait)[0]

    def get_job(self, job_id: str) -> Job:
        return Job.from_dict(self._json("GET", f"/v1/generations/{job_id}"), self)

    def list_jobs(self, status: str | None = None, limit: int | None = None,
                  cursor: str | None = None) -> Page[Job]:
        return self._page("/v1/generations", lambda j: Job.from_dict(j, self), status=status,
                          limit=limit, cursor=cursor)

    def iter_jobs(self, status: str | None = None, page_size: int | None = None
                  ) -> Iterator[Job]:
        """Every job of the caller, newest first, page after page."""
        return self._iterate(lambda **kw: self.list_jobs(status=status, **kw), page_size)

    def cancel_job(self, job_id: str) -> Job:
        """Cancel a job that has not started (409 ``not_cancellable`` once it runs)."""
        return Job.from_dict(self._json("DELETE", f"/v1/generations/{job_id}"), self)

    def deliveries(self, job_id: str, limit: int | None = None,
                   cursor: str | None = None) -> Page[Delivery]:
        """The webhook deliveries of a job, newest first."""
        return self._page(f"/v1/generations/{job_id}/webhook-deliveries", Delivery.from_dict,
                          limit=limit, cursor=cursor)

    def iter_deliveries(self, job_id: str, page_size: int | None = None) -> Iterator[Delivery]:
        return self._iterate(lambda **kw: self.deliveries(job_id, **kw), page_size)

    def wait(self, job: Job | str, timeout: float | None = None,
             poll_interval: float = 2.0) -> Job:
        """The job once it has ended, or :class:`WaitTimeout` after ``timeout``
        seconds (``None``: no limit).

        A job this client submitted is waited for by the server first: its
        submission is repeated with the same ``Idempotency-Key`` and ``Prefer:
        wait`` (the API answers with that same job, no second one, once it
        ends or the wait is over). When the server does not apply the
        preference (its waiting slots are taken), or for a job only known by
        its id, or when the repeat is refused (a 4xx: the account was
        restricted since...), the client polls ``GET /v1/generations/{id}`` instead, from
        0.25 s up to ``poll_interval`` between reads."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if isinstance(job, str):
            job = self.get_job(job)
        submission, delay = job._submission, 0.25
        while not job.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(job, timeout)
            if submission is not None:
                seconds = WAIT_MAX_S if left is None else max(1, min(WAIT_MAX_S, int(left)))
                try:
                    answer, applied = self._submit(*submission, seconds)
                except DarkroomError as exc:  # refused now (restricted since...): poll instead
                    if exc.status is None or exc.status >= 500:
                        raise
                    submission = None
                    continue
                if answer.id != job.id:  # the key was forgotten: never wait this way again
                    submission = None
                    continue
                job = answer
                if not applied:
                    submission = None
                continue
            self._sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, poll_interval)
            job = self.get_job(job.id)
        return job

    def stream(self, job_id: str, *, reconnect: bool = True) -> Iterator[Event]:
        """The job's progress as the server sends it (``GET
        /v1/generations/{id}/events``): an :class:`Event` with the job at once
        and again at each change of status, progress, stage or queue position,
        until it ends. A stream the server closes before that (after 10
        minutes) or that breaks is opened again (``Last-Event-ID``), unless
        ``reconnect`` is False. At most two streams of one caller are open at
        once on a gateway process (429 ``too_many_streams``)."""
        path, last_id, failures = f"/v1/generations/{job_id}/events", None, 0
        retry_ms = [2000]
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            response = self._request("GET", path, headers=headers, stream=True,
                                     timeout=(self.timeout, max(self.timeout,
                                                                STREAM_READ_TIMEOUT_S)))
            try:
                lines = (line.decode("utf-8") for line in response.iter_lines(chunk_size=None))
                for raw in sse.parse(lines, on_retry=lambda ms: retry_ms.__setitem__(0, ms)):
                    failures, last_id = 0, raw.id or last_id
                    event = _event(raw, self)
                    yield event
                    if event.error is not None or (event.job is not None and event.job.done):
                        return
            except requests.RequestException:
                failures += 1
                if failures > self.max_retries:
                    raise
            finally:
                response.close()
            if not reconnect:
                return
            self._sleep(retry_ms[0] / 1000)

    # ------------------------------------------------------------ images

    def upload(self, file: str | os.PathLike | bytes | BinaryIO, filename: str | None = None,
               content_type: str | None = None) -> Image:
        """Upload a source image (PNG, JPEG or WebP; ``POST /v1/uploads``):
        a path, the bytes, or a binary file object."""
        if isinstance(file, (str, os.PathLike)):
            path = Path(file)
            data, filename = path.read_bytes(), filename or path.name
        elif isinstance(file, (bytes, bytearray)):
            data = bytes(file)
        else:
            data = file.read()
        part = (filename or "upload", data) if content_type is None else \
            (filename or "upload", data, content_type)
        return Image.from_dict(self._json("POST", "/v1/uploads", files={"file": part}))

    def list_gallery(self, kind: str | None = None, job_id: str | None = None,
                     limit: int | None = None, cursor: str | None = None) -> Page[Image]:
        """The caller's images (``kind``: ``upload`` or ``output``), newest first."""
        return self._page("/v1/images", Image.from_dict, kind=kind, job_id=job_id,
                          limit=limit, cursor=cursor)

    def iter_gallery(self, kind: str | None = None, job_id: str | None = None,
                     page_size: int | None = None) -> Iterator[Image]:
        return self._iterate(lambda **kw: self.list_gallery(kind=kind, job_id=job_id, **kw),
                             page_size)

    def get_image(self, image_id: str) -> Image:
        return Image.from_dict(self._json("GET", f"/v1/images/{image_id}"))

    def download(self, link: OutputURL | Image | str) -> bytes:
        """The bytes behind a signed URL (an output URL, an image's ``url``).
        The URL carries its own signature: the API key is not sent with it,
        wherever it points."""
        url = link if isinstance(link, str) else link.url
        if not url:
            raise ValueError("no URL to download")
        if url.startswith("/"):
            url = self.base_url + url
        return self._request("GET", url, headers={"Authorization": None}).content

    # ------------------------------------------------------------ the transport

    def _submit(self, body: dict, key: str, wait: int | None) -> tuple[Job, bool]:
        """The job a submission answered, and whether the server applied ``wait``."""
        headers, read_timeout = {"Idempotency-Key": key}, self.timeout
        if wait is not None:
            wait = max(0, min(WAIT_MAX_S, int(wait)))
            headers["Prefer"] = f"wait={wait}"
            read_timeout += wait
        response = self._request("POST", "/v1/generations", json=body, headers=headers,
                                 timeout=(self.timeout, read_timeout))
        applied = wait is not None and "Preference-Applied" in response.headers
        return Job.from_dict(response.json(), self, (body, key)), applied

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        response = self._request(method, path, **kw)
        return response.json() if response.content else None

    def _page(self, path: str, build: Callable[[dict], T], **params: Any) -> Page[T]:
        query = {k: v for k, v in params.items() if v is not None}
        answer = self._json("GET", path, params=query)
        return Page([build(item) for item in answer["items"]], answer.get("next_cursor"))

    @staticmethod
    def _iterate(fetch: Callable[..., Page[T]], page_size: int | None) -> Iterator[T]:
        cursor = None
        while True:
            page = fetch(limit=page_size, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def _request(self, method: str, path: str, *, headers: dict | None = None,
                 timeout: Any = None, **kw: Any) -> requests.Response:
        """One API call with the retries above; the response of a success."""
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        headers = dict(headers or {})
        replayable = method in ("GET", "HEAD") or "Idempotency-Key" in headers
        attempt = 0
        while True:
            try:
                response = self._session.request(method, url, headers=headers,
                                                 timeout=timeout or self.timeout, **kw)
            except requests.RequestException as exc:
                if attempt >= self.max_retries or not (replayable or _not_sent(exc)):
                    raise DarkroomError(None, "connection_error",
                                        f"{method} {path}: {exc}") from exc
                self._sleep(self._backoff(attempt))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            retry_after = _retry_after(response.headers.get("Retry-After"))
            error = DarkroomError.from_response(response, retry_after)
            response.close()
            status = response.status_code
            retryable = status == 429 or (status >= 500 and (replayable or retry_after is not None))
            if not retryable or attempt >= self.max_retries or \
                    (retry_after or 0) > RETRY_AFTER_MAX_S:
                raise error
            self._sleep(retry_after if retry_after is not None else self._backoff(attempt))
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        """Exponential, with jitter so that many clients do not retry in step."""
        return min(BACKOFF_MAX_S, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)


def _not_sent(exc: requests.RequestException) -> bool:
    """Did the request fail before reaching the server (nothing can have happened)?"""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _event(raw: sse.RawEvent, client: Client) -> Event:
    data = json.loads(raw.data)
    if raw.event == "job":
        return Event("job", raw.id, job=Job.from_dict(data, client))
    if raw.event == "error":
        return Event("error", raw.id, error=data.get("error", data))
    return Event(raw.event, raw.id)
