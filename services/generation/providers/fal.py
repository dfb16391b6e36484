"""The ``fal`` provider: models hosted on fal.ai, through fal's queue API.

The protocol (https://docs.fal.ai/model-endpoints/queue, the fal-js and
fal_client SDKs):

- submit ``POST {base_url}/{model}`` (``model`` is the endpoint id, e.g.
  ``fal-ai/flux/dev``; the body is the model's input) with
  ``Authorization: Key <api_key>`` → ``{request_id, status: "IN_QUEUE",
  queue_position, status_url, response_url, cancel_url}``;
- status ``GET …/requests/{id}/status`` (202 while pending, 200 once done) →
  ``IN_QUEUE`` with ``queue_position``, ``IN_PROGRESS``, ``COMPLETED``;
- result ``GET …/requests/{id}`` → the model's output, e.g. ``{images:
  [{url, width, height, content_type}], seed, has_nsfw_concepts}`` or
  ``{video: {url}}``; a request that failed answers here with the error;
- cancel ``PUT …/requests/{id}/cancel``.

The status, result and cancel URLs name the app only (``owner/app``, no
endpoint sub-path), so the URLs the submit answer returns are used; one on
another origin than ``base_url`` is not followed (the key would not go with
it, and it could point anywhere): the URL is then built from the model id.

Configuration
-------------
``model`` (required, the endpoint id), ``api_key``, ``base_url`` (default
``https://queue.fal.run``; fal has no version path), ``job_types`` (default
``[text-to-image]``), ``inputs`` (below), ``timeout_s`` (each HTTP call, 30),
``poll_interval_s`` (1), ``task_timeout_s`` (submit to result, 600),
``max_poll_errors`` (3), ``output_expiration_s`` (3600, 0 = fal's default),
``max_download_bytes``, ``result_url_allow``, ``allow_private_network``.
``region``, ``max_concurrency`` and ``enabled`` are read by the router.

What is sent
------------
Only what the provider's ``inputs`` mapping names (Darkroom field → the
model's input name), so an operator decides per model. Darkroom fields:
``prompt``, ``negative_prompt``, ``seed``, ``n``, ``width``, ``height``,
``size`` (``{"width", "height"}``, fal's custom ``image_size``), ``image``
(the source image as a ``data:`` URI), ``strength``, ``duration_s``. An input
name may be dotted (``image_size.width`` nests objects) and may end in ``[]``
(``image_urls[]`` sends a one-item list). A field without a mapping is not
sent; an absent value (no seed, no size) is not sent either. Without an
``inputs`` setting the names fal's image models commonly use apply::

    {prompt: prompt, negative_prompt: negative_prompt, seed: seed,
     n: num_images, size: image_size, image: image_url, strength: strength}

With the request: the ``Authorization: Key`` header, JSON content type and,
unless ``output_expiration_s`` is 0, ``X-Fal-Object-Lifecycle-Preference:
{"expiration_duration_seconds": N}`` (default 3600) so fal deletes the outputs
from its CDN after N seconds. Nothing else: no user, job or request id of
ours; fal assigns the request id.

Limits
------
- ``n`` without a mapping: ``n`` requests are queued at once, the seed (when
  one is set) incremented by one per request so the images differ.
- A model that returns fewer outputs than asked is a malformed answer.
- Storyboard ``shots`` are not sent (fal has no such input).
- ``has_nsfw_concepts`` true for an output (fal's safety checker blanked
  it) counts as a content refusal, like a 422 ``content_policy_violation``.
- Results must be PNG/JPEG/WebP images or MP4 videos (checked by decoding);
  ``data:`` URIs in a result are decoded, other URLs downloaded through the
  SSRF guard with the size cap.
- Region: fal does not document where it processes data; set ``region``.

Errors: 429 (Retry-After honoured when sent), 5xx, timeouts and connection
failures are transient; a 422 whose ``detail[].type`` (or ``error_type``, or
the ``X-Fal-Error-Type`` header) is ``content_policy_violation`` is the
permanent ``provider_content_refused``; 401/403 ``provider_auth_failed``;
other 4xx ``provider_rejected_request``. Status polls that fail transiently
are tolerated ``max_poll_errors`` times in a row. A request that has not
completed after ``task_timeout_s`` is cancelled (best effort) and the attempt
fails with the transient ``provider_timeout``; any other failure cancels the
requests still pending too.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import requests

from services.common.contracts.generation import JOB_TYPES
from services.generation.providers import base, common
from services.generation.providers.http import (
    ErrorMapper,
    ProviderHttp,
    error_code,
    raise_for_status,
)

DEFAULT_BASE_URL = "https://queue.fal.run"
FIELDS = ("prompt", "negative_prompt", "seed", "n", "width", "height", "size", "image",
          "strength", "duration_s")
DEFAULT_INPUTS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed",
                  "n": "num_images", "size": "image_size", "image": "image_url",
                  "strength": "strength"}
REFUSED_TYPES = ("content_policy_violation",)
PENDING = ("IN_QUEUE", "IN_PROGRESS")
FAILED = ("FAILED", "ERROR", "CANCELED", "CANCELLED")
LIFECYCLE_HEADER = "X-Fal-Object-Lifecycle-Preference"
NAMESPACES = ("workflows", "comfy")  # endpoint ids with one more leading segment

_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\[\])?")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)+")
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _fal_error_type(response: requests.Response) -> str | None:
    """fal's machine-readable error type: ``detail[].type`` (model errors),
    ``error_type`` (request errors) or the ``X-Fal-Error-Type`` header. A
    content refusal wins over other types when several are listed."""
    found = [response.headers.get("X-Fal-Error-Type")]
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail")
        items = detail if isinstance(detail, list) else [detail]
        found += [item.get("type") for item in items if isinstance(item, dict)]
        found.append(body.get("error_type"))
    codes = [code for code in map(error_code, found) if code]
    refused = [code for code in codes if code in REFUSED_TYPES]
    return (refused or codes or [None])[0]


def read_error(who: str) -> ErrorMapper:
    """How an answer that is not 2xx is read (the ``errors`` hook of
    :class:`.http.ProviderHttp`): a 4xx whose fal error type is
    ``content_policy_violation`` is a content refusal; otherwise the generic
    mapping decides, and the message names fal's error type."""

    def read(status: int, _code: str | None, _where: str,
             response: requests.Response) -> base.ProviderError | None:
        kind = _fal_error_type(response)
        if kind is None:
            return None
        if 400 <= status < 500 and kind in REFUSED_TYPES:
            return base.PermanentProviderError(
                base.CONTENT_REFUSED, f"{who} answered {status} ({kind})", status=status)
        try:
            raise_for_status(response, who)
        except base.ProviderError as exc:
            if kind not in exc.message:
                exc.message = f"{exc.message} ({kind})"
            return exc
        return None

    return read


