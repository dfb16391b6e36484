"""The ``async_task`` provider: a generic, configurable task API. A task is
submitted, polled until it is done, and its result URL(s) downloaded. Where
the vendor puts things is configuration (paths, and JSON pointers, RFC 6901),
so a vendor with a plain task API needs no adapter of its own, and one
without (LibTV documents only a chat-session API) can be reached through a
thin shim that speaks the default protocol.

The default protocol (every key below has it as its default)::

    POST {base_url}/v1/tasks   Authorization: Bearer <api_key>
    {"type": "image-to-video", "model": "...", "prompt": "...",
     "negative_prompt": "...", "seed": 7, "width": 512, "height": 512,
     "n": 1, "strength": 0.6, "duration_s": 4,
     "image": {"content_type": "image/png", "data": "<base64>"},
     "shots": [{"prompt": "...", "camera": "zoom_in", "duration_s": 3}]}
    -> 2xx {"id": "<task id>"}

    GET {base_url}/v1/tasks/{id}
    -> {"status": "queued" | "running" | "succeeded" | "failed",
        "progress": 0.0-1.0, "result_url": "...", "result_urls": [...],
        "error": {"code": "...", "message": "...", "retryable": true}}

    DELETE {base_url}/v1/tasks/{id}   (the cancel, at the task deadline)

The settings (docs/providers.md, ``async_task``):

- ``submit: {method, path}``, ``poll: {method, path, id_at}``, ``cancel:
  {method, path}`` (or ``cancel: null``): ``{id}`` in a path is the task id
  (URL-quoted); ``id_at`` puts the id into a JSON poll body instead (a
  vendor whose status call is ``POST {"taskId": ...}``).
- ``inputs``: Darkroom field -> JSON pointer in the submit body (absent
  values are left out; a field without a pointer is not sent);
  ``fixed_inputs``: JSON pointer -> a constant of the operator's. Array items
  are made in order (``/content/0/text``, then ``/content/1/...``).
- ``task_id``, ``status``, ``progress`` (with ``progress_scale``, 100 for a
  percentage), ``result_urls`` (pointers tried in order, each to a URL or a
  list of them), ``error_code``, ``error_message``, ``error_retryable``:
  JSON pointers into the vendor's answers.
- ``statuses: {running, succeeded, failed, refused, ended}``: the vendor's
  status values in each group (set them all when you set any).
- ``refused_codes``: the vendor's error codes that mean a content refusal.
- ``auth_header``/``auth_scheme``, ``headers`` (constant extra headers).

A ``failed`` task is retried (transient ``provider_task_failed``) unless its
retryable flag is ``false`` (then the permanent ``content_refused`` when its
code or message names a content policy, ``provider_rejected_request``
otherwise); an error code in ``refused_codes`` and a status in ``refused``
are ``content_refused``; a status in ``ended`` (cancelled, expired) is
transient; a status in no group is a malformed answer. Polls run every
``poll_interval_s`` until ``task_timeout_s`` has passed; then the task is
cancelled, best effort, and the attempt fails with the transient
``provider_timeout``. Up to ``max_poll_errors`` failed polls in a row are
tolerated. Results are checked by decoding: an MP4 video for image-to-video,
a PNG/JPEG/WebP image otherwise.

Every setting is checked when the service starts; a bad pointer, path or
status list stops it, naming the provider and the key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from services.common.config import flag
from services.common.contracts.generation import JOB_TYPES
from services.generation.providers import base, common
from services.generation.providers.http import REFUSAL_HINTS, ProviderHttp, error_code
from services.generation.providers.media import image_output, video_output

#: Darkroom's fields that ``inputs`` may place in the submit body.
FIELDS = ("job_type", "model", "prompt", "negative_prompt", "seed", "n", "width", "height",
          "size", "strength", "duration_s", "image", "image_data_uri", "image_base64",
          "image_content_type", "shots")
DEFAULT_INPUTS = {"job_type": "/type", "model": "/model", "prompt": "/prompt",
                  "negative_prompt": "/negative_prompt", "seed": "/seed", "width": "/width",
                  "height": "/height", "n": "/n", "strength": "/strength",
                  "duration_s": "/duration_s", "image": "/image", "shots": "/shots"}
STATUS_GROUPS = ("running", "succeeded", "failed", "refused", "ended")
DEFAULT_STATUSES = {"running": ("queued", "running"), "succeeded": ("succeeded",),
                    "failed": ("failed",), "refused": (), "ended": ()}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: A JSON pointer (RFC 6901): "" (the whole document) or "/"-separated
#: tokens, "~0" for "~" and "~1" for "/"; no control characters.
POINTER = re.compile(r"(?:/(?:[^/~\x00-\x1f]|~[01])*)*")
#: A pointer that names a place to write: at least one token.
WRITE_POINTER = re.compile(r"(?:/(?:[^/~\x00-\x1f]|~[01])*)+")
INDEX = re.compile(r"0|[1-9][0-9]{0,5}")
PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/{}-]*")
HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
#: Headers the operator may not set: the HTTP client's, and the key's.
RESERVED_HEADERS = ("host", "content-length", "content-type", "transfer-encoding", "connection")


# ------------------------------------------------------------------ JSON pointers


def pointer_tokens(text, key: str, *, write: bool = False) -> tuple[str, ...]:
    """The tokens of the JSON pointer ``text`` (``write``: it must name a
    place, not the whole document); ``ValueError`` naming ``key``."""
    pattern = WRITE_POINTER if write else POINTER
    if not isinstance(text, str) or not pattern.fullmatch(text):
        raise ValueError(f"{key}: {text!r} is not a JSON pointer (RFC 6901, e.g. /data/id)")
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in text.split("/")[1:])


def resolve(document, tokens: tuple[str, ...], default=None):
    """The value at ``tokens`` in ``document``, or ``default`` where there is none."""
    for token in tokens:
        if isinstance(document, Mapping) and token in document:
            document = document[token]
        elif isinstance(document, list) and INDEX.fullmatch(token) \
                and int(token) < len(document):
            document = document[int(token)]
        else:
            return default
    return document


def put(document: dict, tokens: tuple[str, ...], value, *, strict: bool = True) -> None:
    """Write ``value`` at ``tokens``, making the objects and arrays on the way
    (an array where the next token is an index or ``-``). An index past an
    array's end is an error when ``strict`` (the check at start, every value
    present), else the next item (at run time an item whose values are all
    absent is left out). Writing a place twice, or into a value, is an error."""
    node = document
    for depth, token in enumerate(tokens):
        last = depth == len(tokens) - 1
        fresh = None if last else ([] if tokens[depth + 1] == "-"
                                   or INDEX.fullmatch(tokens[depth + 1]) else {})
        if isinstance(node, dict):
            if last:
                if token in node:
                    raise ValueError("two values are written at the same place")
                node[token] = value
                return
            node = node.setdefault(token, fresh)
        elif isinstance(node, list):
            if token != "-" and not INDEX.fullmatch(token):
                raise ValueError(f"{token!r} is not an array index")
            index = len(node) if token == "-" else int(token)
            if index > len(node):
                if strict:
                    raise ValueError(f"array item {index} comes before item {len(node)}")
                index = len(node)
            if last:
                if index < len(node):
                    raise ValueError("two values are written at the same place")
                node.append(value)
                return
            if index == len(node):
                node.append(fresh)
            node = node[index]
        else:
            raise ValueError("a value is written inside another value")
        if not isinstance(node, dict | list):
            raise ValueError("a value is written inside another value")


# ------------------------------------------------------------------ the protocol's settings


@dataclass(frozen=True)
class Call:
    """One HTTP call of the protocol: method, path (``{id}``: the task id),
    and for a poll with a body, where the id goes in it."""

    method: str
    path: str
    id_at: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, value, key: str, default: Call, *, needs_id: bool) -> Call:
        """``value`` (``{method, path}``; the method defaults to ``default``'s)
        checked, or ``default`` when None."""
        if value is None:
            return default
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} must be a mapping of method and path")
        allowed = {"method", "path", "id_at"} if key == "poll" else {"method", "path"}
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise ValueError(f"{key}.{unknown[0]}: not a setting of {key}")
        method = str(value.get("method", default.method)).upper()
        if method not in METHODS:
            raise ValueError(f"{key}.method must be one of {', '.join(METHODS)}")
        if "path" not in value:
            raise ValueError(f"{key}.path is required (a path under base_url)")
        path = value["path"]
        if not isinstance(path, str) or not PATH.fullmatch(path) \
                or set(path.replace("{id}", "")) & set("{}"):
            raise ValueError(f"{key}.path: {path!r} is not a path under base_url "
                             "(starting with /; {id} is the task id)")
        id_at = None
        if value.get("id_at") is not None:
            id_at = pointer_tokens(value["id_at"], f"{key}.id_at", write=True)
            if method == "GET":
                raise ValueError(f"{key}.id_at: a GET has no body (use {{id}} in the path)")
        if needs_id and "{id}" not in path and id_at is None:
            raise ValueError(f"{key}.path: {path!r} must contain {{id}} (the task id)")
        if not needs_id and "{id}" in path:
            raise ValueError(f"{key}.path: there is no task id yet")
        return cls(method, path, id_at)

    def path_for(self, task_id: str) -> str:
        return self.path.replace("{id}", quote(task_id, safe=""))

    def body_for(self, task_id: str) -> dict | None:
        if self.id_at is None:
            return None
        body: dict = {}
        put(body, self.id_at, task_id)
        return body


def _pointers(value, key: str) -> tuple[tuple[str, ...], ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(f"{key} must be a JSON pointer or a list of them")
    return tuple(pointer_tokens(item, f"{key}[{i}]") for i, item in enumerate(items))


def _pointer(conf: Mapping, key: str, default: tuple[str, ...] | None, *,
             optional: bool = False) -> tuple[str, ...] | None:
    """``conf[key]`` as a pointer's tokens (``default`` when absent; null
    switches an ``optional`` one off)."""
    if key not in conf:
        return default
    if conf[key] is None and optional:
        return None
    return pointer_tokens(conf[key], key)


def _statuses(value) -> dict[str, frozenset[str]]:
    if value is None:
        value = DEFAULT_STATUSES
    if not isinstance(value, Mapping):
        raise ValueError(f"statuses must map {', '.join(STATUS_GROUPS)} to status values")
    unknown = sorted(str(k) for k in value if k not in STATUS_GROUPS)
    if unknown:
        raise ValueError(f"statuses.{unknown[0]}: not one of {', '.join(STATUS_GROUPS)}")
    groups, seen = {}, {}
    for group in STATUS_GROUPS:
        values = value.get(group) or ()
        values = [values] if isinstance(values, str | int) else values
        if not isinstance(values, list | tuple) \
                or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"statuses.{group} must be a list of status values")
        for status in map(str, values):
            if status in seen:
                raise ValueError(f"statuses: {status!r} is in both {seen[status]} and {group}")
            seen[status] = group
        groups[group] = frozenset(map(str, values))
    for group in ("running", "succeeded"):
        if not groups[group]:
            raise ValueError(f"statuses.{group}: at least one status value")
    return groups


def _headers(value, auth_header: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("headers must map header names to values")
    headers = {}
    for name, text in value.items():
        if not isinstance(name, str) or not HEADER.fullmatch(name) \
                or name.lower() in (*RESERVED_HEADERS, auth_header.lower()):
            raise ValueError(f"headers: {name!r} cannot be set here")
        if not isinstance(text, str | int) or isinstance(text, bool) \
                or set(str(text)) & {"\r", "\n"}:
            raise ValueError(f"headers.{name} must be a one-line string")
        headers[name] = str(text)
    return headers


@dataclass(frozen=True)
class TaskApi:
    """Where a vendor's task API puts things (the defaults: the protocol above)."""

    submit: Call = Call("POST", "/v1/tasks")
    poll: Call = Call("GET", "/v1/tasks/{id}")
    cancel: Call | None = Call("DELETE", "/v1/tasks/{id}")
    inputs: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {
        name: pointer_tokens(text, name, write=True) for name, text in DEFAULT_INPUTS.items()})
    fixed_inputs: tuple[tuple[tuple[str, ...], object], ...] = ()
    task_id: tuple[str, ...] = ("id",)
    status: tuple[str, ...] = ("status",)
    statuses: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: _statuses(DEFAULT_STATUSES))
    progress: tuple[str, ...] | None = ("progress",)
    progress_scale: float = 1.0
    result_urls: tuple[tuple[str, ...], ...] = (("result_urls",), ("result_url",))
    error_code: tuple[str, ...] | None = ("error", "code")
    error_message: tuple[str, ...] | None = ("error", "message")
    error_retryable: tuple[str, ...] | None = ("error", "retryable")
    refused_codes: frozenset[str] = frozenset()
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, conf: Mapping, auth_header: str = "Authorization") -> TaskApi:
        """The settings of a providers-file entry, each checked (a
        ``ValueError`` names the key); absent ones are the defaults."""
        default = cls()
        inputs = common.field_mapping(conf.get("inputs"), FIELDS, WRITE_POINTER, DEFAULT_INPUTS)
        fixed = conf.get("fixed_inputs") or {}
        if not isinstance(fixed, Mapping):
            raise ValueError("fixed_inputs must map JSON pointers to values")
        codes = conf.get("refused_codes") or ()
        if not isinstance(codes, list | tuple) or not all(isinstance(c, str) for c in codes):
            raise ValueError("refused_codes must be a list of the vendor's error codes")
        api = cls(
            submit=Call.from_config(conf.get("submit"), "submit", default.submit,
                                    needs_id=False),
            poll=Call.from_config(conf.get("poll"), "poll", default.poll, needs_id=True),
            cancel=None if "cancel" in conf and conf["cancel"] in (None, False) else
            Call.from_config(conf.get("cancel"), "cancel", default.cancel, needs_id=True),
            inputs={name: pointer_tokens(text, f"inputs.{name}", write=True)
                    for name, text in inputs.items()},
            fixed_inputs=tuple((pointer_tokens(text, f"fixed_inputs.{text}", write=True), value)
                               for text, value in fixed.items()),
            task_id=_pointer(conf, "task_id", default.task_id),
            status=_pointer(conf, "status", default.status),
            statuses=_statuses(conf.get("statuses")),
            progress=_pointer(conf, "progress", default.progress, optional=True),
            progress_scale=common.conf_number(conf, "progress_scale", default.progress_scale),
            result_urls=_pointers(conf["result_urls"], "result_urls")
            if "result_urls" in conf else default.result_urls,
            error_code=_pointer(conf, "error_code", default.error_code, optional=True),
            error_message=_pointer(conf, "error_message", default.error_message, optional=True),
            error_retryable=_pointer(conf, "error_retryable", default.error_retryable,
                                     optional=True),
            refused_codes=frozenset(codes),
            headers=_headers(conf.get("headers"), auth_header),
        )
        api.check_body()
        return api

    def body(self, values: Mapping, *, strict: bool = False) -> dict:
        """The submit body: the operator's constants, then each mapped field
        whose value is present."""
        body: dict = {}
        for tokens, value in self.fixed_inputs:
            put(body, tokens, value, strict=strict)
        for name, tokens in self.inputs.items():
            if values.get(name) is not None:
                put(body, tokens, values[name], strict=strict)
        return body

    def check_body(self) -> None:
        """Every pointer together makes a body (with every value present):
        none writes into another's value or twice to one place."""
        try:
            self.body({name: f"<{name}>" for name in FIELDS}, strict=True)
        except ValueError as exc:
            raise ValueError(f"inputs/fixed_inputs: {exc}") from None


