"""The ``comfyui`` provider: self-hosted ComfyUI servers, used as a pool.

The operator exports a workflow per job type from ComfyUI in API format
("Export (API)": ``{"<node id>": {"class_type": ..., "inputs": {...}}}``) and
says which node inputs take Darkroom's fields::

    studio:
      type: comfyui
      hosts: [http://10.0.0.5:8188, http://10.0.0.6:8188]
      max_concurrency: 2            # per host
      allow_private_network: true
      workflows:
        text-to-image:
          file: comfyui/txt2img.json    # relative to base_dir (the providers file's folder)
          inputs: {prompt: "6.text", negative_prompt: "7.text", seed: "3.seed",
                   width: "5.width", height: "5.height", n: "5.batch_size"}
          outputs: ["9"]                # optional: the nodes whose files are the result

An ``inputs`` value is ``"<node id>.<input name>"`` (or a list of them, to set
one field in several nodes). Mappable fields: ``prompt``, ``negative_prompt``,
``seed``, ``width``, ``height``, ``n``, ``strength``, ``duration_s`` and
``image`` (the uploaded source image's name, for a ``LoadImage`` node). A
mapped node or input that the workflow does not have, a workflow in UI format,
an image-to-image workflow without ``image`` are configuration errors at start.

The API (ComfyUI's ``server.py``; every route is also served under ``/api``):

1. ``POST /upload/image`` (multipart: ``image`` = the source bytes under a
   random file name, ``type=input``, ``overwrite=true``) → ``{name, subfolder,
   type}``; the name goes into the ``image`` input.
2. ``POST /prompt {"prompt": <workflow with the mapped inputs set>,
   "client_id": <random>}`` → ``{prompt_id, number, node_errors}``; a 400
   (``{"error": {...}, "node_errors": {...}}``: the graph does not validate)
   is permanent.
3. ``GET /history/{prompt_id}`` every ``poll_interval_s``: ``{}`` until done,
   then ``{prompt_id: {outputs, status}}``. ``status.status_str == "error"``:
   an ``execution_error`` whose type or message says it was a safety/NSFW
   check is the permanent ``provider_content_refused``; any other failure of
   the run (out of memory, interrupted, a node's exception) is the transient
   ``provider_task_failed``, so the router may retry or fail over.
   With ``follow: websocket``, a ``GET /ws?clientId=<client_id>`` websocket,
   opened before the first submission (under the address checks of every
   call: :func:`open_websocket`), says when the run ended instead
   (``executing`` with ``node: null``, ``execution_success``,
   ``execution_error``, ``execution_interrupted``; ``progress`` is
   reported), and ``/history`` is read once; a socket that cannot open,
   breaks off or stays silent until the deadline hands over to polling.
4. ``GET /view?filename=&subfolder=&type=`` for each file of the outputs
   (``images``, ``gifs``, ``videos`` lists): the files of type ``output``
   (``SaveImage``), or ``temp`` ones (``PreviewImage``) when there are none,
   or every file of the ``outputs`` nodes when the workflow names them. Each
   is checked by decoding (PNG/JPEG/WebP image, or MP4 video).
5. ``POST /history {"delete": [prompt_id]}``, best effort, so the prompt does
   not stay in the server's history (``keep_history: true`` keeps it).

After ``task_timeout_s`` the run is abandoned: ``GET /queue`` says where it
is, ``POST /queue {"delete": [prompt_id]}`` takes it off the queue and, if it
is running, ``POST /interrupt {"prompt_id": ...}`` stops it; the attempt
fails with the transient ``provider_timeout``.

The pool: each host takes at most ``max_concurrency`` runs of this process at
once; a run goes to the healthy host with the fewest runs in flight. A host
is health-checked (``GET {health_path}``, default ``/system_stats``) before
its first use and then at most every ``health_interval_s``; a host that fails
a check, or a call with a connection failure, timeout or 5xx, is skipped for
``health_interval_s``. If the chosen host cannot take the submission
(connection failure or 5xx: nothing was queued), the next host is tried; a
submission that timed out may have been queued, so it is not handed over. When every host is busy, a run waits up
to ``queue_timeout_s`` for a free slot (then the transient ``provider_busy``).

What is sent
------------
Only the workflow graph with the mapped fields filled in (prompt, negative
prompt, seed, width, height, n, strength, duration, the uploaded image's
name), the source image bytes under a random file name, and a random
``client_id`` per attempt on a host (its runs share it; the websocket
listens for it). No account identifier: no user id, email, job id or
key of ours. No authentication header unless ``api_key`` is set (for a reverse
proxy in front of ComfyUI; then ``Authorization: Bearer <api_key>``).

Limits
------
- A field without a mapping is not sent: the workflow's own value applies.
- ``seed`` mapped but not given: a random seed per run (ComfyUI graphs carry
  a fixed seed, which would repeat the same image).
- ``n`` not mapped (no batch size): the workflow runs ``n`` times on the same
  host, one output taken from each run, with seeds ``seed, seed+1, ...`` when
  ``seed`` is mapped (otherwise the runs may give the same image).
- ComfyUI has no content policy of its own; only a safety node in the
  workflow can refuse, by failing with an error naming safety/NSFW.
- ComfyUI keeps uploaded source images in its ``input`` folder and results in
  its ``output`` folder; its HTTP API cannot delete files, so the operator
  must clean those folders (a cron job) to honour retention.
- ``region``: wherever the operator runs the hosts (``on-premises``).
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import websocket

from services.common.config import flag
from services.common.contracts.generation import JOB_TYPES
from services.generation.providers import base, common
from services.generation.providers.http import (
    REFUSAL_HINTS,
    ProviderHttp,
    error_code,
    raise_for_status,
)
from services.generation.webhooks import UnsafeUrl

log = logging.getLogger(__name__)

#: Darkroom's fields a workflow input may take.
FIELDS = ("prompt", "negative_prompt", "seed", "width", "height", "n", "strength",
          "duration_s", "image")
#: Node output lists that hold files.
FILE_LISTS = ("images", "gifs", "videos")
#: Errors that say a host is unwell (as opposed to the request being wrong).
HOST_DOWN = ("provider_connection_failed", "provider_timeout", "provider_server_error")
SEED_RANGE = 2 ** 32
#: How a run is followed: polling ``/history``, or ComfyUI's ``/ws`` messages.
FOLLOW = ("history", "websocket")
#: ``/ws`` messages that end a run (``executing`` with ``node: null`` too).
RUN_FAILED = ("execution_error", "execution_interrupted")
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


@dataclass(frozen=True)
class Workflow:
    """An API-format workflow and where each field goes in it."""

    graph: dict
    inputs: dict[str, tuple[tuple[str, str], ...]]
    outputs: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, job_type: str, conf, base_dir: Path) -> Workflow:
        where = f"workflows.{job_type}"
        if job_type not in JOB_TYPES:
            raise ValueError(f"{where}: unknown job type")
        if not isinstance(conf, dict) or not conf.get("file"):
            raise ValueError(f"{where}.file: the path of an API-format workflow JSON is required")
        path = Path(str(conf["file"]))
        path = path if path.is_absolute() else base_dir / path
        try:
            graph = json.loads(path.read_text())
        except OSError as exc:
            raise ValueError(f"{where}.file: cannot read {path} ({exc.strerror})") from None
        except ValueError:
            raise ValueError(f"{where}.file: {path} is not JSON") from None
        if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
            raise ValueError(f"{where}.file: {path} is a UI-format workflow; "
                             "export it with 'Export (API)'")
        if not isinstance(graph, dict) or not graph or not all(
                isinstance(node, dict) and isinstance(node.get("class_type"), str)
                and isinstance(node.get("inputs"), dict) for node in graph.values()):
            raise ValueError(f"{where}.file: {path} is not an API-format workflow "
                             "({node id: {class_type, inputs}})")
        mapping = conf.get("inputs") or {}
        if not isinstance(mapping, dict):
            raise ValueError(f"{where}.inputs: a mapping of field to \"<node id>.<input>\"")
        inputs = {}
        for name, targets in mapping.items():
            if name not in FIELDS:
                raise ValueError(f"{where}.inputs.{name}: unknown field "
                                 f"(one of {', '.join(FIELDS)})")
            targets = [targets] if isinstance(targets, str) else list(targets or ())
            parsed = []
            for target in targets:
                node, dot, key = str(target).partition(".")
                if not dot or not node or not key:
                    raise ValueError(f"{where}.inputs.{name}: {target!r} is not "
                                     "\"<node id>.<input name>\"")
                if node not in graph:
                    raise ValueError(f"{where}.inputs.{name}: node {node!r} is not in {path}")
                if key not in graph[node]["inputs"]:
                    raise ValueError(f"{where}.inputs.{name}: node {node!r} "
                                     f"({graph[node]['class_type']}) has no input {key!r}")
                parsed.append((node, key))
            if not parsed:
                raise ValueError(f"{where}.inputs.{name}: no target")
            inputs[name] = tuple(parsed)
        if job_type in (base.IMAGE_TO_IMAGE, base.IMAGE_TO_VIDEO) and "image" not in inputs:
            raise ValueError(f"{where}.inputs.image: {job_type} needs the node input that "
                             "takes the source image (e.g. a LoadImage node's \"image\")")
        outputs = tuple(str(node) for node in conf.get("outputs") or ())
        for node in outputs:
            if node not in graph:
                raise ValueError(f"{where}.outputs: node {node!r} is not in {path}")
        return cls(graph, inputs, outputs)

    @property
    def batched(self) -> bool:
        """Does one run make ``n`` images (``n`` is mapped to a batch size)?"""
        return "n" in self.inputs

    def values(self, request: base.ProviderRequest, image: str | None, seed: int | None) -> dict:
        """The mapped fields that have a value, typed as ComfyUI expects."""
        values = {"prompt": request.prompt, "negative_prompt": request.negative_prompt,
                  "seed": seed, "width": request.width, "height": request.height,
                  "n": request.n, "strength": request.strength,
                  "duration_s": request.duration_s, "image": image}
        return {k: v for k, v in values.items() if k in self.inputs and v is not None}

    def build(self, request: base.ProviderRequest, image: str | None, seed: int | None) -> dict:
        """The graph to submit: a copy of the workflow with the mapped inputs set."""
        graph = copy.deepcopy(self.graph)
        for name, value in self.values(request, image, seed).items():
            for node, key in self.inputs[name]:
                graph[node]["inputs"][key] = value
        return graph


@dataclass(eq=False)  # a host is itself, whatever its counters say
class Host:
    url: str
    http: ProviderHttp
    in_flight: int = 0
    checked_at: float | None = None  # last good health check
    down_until: float = 0.0


@dataclass(eq=False)
class Pool:
    """ComfyUI hosts with a per-host concurrency limit and health checks."""

    name: str
    hosts: list[Host]
    max_concurrency: int
    health_path: str
    health_interval_s: float
    queue_timeout_s: float
    poll_interval_s: float
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _turn: int = 0

    def acquire(self, exclude: Iterable[Host] = ()) -> Host:
        """A slot on the healthy host with the fewest runs in flight (ties in
        turn), waiting up to ``queue_timeout_s`` while every host is busy."""
        deadline = self.clock() + self.queue_timeout_s
        exclude = list(exclude)
        while True:
            host, busy = self._reserve(exclude)
            if host is not None:
                if self._healthy(host):
                    return host
                self.release(host)
                exclude.append(host)
                continue
            if not busy:
                raise base.TransientProviderError(
                    "provider_connection_failed", f"{self.name}: no ComfyUI host is reachable")
            if self.clock() + self.poll_interval_s > deadline:
                raise base.TransientProviderError(
                    "provider_busy", f"{self.name}: every ComfyUI host is busy "
                    f"(max_concurrency {self.max_concurrency} each)")
            self.sleep(self.poll_interval_s)

    def _reserve(self, exclude: list[Host]) -> tuple[Host | None, bool]:
        """``(host, _)`` with a slot taken, or ``(None, some host is only busy)``."""
        now = self.clock()
        with self._lock:
            usable = [h for h in self.hosts if h not in exclude and h.down_until <= now]
            free = [h for h in usable if h.in_flight < self.max_concurrency]
            if not free:
                return None, bool(usable)
            self._turn += 1
            order = {id(h): (i - self._turn) % len(self.hosts) for i, h in enumerate(self.hosts)}
            host = min(free, key=lambda h: (h.in_flight, order[id(h)]))
            host.in_flight += 1
            return host, True

    def release(self, host: Host) -> None:
        with self._lock:
            host.in_flight = max(0, host.in_flight - 1)

    def mark_down(self, host: Host) -> None:
        with self._lock:
            host.down_until = self.clock() + self.health_interval_s
            host.checked_at = None

    def _healthy(self, host: Host) -> bool:
        now = self.clock()
        if host.checked_at is not None and now - host.checked_at < self.health_interval_s:
            return True
        try:
            response = host.http.send("GET", f"{host.http.base_url}{self.health_path}")
            with response:
                raise_for_status(response, host.http.who)
        except base.ProviderError:
            self.mark_down(host)
            return False
        host.checked_at = now
        return True


def _hosts(conf: dict) -> list[str]:
    hosts = conf.get("hosts")
    if hosts is None:
        hosts = [conf["base_url"]] if conf.get("base_url") else []
    if isinstance(hosts, str):
        hosts = [part.strip() for part in hosts.split(",") if part.strip()]
    if not isinstance(hosts, list | tuple) or not hosts:
        raise ValueError("hosts: at least one ComfyUI URL (e.g. http://10.0.0.5:8188)")
    hosts = [str(h).rstrip("/") for h in hosts]
    if len(set(hosts)) != len(hosts):
        raise ValueError("hosts: a host is listed twice")
    return hosts


def open_websocket(http: ProviderHttp, path: str) -> websocket.WebSocket:
    """A websocket to ``path`` on ``http``'s base URL, under the rules of its
    HTTP calls: the host resolved and checked by its guard before connecting
    (private addresses only with ``allow_private_network``), the peer address
    checked again once connected (no DNS rebinding in between), no proxy,
    the key only to this origin, ``timeout_s`` to connect. Failing is
    transient: ``invalid_provider_output`` for an address the guard refuses,
    ``provider_connection_failed`` otherwise."""
    url = f"{http.base_url}{path}"
    parts = urlsplit(url)
    host, secure = parts.hostname or "", parts.scheme == "https"
    sock = None
    try:
        http.guard.check(url)
        sock = socket.create_connection((host, parts.port or (443 if secure else 80)),
                                        timeout=http.timeout_s)
        if not http.guard.address_allowed(host, sock.getpeername()[0]):
            raise UnsafeUrl("address_not_allowed",
                            "the connection reached a private or reserved address")
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        return websocket.create_connection(
            ("wss" if secure else "ws") + url[len(parts.scheme):], timeout=http.timeout_s,
            socket=sock, suppress_origin=True,
            header=[f"{k}: {v}" for k, v in http._auth_headers(url).items()])
    except UnsafeUrl as exc:
        _close(sock)
        raise base.TransientProviderError(
            "invalid_provider_output", f"{http.provider} websocket: {exc.message}") from None
    except (OSError, websocket.WebSocketException):
        _close(sock)
        raise base.TransientProviderError(
            "provider_connection_failed", f"cannot open a websocket to {http.who}") from None


def _close(sock) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _message(frame) -> tuple[str, dict] | None:
    """A ``/ws`` text frame as ``(type, data)``; None for anything else
    (binary frames are previews)."""
    if not isinstance(frame, str):
        return None
    try:
        message = json.loads(frame)
    except ValueError:
        return None
    if isinstance(message, dict) and isinstance(message.get("type"), str) \
            and isinstance(message.get("data"), dict):
        return message["type"], message["data"]
    return None


def _done(data: dict) -> float | None:
    """How far a ``progress`` message says the current node is (0..1)."""
    value, most = data.get("value"), data.get("max")
    if isinstance(value, int | float) and isinstance(most, int | float) and most > 0:
        return max(0.0, min(1.0, value / most))
    return None


class ComfyUIProvider:
    def __init__(self, name: str, hosts: list[str], workflows: dict[str, Workflow], *,
                 api_key: str | None = None, timeout_s: float = 30.0,
                 poll_interval_s: float = 1.0, task_timeout_s: float = 600.0,
                 max_poll_errors: int = 3, max_concurrency: int = 1,
                 health_path: str = "/system_stats", health_interval_s: float = 30.0,
                 queue_timeout_s: float = 60.0, keep_history: bool = False,
                 follow: str = "history",
                 job_types: Iterable[str] | None = None,
                 max_download_bytes: int = 200 * 1024 * 1024,
                 allow_private_network: bool = False, resolver=None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        job_types = frozenset(job_types or workflows)
        missing = sorted(job_types - set(workflows))
        if missing:
            raise ValueError(f"workflows.{missing[0]}: job_types lists it, but it has no workflow")
        for key, value in (("max_concurrency", max_concurrency), ("timeout_s", timeout_s),
                           ("poll_interval_s", poll_interval_s),
                           ("task_timeout_s", task_timeout_s)):
            if not value > 0:
                raise ValueError(f"{key}: must be positive")
        if not health_path.startswith("/"):
            raise ValueError("health_path: a path such as /system_stats or /queue")
        if follow not in FOLLOW:
            raise ValueError(f"follow must be one of {', '.join(FOLLOW)}")
        self.follow = follow
        self.name = name
        self.job_types = job_types
        self.workflows = workflows
        base.keep_polling(self, poll_interval_s, task_timeout_s, max_poll_errors, sleep, clock)
        self.keep_history = keep_history
        self.pool = Pool(name, [
            Host(url, ProviderHttp(name, url, api_key, timeout_s, max_download_bytes,
                                   resolver=resolver,
                                   allow_private_network=allow_private_network))
            for url in hosts], int(max_concurrency), health_path, float(health_interval_s),
            float(queue_timeout_s), self.poll_interval_s, sleep, clock)

    @property
    def http(self) -> ProviderHttp:
        """The first host's HTTP client (the router sets its resolver; every
        host got the same one at construction)."""
        return self.pool.hosts[0].http

    @classmethod
    def from_config(cls, name: str, conf: dict, **kwargs) -> ComfyUIProvider:
        base_dir = Path(str(conf.get("base_dir") or "."))
        workflows_conf = conf.get("workflows")
        if not isinstance(workflows_conf, dict) or not workflows_conf:
            raise ValueError("workflows: one API-format workflow per job type is required")
        workflows = {str(job_type): Workflow.from_config(str(job_type), wf, base_dir)
                     for job_type, wf in workflows_conf.items()}
        return cls(
            name, _hosts(conf), workflows, api_key=conf.get("api_key") or None,
            timeout_s=float(conf.get("timeout_s", 30)),
            poll_interval_s=float(conf.get("poll_interval_s", 1)),
            task_timeout_s=float(conf.get("task_timeout_s", 600)),
            max_poll_errors=int(conf.get("max_poll_errors", 3)),
            max_concurrency=int(conf.get("max_concurrency", 1)),
            health_path=str(conf.get("health_path", "/system_stats")),
            health_interval_s=float(conf.get("health_interval_s", 30)),
            queue_timeout_s=float(conf.get("queue_timeout_s", 60)),
            keep_history=flag(conf.get("keep_history", False)),
            follow=common.conf_choice(conf, "follow", FOLLOW) or "history",
            job_types=conf.get("job_types") or None,
            max_download_bytes=int(conf.get("max_download_bytes", 200 * 1024 * 1024)),
            allow_private_network=flag(conf.get("allow_private_network", False)),
            **kwargs,
        )

    # ------------------------------------------------------------ a job

    def generate(self, request: base.ProviderRequest,
                 progress: base.ProgressCallback | None = None) -> base.ProviderResult:
        base.submitting(self, request, progress)
        workflow = self.workflows[request.job_type]
        tried: list[Host] = []
        while True:
            host = self.pool.acquire(exclude=tried)
            try:
                return self._run(host, workflow, request, progress)
            except _NotSubmitted as failed:
                # the host is unwell and nothing was queued on it (a timeout may
                # have been queued, so it is not handed over): try the next host
                self.pool.mark_down(host)
                tried.append(host)
                if failed.error.code == "provider_timeout" \
                        or len(tried) == len(self.pool.hosts):
                    raise failed.error from None
            finally:
                self.pool.release(host)

    def _run(self, host: Host, workflow: Workflow, request: base.ProviderRequest,
             progress: base.ProgressCallback | None) -> base.ProviderResult:
        client_id = uuid.uuid4().hex
        ws = self._listen(host, client_id) if self.follow == "websocket" else None
        try:
            return self._run_on(host, workflow, request, progress, client_id, ws)
        finally:
            if ws is not None:
                ws.close(timeout=1)

    def _listen(self, host: Host, client_id: str) -> websocket.WebSocket | None:
        """The host's ``/ws`` for this client id's messages, opened before the
        first submission so none is missed; None (follow ``/history``
        instead) when it cannot be opened."""
        try:
            return open_websocket(host.http, f"/ws?clientId={client_id}")
        except base.TransientProviderError as exc:
            log.warning("%s: no websocket (%s), following the run through /history",
                        self.name, exc.code)
            return None

    def _run_on(self, host: Host, workflow: Workflow, request: base.ProviderRequest,
                progress: base.ProgressCallback | None, client_id: str,
                ws: websocket.WebSocket | None) -> base.ProviderResult:
        runs = 1 if workflow.batched else request.n
        per_run = request.n if workflow.batched else 1
        try:
            image = self._upload(host, request) if "image" in workflow.inputs else None
            prompt_id = self._submit(host, workflow, request, image, 0, client_id)
        except base.TransientProviderError as exc:
            if exc.code in HOST_DOWN:
                raise _NotSubmitted(exc) from None
            raise
        files = []
        for index in range(runs):
            if index:
                prompt_id = self._submit(host, workflow, request, image, index, client_id)
            base.report(progress, 0.1 + 0.8 * index / runs, "queued")
            entry = self._wait(host, prompt_id, progress, 0.1 + 0.8 * index / runs,
                               0.8 / runs, ws)
            found = self._files(entry, workflow)
            if len(found) < per_run:
                raise base.TransientProviderError(
                    "invalid_provider_output",
                    f"{self.name} finished with {len(found)} output files, expected {per_run}")
            files += [(prompt_id, f) for f in found[:per_run]]
        outputs = []
        for index, (_, ref) in enumerate(files):
            base.report(progress, 0.9 + 0.1 * index / len(files), "downloading")
            outputs.append(self._download(host, ref))
        for prompt_id in dict.fromkeys(p for p, _ in files):
            if not self.keep_history:
                self._quietly(host, "/history", {"delete": [prompt_id]})
        base.report(progress, 1.0, "downloaded")
        return base.ProviderResult(tuple(outputs))

    def _upload(self, host: Host, request: base.ProviderRequest) -> str | None:
        if request.source_image is None:
            return None
        content_type = request.source_content_type or "image/png"
        filename = f"{secrets.token_hex(12)}.{EXTENSIONS.get(content_type, 'png')}"
        response = host.http.send(
            "POST", f"{host.http.base_url}/upload/image",
            files={"image": (filename, request.source_image, content_type)},
            data={"type": "input", "overwrite": "true"})
        body = host.http.answer(response)
        name, subfolder = body.get("name"), body.get("subfolder") or ""
        if not isinstance(name, str) or not name or not isinstance(subfolder, str):
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} answered an upload without a name")
        return f"{subfolder}/{name}" if subfolder else name

    def _submit(self, host: Host, workflow: Workflow, request: base.ProviderRequest,
                image: str | None, index: int, client_id: str) -> str:
        seed = request.seed
        if "seed" in workflow.inputs:
            seed = secrets.randbelow(SEED_RANGE) if seed is None else seed
            seed = seed + index if not workflow.batched else seed
        body = {"prompt": workflow.build(request, image, seed), "client_id": client_id}
        answer = host.http.call("POST", "/prompt", body)
        return common.answer_id(answer.get("prompt_id"), self.name, "a prompt_id")

    def _wait(self, host: Host, prompt_id: str, progress: base.ProgressCallback | None,
              fraction: float, span: float, ws: websocket.WebSocket | None) -> dict:
        """The run's ``/history`` entry once it is done: looked for when the
        websocket says the run ended (or broke off), polled without one."""
        deadline = self.clock() + self.task_timeout_s
        if ws is not None:
            self._follow(ws, prompt_id, deadline, lambda done: base.report(
                progress, fraction + span * done, "running"))
        path = f"/history/{quote(prompt_id, safe='')}"

        def read(history: dict) -> dict | None:
            entry = history.get(prompt_id)
            if isinstance(entry, dict):
                status = entry.get("status") or {}
                if not isinstance(status, dict):
                    status = {}
                if status.get("status_str") == "error":
                    if not self.keep_history:
                        self._quietly(host, "/history", {"delete": [prompt_id]})
                    raise self._failure(status.get("messages"))
                return entry
            base.report(progress, fraction, "running")
            return None

        def gave_up(error: base.ProviderError) -> None:
            if error.code in HOST_DOWN:
                self.pool.mark_down(host)

        return base.wait_for_task(
            lambda: host.http.call("GET", path), read, who=self.name, what="the workflow",
            deadline=deadline, **base.polling(self),
            cancel=lambda: self._cancel(host, prompt_id), gave_up=gave_up)

    def _follow(self, ws: websocket.WebSocket, prompt_id: str, deadline: float,
                progress: Callable[[float], None]) -> None:
        """Read the run's ``/ws`` messages until it ends (``executing`` with
        ``node: null``, ``execution_success``, ``execution_error``,
        ``execution_interrupted``): its outcome is then in ``/history``. A
        socket that breaks off or stays silent until the deadline hands over
        to polling ``/history``, which says how the run ended or times it out."""
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return
            try:
                ws.settimeout(remaining)
                message = _message(ws.recv())
            except (websocket.WebSocketException, OSError) as exc:
                log.warning("%s: the websocket broke off (%s), following the run through "
                            "/history", self.name, type(exc).__name__)
                return
            if message is None or message[1].get("prompt_id") != prompt_id:
                continue  # another run's, a status broadcast, a preview
            kind, data = message
            if kind in RUN_FAILED or kind == "execution_success" \
                    or (kind == "executing" and data.get("node") is None):
                return
            done = _done(data) if kind == "progress" else None
            if done is not None:
                progress(done)

    def _failure(self, messages) -> base.ProviderError:
        """A failed run: refused by a safety node (permanent), or anything else."""
        for message in messages if isinstance(messages, list) else ():
            if not (isinstance(message, list | tuple) and len(message) == 2
                    and isinstance(message[1], dict)):
                continue
            event, data = message
            if event == "execution_error":
                kind = str(data.get("exception_type") or "")
                text = f"{kind} {data.get('exception_message') or ''}".lower()
                # the type only: the message may echo the prompt or a path
                shown = error_code(kind)
                where = f"{self.name} workflow failed" + (f": {shown}" if shown else "")
                if any(hint in text for hint in REFUSAL_HINTS):
                    return base.PermanentProviderError(base.CONTENT_REFUSED, where)
                return base.TransientProviderError("provider_task_failed", where)
            if event == "execution_interrupted":
                return base.TransientProviderError("provider_task_failed",
                                                   f"{self.name} workflow was interrupted")
        return base.TransientProviderError("provider_task_failed", f"{self.name} workflow failed")

    def _cancel(self, host: Host, prompt_id: str) -> None:
        """Take the run off the queue, or interrupt it if it is running (best effort)."""
        running = False
        try:
            queue = host.http.call("GET", "/queue")
            running = any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id
                          for item in queue.get("queue_running") or ())
        except base.ProviderError:
            pass
        self._quietly(host, "/queue", {"delete": [prompt_id]})
        if running:
            self._quietly(host, "/interrupt", {"prompt_id": prompt_id})

    def _quietly(self, host: Host, path: str, payload: dict) -> None:
        """A POST whose answer is an empty 200; failures are ignored."""
        try:
            response = host.http.send("POST", f"{host.http.base_url}{path}", json=payload)
            response.close()
        except base.ProviderError:
            pass

    def _files(self, entry: dict, workflow: Workflow) -> list[dict]:
        """The file references of a finished run, in node order."""
        outputs = entry.get("outputs")
        if not isinstance(outputs, dict):
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} finished without outputs")
        nodes = workflow.outputs or tuple(sorted(outputs, key=_node_order))
        found = []
        for node in nodes:
            output = outputs.get(node)
            for key in FILE_LISTS:
                items = output.get(key) if isinstance(output, dict) else None
                for item in items if isinstance(items, list) else ():
                    if isinstance(item, dict) and isinstance(item.get("filename"), str):
                        found.append(item)
        if workflow.outputs:
            return found
        saved = [f for f in found if f.get("type", "output") == "output"]
        return saved or found

    def _download(self, host: Host, ref: dict) -> base.ProviderOutput:
        query = urlencode({"filename": ref["filename"], "subfolder": ref.get("subfolder") or "",
                           "type": ref.get("type") or "output"})
        try:
            data, content_type = host.http.download(f"{host.http.base_url}/view?{query}")
        except base.PermanentProviderError as exc:  # the file it just listed is not there
            raise base.TransientProviderError(
                "invalid_provider_output", f"{self.name} cannot serve its output file "
                f"({exc.status})") from None
        return common.media_output(data, content_type, self.name)


class _NotSubmitted(Exception):
    """The host failed before it accepted the run: another host may take it."""

    def __init__(self, error: base.TransientProviderError):
        super().__init__(error.code)
        self.error = error


def _node_order(node: str):
    return (0, int(node), "") if node.isdigit() else (1, 0, node)