class FalHttp(ProviderHttp):
    """ProviderHttp that reads fal's error shapes (:func:`read_error`) and
    calls absolute URLs (the status/result/cancel URLs fal returns)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.errors = read_error(self.who)

    def fetch(self, method: str, url: str, payload: dict | None = None,
              headers: dict | None = None) -> dict:
        return self.answer(self.send(method, url, json=payload, headers=headers or {}))

    def _raise(self, response: requests.Response) -> None:
        raise_for_status(response, self.who, self.errors)


@dataclass
class Queued:
    """One request in fal's queue."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    done: bool = False


def _check_inputs(inputs, job_types: frozenset[str]) -> dict[str, str]:
    checked = common.field_mapping(inputs, FIELDS, _INPUT_NAME, DEFAULT_INPUTS)
    if "prompt" not in checked:
        raise ValueError("inputs.prompt: the prompt must be mapped to an input")
    if job_types & {base.IMAGE_TO_IMAGE, base.IMAGE_TO_VIDEO} and "image" not in checked:
        raise ValueError("inputs.image: image-to-image and image-to-video need the source "
                         "image mapped to an input")
    return checked


def _put(body: dict, target: str, value) -> None:
    """``body[a][b] = value`` for ``a.b``; a ``[]`` suffix wraps it in a list."""
    if target.endswith("[]"):
        target, value = target[:-2], [value]
    *parents, leaf = target.split(".")
    for part in parents:
        child = body.get(part)
        if not isinstance(child, dict):
            child = body[part] = {}
        body = child
    body[leaf] = value