# ------------------------------------------------------------------ the adapter


class AsyncTaskProvider:
    def __init__(self, name: str, base_url: str, api_key: str | None = None,
                 model: str | None = None, timeout_s: float = 30.0,
                 poll_interval_s: float = 2.0, task_timeout_s: float = 900.0,
                 max_poll_errors: int = 3, job_types: tuple[str, ...] = (base.IMAGE_TO_VIDEO,),
                 max_download_bytes: int = 500 * 1024 * 1024,
                 result_url_allow: tuple[str, ...] = (), resolver=None,
                 allow_private_network: bool = False, api: TaskApi | None = None,
                 auth_header: str = "Authorization", auth_scheme: str | None = "Bearer",
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.model = model or None
        self.api = api or TaskApi()
        base.keep_polling(self, poll_interval_s, task_timeout_s, max_poll_errors, sleep, clock)
        self.job_types = common.job_types_of(job_types, JOB_TYPES)
        self.http = ProviderHttp(name, base_url, api_key, timeout_s, max_download_bytes,
                                 result_url_allow, resolver,
                                 allow_private_network=allow_private_network,
                                 auth_header=auth_header, auth_scheme=auth_scheme or None)

    @classmethod
    def from_config(cls, name: str, conf: dict, **kwargs) -> AsyncTaskProvider:
        auth_header = conf.get("auth_header", "Authorization")
        if not isinstance(auth_header, str) or not HEADER.fullmatch(auth_header):
            raise ValueError(f"auth_header: {auth_header!r} is not a header name")
        scheme = conf.get("auth_scheme", "Bearer") or None  # none: the bare key
        if scheme is not None and (not isinstance(scheme, str) or not HEADER.fullmatch(scheme)):
            raise ValueError(f"auth_scheme: {scheme!r} is not a scheme (e.g. Bearer, Key)")
        return cls(
            name, str(conf.get("base_url") or ""), api_key=conf.get("api_key") or None,
            model=conf.get("model") or None, timeout_s=common.conf_number(conf, "timeout_s", 30),
            poll_interval_s=common.conf_number(conf, "poll_interval_s", 2),
            task_timeout_s=common.conf_number(conf, "task_timeout_s", 900),
            max_poll_errors=int(common.conf_number(conf, "max_poll_errors", 3, whole=True)),
            job_types=conf.get("job_types") or (base.IMAGE_TO_VIDEO,),
            max_download_bytes=int(common.conf_number(conf, "max_download_bytes",
                                                      500 * 1024 * 1024, minimum=1, whole=True)),
            result_url_allow=conf.get("result_url_allow") or (),
            allow_private_network=flag(conf.get("allow_private_network", False)),
            api=TaskApi.from_config(conf, auth_header), auth_header=auth_header,
            auth_scheme=scheme,
            **kwargs,
        )

    # ------------------------------------------------------------------ what is sent

    def values(self, request: base.ProviderRequest) -> dict:
        """Every Darkroom field's value (None: absent, not sent)."""
        image = request.source_image
        content_type = (request.source_content_type or "image/png") if image else None
        return {
            "job_type": request.job_type, "model": self.model, "prompt": request.prompt,
            "negative_prompt": request.negative_prompt, "seed": request.seed,
            "n": request.n, "width": request.width, "height": request.height,
            "size": request.size, "strength": request.strength,
            "duration_s": request.duration_s,
            "image": {"content_type": content_type, "data": common.b64(image)} if image else None,
            "image_data_uri": common.data_uri(image, content_type) if image else None,
            "image_base64": common.b64(image) if image else None,
            "image_content_type": content_type,
            "shots": [shot.to_dict() for shot in request.shots] or None,
        }

    def payload(self, request: base.ProviderRequest) -> dict:
        """Exactly what is sent: the prompt, parameters and source image, where
        ``inputs`` puts them, and the operator's ``fixed_inputs``."""
        return self.api.body(self.values(request))

    def _call(self, call: Call, task_id: str | None = None, payload: dict | None = None) -> dict:
        path = call.path if task_id is None else call.path_for(task_id)
        body = payload if task_id is None else call.body_for(task_id)
        return self.http.call(call.method, path, body, headers=dict(self.api.headers))

    # ------------------------------------------------------------------ running

    def generate(self, request: base.ProviderRequest,
                 progress: base.ProgressCallback | None = None) -> base.ProviderResult:
        base.submitting(self, request, progress)
        answer = self._call(self.api.submit, payload=self.payload(request))
        task_id = resolve(answer, self.api.task_id)
        if not isinstance(task_id, str | int) or isinstance(task_id, bool) or not str(task_id):
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} answered without a task id")
        status = self._wait(str(task_id), progress)
        urls = self._result_urls(status)
        if len(urls) < request.n:
            raise base.TransientProviderError(
                "invalid_provider_output", f"{self.name} finished without a result URL per output")
        outputs = []
        for index, url in enumerate(urls[: request.n]):
            base.report(progress, 0.9 + 0.1 * index / len(urls), "downloading")
            data, _ = self.http.download(url)
            outputs.append(video_output(data, self.name) if request.job_type == base.IMAGE_TO_VIDEO
                           else image_output(data, self.name))
        base.report(progress, 1.0, "downloaded")
        return base.ProviderResult(tuple(outputs))

    def _wait(self, task_id: str, progress: base.ProgressCallback | None) -> dict:
        api = self.api

        def read(answer: dict) -> dict | None:
            state = resolve(answer, api.status)
            state = None if isinstance(state, bool) or not isinstance(state, str | int) \
                else str(state)
            if state in api.statuses["succeeded"]:
                return answer
            if state in api.statuses["failed"]:
                raise self._failure(answer)
            if state in api.statuses["refused"]:
                code = error_code(resolve(answer, api.error_code)) if api.error_code else None
                raise base.PermanentProviderError(
                    base.CONTENT_REFUSED, f"{self.name} task refused" + (f": {code}" if code else ""))
            if state in api.statuses["ended"]:
                raise base.task_ended(self.name, "task", state)
            if state not in api.statuses["running"]:
                raise base.unknown_status(self.name, "task")
            fraction = resolve(answer, api.progress) if api.progress is not None else None
            if isinstance(fraction, int | float) and not isinstance(fraction, bool):
                base.report(progress, 0.9 * float(fraction) / api.progress_scale,
                            _stage(state))
            else:
                base.report(progress, 0.0, _stage(state))
            return None

        cancel = None
        if api.cancel is not None:
            def cancel():
                self._call(api.cancel, task_id)

        return base.wait_for_task(lambda: self._call(api.poll, task_id), read, who=self.name,
                                  cancel=cancel, **base.polling(self))

    def _result_urls(self, answer: dict) -> list[str]:
        for tokens in self.api.result_urls:
            found = resolve(answer, tokens)
            urls = [found] if isinstance(found, str) else found
            if isinstance(urls, list) and urls:
                if not all(isinstance(url, str) and url for url in urls):
                    break
                return urls
        return []

    def _failure(self, answer: dict) -> base.ProviderError:
        api = self.api
        raw_code = resolve(answer, api.error_code) if api.error_code is not None else None
        text = str(raw_code if raw_code is not None else "")
        if api.error_message is not None:
            text += " " + str(resolve(answer, api.error_message, ""))
        retryable = resolve(answer, api.error_retryable, True) \
            if api.error_retryable is not None else True
        # the code only: a task's error message may echo the request or a URL
        shown = error_code(raw_code)
        message = f"{self.name} task failed" + (f": {shown}" if shown else "")
        if raw_code is not None and str(raw_code) in api.refused_codes:
            return base.PermanentProviderError(base.CONTENT_REFUSED, message)
        if retryable is False:
            if any(hint in text.lower() for hint in REFUSAL_HINTS):
                return base.PermanentProviderError(base.CONTENT_REFUSED, message)
            return base.PermanentProviderError("provider_rejected_request", message)
        return base.TransientProviderError("provider_task_failed", message)


def _stage(state: str) -> str:
    """A vendor's status as a progress stage (a short snake_case word)."""
    stage = re.sub(r"[^a-z0-9]+", "_", state.lower()).strip("_")[:32]
    return stage or "running"
