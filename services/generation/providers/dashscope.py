"""The ``dashscope`` provider: Alibaba Cloud DashScope (Model Studio), its
asynchronous task API for qwen-image (text-to-image) and Wan (image-to-video).

The protocol (DashScope's documented HTTP API, ``Authorization: Bearer <api_key>``):

- submit ``POST {base_url}/services/aigc/text2image/image-synthesis`` (images)
  or ``POST {base_url}/services/aigc/video-generation/video-synthesis``
  (video), with header ``X-DashScope-Async: enable`` and
  ``{"model", "input": {...}, "parameters": {...}}`` → ``{"output":
  {"task_id", "task_status": "PENDING"}, "request_id"}``;
- poll ``GET {base_url}/tasks/{task_id}`` every ``poll_interval_s`` (5 s;
  a tenth of ``timeout_s`` when that is shorter), a transiently failing poll
  tolerated ``max_poll_errors`` (3) times in a row:
  ``output.task_status`` is PENDING, RUNNING or SUSPENDED (keep waiting),
  SUCCEEDED (images: ``output.results[].url``, items that failed carry
  ``code``/``message`` instead; video: ``output.video_url``), FAILED
  (``output.code``, ``output.message``), CANCELED or UNKNOWN (an unknown or
  expired task id);
- download the result URLs (OSS, valid 24 h) through the SSRF guard;
- cancel ``POST {base_url}/tasks/{task_id}/cancel`` (only a PENDING task can
  be cancelled; best effort) when the attempt gives up on a task.

What is sent
------------
text-to-image (qwen-image, qwen-image-plus; ``sizes`` and
``images_per_task`` make it fit other DashScope image models)::

    {"model": "<model>", "input": {"prompt": "..."},
     "parameters": {"n": 1, "size": "1328*1328", "negative_prompt": "...",
                    "seed": 7, "prompt_extend": false, "watermark": false}}

image-to-video (Wan first-frame models, wan2.1 … wan2.6 ``*-i2v*``)::

    {"model": "<model>",
     "input": {"prompt": "...", "negative_prompt": "...",
               "img_url": "data:image/png;base64,<source image>"},
     "parameters": {"resolution": "720P", "duration": 5, "seed": 7,
                    "prompt_extend": false, "watermark": false}}

A field is left out when the request (or the config, for ``resolution``,
``prompt_extend``, ``watermark``) does not set it; the vendor's default
applies. A Wan model takes ``negative_prompt`` in ``input``, a qwen model in
``parameters`` (as each one's API reference shows). Nothing else is sent: no
user, job or request id of ours; DashScope makes its own ``request_id``.
The headers are the API key, ``Content-Type``, ``X-DashScope-Async`` on a
submit, and ``X-DashScope-WorkSpace`` when the config names a ``workspace``.

Limits
------
- ``n``: qwen-image makes one image per task, so ``n`` images are ``n``
  tasks (``images_per_task`` sends more per task to a model that takes them).
  With a seed, task ``i`` gets ``seed + i`` so the images differ.
- ``size``: qwen-image has five sizes (``1664*928, 1472*1104, 1328*1328,
  1104*1472, 928*1664``); the one nearest the requested aspect ratio is sent
  (``sizes`` lists others, ``sizes: any`` sends the requested ``W*H``). The
  output's real dimensions are measured from the image.
- ``seed``: DashScope takes 0 … 2**31-1; a larger seed is sent modulo 2**31.
- Video: the source image goes as a base64 data URI in ``img_url`` (no
  upload to OSS), so models of the ``input.media`` protocol (wan2.7) are not
  supported. The aspect ratio follows the source image; ``width``/``height``
  are not sent. ``duration`` is sent only when the config lists the model's
  ``durations`` (the smallest one not shorter than asked, else the longest);
  otherwise the model's default (5 s) applies. Storyboard shots are folded
  into the prompt as text ("Shot 1 (zoom in, 3s): ..."). ``strength`` is not
  sent (no such parameter).
- No image-to-image: DashScope's async API has no qwen-image edit task.
- Errors: a 429 or a ``Throttling*`` code is transient (``Retry-After`` is
  honoured when present; DashScope does not document one); a
  ``DataInspectionFailed`` or ``IPInfringementSuspect`` code (HTTP 400 or a
  failed task, or a failed image item) is ``CONTENT_REFUSED``; other 4xx are
  permanent; 5xx, timeouts and broken connections are transient. A failed
  task whose code says the request was invalid (``Invalid*``,
  ``BadRequest*``, ``Arrearage``, ``AccessDenied*``) is permanent, any other
  failure transient. A task still unfinished ``timeout_s`` after the
  submit (``task_timeout_s`` when set) is cancelled (best effort) and the
  attempt fails with the transient ``provider_timeout``.

Timeouts: ``timeout_s`` (default 600) is how long one attempt may wait for
its tasks; each HTTP call has ``request_timeout_s`` (default: 30, at most
``timeout_s``). Errors and polling go through the shared helpers
(:class:`.http.ProviderHttp` with ``errors`` reads DashScope's flat error body,
:func:`.base.wait_for_task` polls).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote

import requests

from services.common.config import flag
from services.generation.providers import base, common
from services.generation.providers.http import ErrorMapper, ProviderHttp, _retry_after, error_code
from services.generation.providers.media import image_output, video_output

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
SUBMIT_PATHS = {
    base.TEXT_TO_IMAGE: "/services/aigc/text2image/image-synthesis",
    base.IMAGE_TO_VIDEO: "/services/aigc/video-generation/video-synthesis",
}
ASYNC_HEADER = {"X-DashScope-Async": "enable"}
WAITING = ("PENDING", "RUNNING", "SUSPENDED")
QWEN_IMAGE_SIZES = ("1664*928", "1472*1104", "1328*1328", "1104*1472", "928*1664")
RESOLUTIONS = ("480P", "720P", "1080P")
SEED_LIMIT = 2**31
# code prefixes, compared without case and underscores (DataInspectionFailed,
# data_inspection_failed in the OpenAI-compatible mode, IPInfringementSuspect)
REFUSAL_CODES = ("datainspection", "ipinfringement")
PERMANENT_CODES = ("invalid", "badrequest", "arrearage", "accessdenied")


def _code(body) -> str:
    return str(body.get("code") or "") if isinstance(body, dict) else ""


def classify(code: str, who: str, *, status: int | None = None,
             retry_after: float | None = None) -> base.ProviderError | None:
    """The provider error for a DashScope error code, or None when the code
    alone does not decide it (then the HTTP status does)."""
    shown = error_code(code)
    where = who + (f" answered {status}" if status else " task failed") \
        + (f" ({shown})" if shown else "")
    key = code.replace("_", "").lower()
    if key.startswith(REFUSAL_CODES):
        return base.PermanentProviderError(base.CONTENT_REFUSED, where, status=status)
    if key.startswith("throttling"):
        return base.TransientProviderError("provider_rate_limited", where, status=status,
                                           retry_after=retry_after)
    if status is None:  # a failed task: its code is all there is
        if key.startswith(PERMANENT_CODES):
            return base.PermanentProviderError("provider_rejected_request", where)
        return base.TransientProviderError("provider_task_failed", where)
    return None


def classify_response(who: str) -> ErrorMapper:
    """How an API answer that is not 2xx is read: DashScope's flat error body
    ``{"code", "message", "request_id"}`` first (a content refusal is a 400
    like any bad request), then the status (:func:`.http.raise_for_status`)."""

    def read(status: int, _code_: str | None, _where: str,
             response: requests.Response) -> base.ProviderError | None:
        try:
            code = _code(response.json())
        except ValueError:
            return None
        return classify(code, who, status=status,
                        retry_after=_retry_after(response))

    return read


class DashScopeProvider:
    def __init__(self, name: str, model: str, base_url: str = DEFAULT_BASE_URL,
                 api_key: str | None = None, job_types: tuple[str, ...] = (base.TEXT_TO_IMAGE,),
                 timeout_s: float = 600.0, request_timeout_s: float | None = None,
                 poll_interval_s: float = 5.0, task_timeout_s: float | None = None,
                 max_poll_errors: int = 3,
                 sizes: tuple[str, ...] | None = QWEN_IMAGE_SIZES, images_per_task: int = 1,
                 resolution: str | None = None, durations: tuple[int, ...] = (),
                 prompt_extend: bool | None = None, watermark: bool | None = None,
                 workspace: str | None = None, max_download_bytes: int = 500 * 1024 * 1024,
                 result_url_allow: tuple[str, ...] = (), allow_private_network: bool = False,
                 resolver=None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        if not model:
            raise ValueError("model is required (e.g. qwen-image, wan2.2-i2v-plus)")
        job_types = common.job_types_of(job_types, SUBMIT_PATHS)
        if len(job_types) > 1:
            raise ValueError("job_types: one DashScope model runs one job type "
                             "(configure a provider per model)")
        if sizes is not None:
            for size in sizes:
                parts = str(size).split("*")
                if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
                    raise ValueError(f"sizes: {size!r} is not WIDTH*HEIGHT")
        if not 1 <= int(images_per_task) <= 4:
            raise ValueError("images_per_task must be between 1 and 4")
        if any(int(d) < 1 for d in durations):
            raise ValueError("durations must be positive whole seconds")
        task_timeout_s = float(timeout_s if task_timeout_s is None else task_timeout_s)
        request_timeout_s = float(min(30.0, float(timeout_s)) if request_timeout_s is None
                                  else request_timeout_s)
        self.name = name
        self.model = str(model)
        self.job_types = job_types
        base.keep_polling(self, poll_interval_s, task_timeout_s, max_poll_errors, sleep, clock)
        # a short timeout_s still gets about ten polls
        self.interval_s = min(self.poll_interval_s, task_timeout_s / 10)
        self.sizes = tuple(sizes) if sizes is not None else None
        self.images_per_task = int(images_per_task)
        self.resolution = resolution
        self.durations = tuple(sorted(int(d) for d in durations))
        self.prompt_extend = prompt_extend
        self.watermark = watermark
        self.http = ProviderHttp(name, base_url, api_key, request_timeout_s, max_download_bytes,
                                 result_url_allow, resolver,
                                 allow_private_network=allow_private_network)
        self.http.errors = classify_response(self.http.who)
        self.headers = {"X-DashScope-WorkSpace": workspace} if workspace else {}

    @classmethod
    def from_config(cls, name: str, conf: dict, **kwargs) -> DashScopeProvider:
        """``region``, ``max_concurrency``, ``enabled`` are read by the router."""
        model = str(conf.get("model") or "")
        default_type = base.IMAGE_TO_VIDEO if "i2v" in model else base.TEXT_TO_IMAGE
        sizes = conf.get("sizes", QWEN_IMAGE_SIZES)
        if sizes == "any":
            sizes = None
        elif isinstance(sizes, str) or not isinstance(sizes, list | tuple) or not sizes:
            raise ValueError("sizes must be a list of WIDTH*HEIGHT or 'any'")
        durations = conf.get("durations") or ()
        if not isinstance(durations, list | tuple):
            raise ValueError("durations must be a list of seconds")
        optional = {key: flag(conf[key]) for key in ("prompt_extend", "watermark")
                    if conf.get(key) is not None}
        timeout_s = common.conf_number(conf, "timeout_s", 600)
        return cls(
            name, model, base_url=str(conf.get("base_url") or DEFAULT_BASE_URL),
            api_key=conf.get("api_key") or None,
            job_types=tuple(common.job_types_of(conf.get("job_types") or (default_type,),
                                                SUBMIT_PATHS)),
            timeout_s=timeout_s,
            request_timeout_s=common.conf_number(conf, "request_timeout_s", min(30.0, timeout_s)),
            poll_interval_s=common.conf_number(conf, "poll_interval_s", 5),
            task_timeout_s=common.conf_number(conf, "task_timeout_s", timeout_s),
            max_poll_errors=int(common.conf_number(conf, "max_poll_errors", 3, whole=True)),
            sizes=sizes,
            images_per_task=int(common.conf_number(conf, "images_per_task", 1, minimum=1,
                                                   whole=True)),
            resolution=common.conf_choice(conf, "resolution", RESOLUTIONS),
            durations=tuple(durations), workspace=conf.get("workspace") or None,
            **common.download_settings(conf, 500 * 1024 * 1024),
            **optional, **kwargs,
        )

    # ------------------------------------------------------------ what is sent

    def payloads(self, request: base.ProviderRequest) -> list[dict]:
        """Exactly what is sent, one body per task."""
        if request.job_type == base.IMAGE_TO_VIDEO:
            return [self._video_payload(request)]
        bodies, made = [], 0
        while made < request.n:
            count = min(self.images_per_task, request.n - made)
            bodies.append(self._image_payload(request, count, len(bodies)))
            made += count
        return bodies

    def _common(self, parameters: dict, request: base.ProviderRequest, index: int = 0) -> dict:
        if request.seed is not None:
            parameters["seed"] = common.seed_for(request, index) % SEED_LIMIT
        if self.prompt_extend is not None:
            parameters["prompt_extend"] = self.prompt_extend
        if self.watermark is not None:
            parameters["watermark"] = self.watermark
        return parameters

    def _image_payload(self, request: base.ProviderRequest, count: int, index: int) -> dict:
        inputs: dict = {"prompt": request.prompt}
        parameters: dict = {"n": count}
        size = self.size(request)
        if size:
            parameters["size"] = size
        if request.negative_prompt:
            where = inputs if self.model.startswith("wan") else parameters
            where["negative_prompt"] = request.negative_prompt
        return {"model": self.model, "input": inputs,
                "parameters": self._common(parameters, request, index)}

    def size(self, request: base.ProviderRequest) -> str | None:
        """``W*H`` for the request: the configured size nearest its aspect ratio."""
        if not (request.width and request.height):
            return None
        if self.sizes is None:
            return f"{request.width}*{request.height}"
        wanted = request.width / request.height

        def distance(size: str) -> tuple[float, int]:
            w, h = (int(p) for p in size.split("*"))
            return abs(w / h - wanted), abs(w * h - request.width * request.height)

        return min(self.sizes, key=distance)

    def _video_payload(self, request: base.ProviderRequest) -> dict:
        if request.source_image is None:
            raise base.PermanentProviderError("provider_rejected_request",
                                              f"{self.name} animates a source image; none was given")
        inputs: dict = {}
        prompt = self.video_prompt(request)
        if prompt:
            inputs["prompt"] = prompt
        if request.negative_prompt:
            inputs["negative_prompt"] = request.negative_prompt
        inputs["img_url"] = common.data_uri(request.source_image, request.source_content_type)
        parameters: dict = {}
        if self.resolution:
            parameters["resolution"] = self.resolution
        duration = self.duration(request.duration_s)
        if duration:
            parameters["duration"] = duration
        return {"model": self.model, "input": inputs,
                "parameters": self._common(parameters, request)}

    @staticmethod
    def video_prompt(request: base.ProviderRequest) -> str:
        parts = [request.prompt] if request.prompt else []
        for i, shot in enumerate(request.shots, 1):
            parts.append(f"Shot {i} ({shot.camera.replace('_', ' ')}, "
                         f"{shot.duration_s:g}s): {shot.prompt}")
        return " ".join(part.strip() for part in parts if part and part.strip())

    def duration(self, asked: float | None) -> int | None:
        if not self.durations or asked is None:
            return None
        return next((d for d in self.durations if d >= asked), self.durations[-1])

    # ------------------------------------------------------------ the task API

    def generate(self, request: base.ProviderRequest,
                 progress: base.ProgressCallback | None = None) -> base.ProviderResult:
        base.submitting(self, request, progress)
        bodies = self.payloads(request)
        deadline = self.clock() + self.task_timeout_s
        tasks: list[str] = []
        finished: set[str] = set()
        try:
            for body in bodies:
                tasks.append(self._submit(request.job_type, body))
            base.report(progress, 0.05, "submitted")
            outputs: list[base.ProviderOutput] = []
            for index, task in enumerate(tasks):
                output = self._wait(task, deadline, progress, index / len(tasks))
                finished.add(task)
                for url in self._result_urls(request, output, bodies[index]):
                    base.report(progress, 0.05 + 0.9 * (index + 1) / len(tasks), "downloading")
                    data, _ = self.http.download(url)
                    outputs.append(video_output(data, self.name)
                                   if request.job_type == base.IMAGE_TO_VIDEO
                                   else image_output(data, self.name))
        except Exception:
            for task in tasks:
                if task not in finished:
                    self._cancel(task)
            raise
        base.report(progress, 1.0, "downloaded")
        return base.ProviderResult(tuple(outputs))

    def _submit(self, job_type: str, body: dict) -> str:
        answer = self.http.call("POST", SUBMIT_PATHS[job_type], body,
                                headers={**ASYNC_HEADER, **self.headers})
        output = answer.get("output")
        return common.answer_id(output.get("task_id") if isinstance(output, dict) else None,
                                self.name, "a task id")

    def _path(self, task: str) -> str:
        return f"/tasks/{quote(task, safe='')}"

    def _wait(self, task: str, deadline: float, progress: base.ProgressCallback | None,
              done: float) -> dict:
        def read(answer: dict) -> dict | None:
            output = answer.get("output")
            if not isinstance(output, dict):
                raise base.TransientProviderError("invalid_provider_output",
                                                  f"{self.name} sent a task without output")
            state = output.get("task_status")
            if state == "SUCCEEDED":
                return output
            if state == "FAILED":
                raise classify(_code(output), self.name)
            if state in ("CANCELED", "UNKNOWN"):
                raise base.TransientProviderError(
                    "provider_task_failed", f"{self.name} task is {str(state).lower()}")
            if state not in WAITING:
                raise base.unknown_status(self.name, "task")
            base.report(progress, 0.05 + 0.9 * done, str(state).lower())
            return None

        # cancelling is generate's (it cancels every task left behind)
        return base.wait_for_task(
            lambda: self.http.call("GET", self._path(task), headers=self.headers), read,
            who=self.name, interval_s=self.interval_s, timeout_s=max(0.0, deadline - self.clock()),
            max_errors=self.max_poll_errors, sleep=self.sleep, clock=self.clock)

    def _result_urls(self, request: base.ProviderRequest, output: dict, body: dict) -> list[str]:
        if request.job_type == base.IMAGE_TO_VIDEO:
            results = output.get("results")  # where some Wan models put it
            url = output.get("video_url") or (results.get("video_url")
                                              if isinstance(results, dict) else None)
            if not isinstance(url, str) or not url:
                raise base.TransientProviderError("invalid_provider_output",
                                                  f"{self.name} finished without a video URL")
            return [url]
        results = output.get("results")
        results = results if isinstance(results, list) else []
        urls = [r["url"] for r in results if isinstance(r, dict) and isinstance(r.get("url"), str)]
        wanted = body["parameters"]["n"]
        if len(urls) >= wanted:
            return urls[:wanted]
        for item in results:  # fewer images than asked: why?
            error = classify(_code(item), self.name) if _code(item) else None
            if error is not None:
                raise error
        raise base.TransientProviderError("invalid_provider_output",
                                          f"{self.name} answered with fewer images than asked")

    def _cancel(self, task: str) -> None:
        try:
            self.http.call("POST", f"{self._path(task)}/cancel", headers=self.headers)
        except base.ProviderError:
            pass  # best effort: only a PENDING task can be cancelled
