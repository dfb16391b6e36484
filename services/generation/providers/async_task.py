"""The ``async_task`` provider: video providers that take a task, are polled,
and answer with a result URL.

The contract a provider must speak (an operator can put a thin shim in front
of any vendor's API to speak it):

``POST {base_url}/v1/tasks`` with ``Authorization: Bearer <api_key>`` and::

    {"type": "image-to-video", "model": "...", "prompt": "...",
     "negative_prompt": "...", "seed": 7, "width": 512, "height": 512,
     "n": 1, "strength": 0.6, "duration_s": 4,
     "image": {"content_type": "image/png", "data": "<base64>"},
     "shots": [{"prompt": "...", "camera": "zoom_in", "duration_s": 3}]}

(absent values are left out) → 2xx ``{"id": "<task id>"}``.

``GET {base_url}/v1/tasks/{id}`` → ``{"status": "queued" | "running" |
"succeeded" | "failed", "progress": 0.0-1.0, "result_url": "...",
"result_urls": [...], "error": {"code": "...", "message": "...",
"retryable": true}}``. ``result_url`` (or ``result_urls``) is required once
``succeeded``; it may be relative to ``base_url``. A failed task is retried
(transient ``provider_task_failed``) unless ``error.retryable`` is false
(permanent ``content_refused`` when ``error.code`` says it was a
content refusal, ``provider_rejected_request`` otherwise).

Polls run every ``poll_interval_s`` until ``task_timeout_s`` has passed;
then ``DELETE {base_url}/v1/tasks/{id}`` is sent, best effort, and the
attempt fails with the transient ``provider_timeout``. A poll that fails
transiently is tolerated up to ``max_poll_errors`` times in a row. Results
must be MP4 videos (or PNG/JPEG/WebP images) and are checked by decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote

from services.common.config import flag
from services.generation.providers import base
from services.generation.providers.common import b64
from services.generation.providers.http import REFUSAL_HINTS, ProviderHttp, error_code
from services.generation.providers.media import image_output, video_output

STATUSES = ("queued", "running", "succeeded", "failed")


class AsyncTaskProvider:
    def __init__(self, name: str, base_url: str, api_key: str | None = None,
                 model: str | None = None, timeout_s: float = 30.0,
                 poll_interval_s: float = 2.0, task_timeout_s: float = 900.0,
                 max_poll_errors: int = 3, job_types: tuple[str, ...] = (base.IMAGE_TO_VIDEO,),
                 max_download_bytes: int = 500 * 1024 * 1024,
                 result_url_allow: tuple[str, ...] = (), resolver=None,
                 allow_private_network: bool = False,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.model = model or None
        base.keep_polling(self, poll_interval_s, task_timeout_s, max_poll_errors, sleep, clock)
        self.job_types = frozenset(job_types)
        self.http = ProviderHttp(name, base_url, api_key, timeout_s, max_download_bytes,
                                 result_url_allow, resolver,
                                 allow_private_network=allow_private_network)

    @classmethod
    def from_config(cls, name: str, conf: dict, **kwargs) -> AsyncTaskProvider:
        return cls(
            name, str(conf.get("base_url") or ""), api_key=conf.get("api_key") or None,
            model=conf.get("model") or None, timeout_s=float(conf.get("timeout_s", 30)),
            poll_interval_s=float(conf.get("poll_interval_s", 2)),
            task_timeout_s=float(conf.get("task_timeout_s", 900)),
            max_poll_errors=int(conf.get("max_poll_errors", 3)),
            job_types=tuple(conf.get("job_types") or (base.IMAGE_TO_VIDEO,)),
            max_download_bytes=int(conf.get("max_download_bytes", 500 * 1024 * 1024)),
            result_url_allow=conf.get("result_url_allow") or (),
            allow_private_network=flag(conf.get("allow_private_network", False)),
            **kwargs,
        )

    def payload(self, request: base.ProviderRequest) -> dict:
        """Exactly what is sent: the prompt, parameters and source image only."""
        body = {
            "type": request.job_type, "model": self.model, "prompt": request.prompt,
            "negative_prompt": request.negative_prompt, "seed": request.seed,
            "width": request.width, "height": request.height, "n": request.n,
            "strength": request.strength, "duration_s": request.duration_s,
        }
        if request.source_image:
            body["image"] = {"content_type": request.source_content_type or "image/png",
                             "data": b64(request.source_image)}
        if request.shots:
            body["shots"] = [shot.to_dict() for shot in request.shots]
        return {k: v for k, v in body.items() if v is not None}

    def generate(self, request: base.ProviderRequest,
                 progress: base.ProgressCallback | None = None) -> base.ProviderResult:
        base.submitting(self, request, progress)
        answer = self.http.call("POST", "/v1/tasks", self.payload(request))
        task_id = answer.get("id")
        if not isinstance(task_id, str | int) or isinstance(task_id, bool) or not str(task_id):
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} answered without a task id")
        path = f"/v1/tasks/{quote(str(task_id), safe='')}"
        status = self._wait(path, progress)
        urls = status.get("result_urls") or ([status["result_url"]]
                                             if status.get("result_url") else [])
        if not isinstance(urls, list) or len(urls) < request.n \
                or not all(isinstance(u, str) for u in urls):
            raise base.TransientProviderError(
                "invalid_provider_output", f"{self.name} finished without a result URL per output")
        outputs = []
        for index, url in enumerate(urls[: request.n]):
            base.report(progress, 0.9 + 0.1 * index / len(urls), "downloading")
            data, content_type = self.http.download(url)
            outputs.append(self._output(data, content_type))
        base.report(progress, 1.0, "downloaded")
        return base.ProviderResult(tuple(outputs))

    def _wait(self, path: str, progress: base.ProgressCallback | None) -> dict:
        def read(status: dict) -> dict | None:
            state = status.get("status")
            if state not in STATUSES:
                raise base.unknown_status(self.name, "task")
            if state == "succeeded":
                return status
            if state == "failed":
                raise self._failure(status.get("error"))
            fraction = status.get("progress")
            if isinstance(fraction, int | float) and not isinstance(fraction, bool):
                base.report(progress, 0.9 * float(fraction), state)
            else:
                base.report(progress, 0.0, state)
            return None

        return base.wait_for_task(
            lambda: self.http.call("GET", path), read, who=self.name, **base.polling(self),
            cancel=lambda: self.http.call("DELETE", path))

    def _failure(self, error) -> base.ProviderError:
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or "")
        # the code only: a task's error message may echo the request or a URL
        shown = error_code(code)
        message = f"{self.name} task failed" + (f": {shown}" if shown else "")
        if error.get("retryable", True) is False:
            if any(hint in code.lower() for hint in REFUSAL_HINTS):
                return base.PermanentProviderError(base.CONTENT_REFUSED, message)
            return base.PermanentProviderError("provider_rejected_request", message)
        return base.TransientProviderError("provider_task_failed", message)

    def _output(self, data: bytes, content_type: str) -> base.ProviderOutput:
        if data[4:8] == b"ftyp" or content_type.startswith("video/"):
            return video_output(data, self.name)
        return image_output(data, self.name)