class FalProvider:
    def __init__(self, name: str, model: str, api_key: str | None = None,
                 base_url: str = DEFAULT_BASE_URL, job_types: tuple[str, ...] = (base.TEXT_TO_IMAGE,),
                 inputs: dict | None = None, timeout_s: float = 30.0,
                 poll_interval_s: float = 1.0, task_timeout_s: float = 600.0,
                 max_poll_errors: int = 3, output_expiration_s: int = 3600,
                 max_download_bytes: int = 500 * 1024 * 1024,
                 result_url_allow: tuple[str, ...] | str = (), allow_private_network: bool = False,
                 resolver=None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        if not isinstance(model, str) or not _MODEL.fullmatch(model):
            raise ValueError("model must be a fal endpoint id such as fal-ai/flux/dev")
        self.name = name
        self.model = model
        self.job_types = common.job_types_of(job_types, JOB_TYPES)
        self.inputs = _check_inputs(inputs, self.job_types)
        base.keep_polling(self, poll_interval_s, task_timeout_s, max_poll_errors, sleep, clock)
        self.output_expiration_s = int(output_expiration_s)
        self.http = FalHttp(name, base_url, api_key, timeout_s, max_download_bytes,
                            result_url_allow, resolver,
                            allow_private_network=allow_private_network, auth_scheme="Key")

    @classmethod
    def from_config(cls, name: str, conf: dict, **kwargs) -> FalProvider:
        if not conf.get("model"):
            raise ValueError("model is required (the fal endpoint id, e.g. fal-ai/flux/dev)")
        if conf.get("base_url") is not None and not str(conf.get("base_url")).strip():
            raise ValueError("base_url must not be empty")
        return cls(
            name, str(conf["model"]), api_key=conf.get("api_key") or None,
            base_url=str(conf.get("base_url") or DEFAULT_BASE_URL),
            job_types=conf.get("job_types") or (base.TEXT_TO_IMAGE,), inputs=conf.get("inputs"),
            timeout_s=common.conf_number(conf, "timeout_s", 30.0),
            poll_interval_s=common.conf_number(conf, "poll_interval_s", 1.0),
            task_timeout_s=common.conf_number(conf, "task_timeout_s", 600.0),
            max_poll_errors=int(common.conf_number(conf, "max_poll_errors", 3, whole=True)),
            output_expiration_s=int(common.conf_number(conf, "output_expiration_s", 3600,
                                                       whole=True)),
            **common.download_settings(conf, 500 * 1024 * 1024),
            **kwargs,
        )

    # ------------------------------------------------------------ what is sent

    def payloads(self, request: base.ProviderRequest) -> list[dict]:
        """Exactly what is sent, one body per queued request: the mapped fields
        of the request, nothing else (several bodies when ``n`` has no input)."""
        if "n" in self.inputs:
            return [self.payload(request, n=request.n)]
        return [self.payload(request, seed_offset=i) for i in range(request.n)]

    def payload(self, request: base.ProviderRequest, n: int | None = None,
                seed_offset: int = 0) -> dict:
        sized = request.width and request.height
        values = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or None,
            "seed": common.seed_for(request, seed_offset),
            "n": n,
            "width": request.width,
            "height": request.height,
            "size": {"width": request.width, "height": request.height} if sized else None,
            "image": common.data_uri(request.source_image, request.source_content_type)
            if request.source_image else None,
            "strength": request.strength,
            "duration_s": request.duration_s,
        }
        body: dict = {}
        for field, target in self.inputs.items():
            if values[field] is not None:
                _put(body, target, values[field])
        return body

    def headers(self) -> dict:
        if not self.output_expiration_s:
            return {}
        return {LIFECYCLE_HEADER: json.dumps(
            {"expiration_duration_seconds": self.output_expiration_s})}

    # ------------------------------------------------------------ the queue

    def _app_url(self) -> str:
        parts = self.model.split("/")
        keep = 3 if parts[0] in NAMESPACES else 2
        return f"{self.http.base_url}/{'/'.join(parts[:keep])}"

    def _same_origin(self, url) -> bool:
        if not isinstance(url, str):
            return False
        ours, theirs = urlsplit(self.http.base_url), urlsplit(url)
        return (ours.scheme.lower(), ours.netloc.lower()) == \
            (theirs.scheme.lower(), theirs.netloc.lower())

    def _queued(self, answer: dict) -> Queued:
        request_id = answer.get("request_id")
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} answered without a request id")
        built = f"{self._app_url()}/requests/{quote(request_id, safe='')}"
        urls = {key: answer[key] if self._same_origin(answer.get(key)) else default
                for key, default in (("status_url", f"{built}/status"), ("response_url", built),
                                     ("cancel_url", f"{built}/cancel"))}
        return Queued(request_id, **urls)

    def generate(self, request: base.ProviderRequest,
                 progress: base.ProgressCallback | None = None) -> base.ProviderResult:
        base.submitting(self, request, progress)
        deadline = self.clock() + self.task_timeout_s
        bodies = self.payloads(request)
        queued: list[Queued] = []
        try:
            for body in bodies:
                answer = self.http.fetch("POST", f"{self.http.base_url}/{self.model}", body,
                                         self.headers())
                queued.append(self._queued(answer))
            base.report(progress, 0.05, "submitted")
            results = []
            for index, item in enumerate(queued):
                status = self._wait(item, deadline, lambda f, stage, i=index: base.report(
                    progress, 0.05 + 0.85 * (i + f) / len(queued), stage))
                item.done = True
                results.append((self.http.fetch("GET", item.response_url), status))
        except BaseException:
            self._cancel([item for item in queued if not item.done])
            raise
        want = request.n if len(queued) == 1 else 1
        items = [url for result, status in results for url in self._outputs(result, want, status)]
        outputs = []
        for index, item in enumerate(items):
            base.report(progress, 0.9 + 0.1 * index / len(items), "downloading")
            outputs.append(self._output(*self._bytes(item)))
        base.report(progress, 1.0, "downloaded")
        return base.ProviderResult(tuple(outputs))

    def _wait(self, item: Queued, deadline: float,
              progress: Callable[[float, str], None]) -> dict:
        def read(status: dict) -> dict | None:
            state = status.get("status")
            if state == "COMPLETED":
                progress(1.0, "completed")
                return status
            if state in FAILED:
                self._failed(item, state)
            if state not in PENDING:
                raise base.unknown_status(self.name, "request")
            self._progress(status, progress)
            return None

        # cancelling is generate's (it cancels every request left behind)
        fetch, sleep = common.retry_after_polls(
            lambda: self.http.fetch("GET", item.status_url), self.sleep)
        return base.wait_for_task(fetch, read, who=self.name, what="the request",
                                  deadline=deadline, **{**base.polling(self), "sleep": sleep})

    @staticmethod
    def _progress(status: dict, progress: Callable[[float, str], None]) -> None:
        """The queue position as progress: the fraction grows as the request
        moves up the queue, and the stage names the position."""
        if status.get("status") == "IN_PROGRESS":
            progress(0.5, "in_progress")
            return
        position = status.get("queue_position")
        if isinstance(position, int) and not isinstance(position, bool) and position >= 0:
            progress(0.3 / (1 + position), f"queue_position_{min(position, 10**6)}")
        else:
            progress(0.0, "in_queue")

    def _failed(self, item: Queued, state: str) -> None:
        """A request fal reports as failed: its result carries the error."""
        if state in ("FAILED", "ERROR"):
            self.http.fetch("GET", item.response_url)  # raises the classified error
        raise base.task_ended(self.name, "request", state.lower())

    def _cancel(self, pending: list[Queued]) -> None:
        for item in pending:
            try:
                self.http.fetch("PUT", item.cancel_url)
            except base.ProviderError:
                pass  # best effort: fal answers 400 once a request has completed

    # ------------------------------------------------------------ the outputs

    def _outputs(self, result: dict, want: int, status: dict | None = None) -> list[str]:
        """The output URLs of one result, ``want`` of them at least. A result
        without them whose status carried an error fails as that error."""
        flagged = result.get("has_nsfw_concepts")
        if flagged is True or (isinstance(flagged, list) and any(v is True for v in flagged)):
            raise base.PermanentProviderError(base.CONTENT_REFUSED,
                                              f"{self.name} flagged the output (has_nsfw_concepts)")
        items = []
        for key in ("images", "videos"):
            if isinstance(result.get(key), list):
                items += result[key]
        for key in ("image", "video"):
            if isinstance(result.get(key), dict):
                items.append(result[key])
        urls = [item["url"] for item in items
                if isinstance(item, dict) and isinstance(item.get("url"), str)]
        if len(urls) < want and (status or {}).get("error"):
            kind = error_code((status or {}).get("error_type"))
            if kind in REFUSED_TYPES:
                raise base.PermanentProviderError(base.CONTENT_REFUSED, f"{self.name} request failed ({kind})")
            raise base.TransientProviderError("provider_task_failed", f"{self.name} request failed"
                                              + (f" ({kind})" if kind else ""))
        if len(urls) < want:
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} answered with fewer outputs than asked")
        return urls[:want]

    def _bytes(self, url: str) -> tuple[bytes, str]:
        if not url.startswith("data:"):
            return self.http.download(url)
        content_type = url[5:].partition(",")[0].split(";")[0]
        return common.data_uri_bytes(url, self.name, self.http.max_download_bytes), content_type

    def _output(self, data: bytes, content_type: str) -> base.ProviderOutput:
        return common.media_output(data, content_type, self.name)
