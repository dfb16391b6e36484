"""The ``replicate`` provider: Replicate's predictions API (https://replicate.com/docs).

Config (the providers file)::

    flux:
      type: replicate
      base_url: https://api.replicate.com/v1      # the default
      api_key: ${REPLICATE_API_TOKEN}
      model: black-forest-labs/flux-schnell       # or owner/name:<version id>;
                                                  # or `version: <id>`, or `deployment: owner/name`
      job_types: [text-to-image]                  # the default
      inputs: {prompt: prompt, seed: seed, n: num_outputs, aspect_ratio: aspect_ratio}
      fixed_inputs: {output_format: png}          # optional constants of the operator's
      timeout_s: 75          # one HTTP request
      wait_s: 60             # Prefer: wait=N (0: do not hold the request open)
      poll_interval_s: 1
      task_timeout_s: 600    # the whole generation; then the prediction is cancelled
      max_poll_errors: 3

Protocol
--------
``POST {base_url}/models/{owner}/{name}/predictions`` with ``{"input": {...}}``
(``model: owner/name``); ``POST {base_url}/predictions`` with ``{"version":
"<id>", "input": {...}}`` (``version: <id>``, or ``model: owner/name:<id>``);
or ``POST {base_url}/deployments/{owner}/{name}/predictions`` with ``{"input":
{...}}`` (``deployment: owner/name``, the operator's own deployment). Headers:
``Authorization: Bearer <api_key>`` and ``Prefer: wait=N``: Replicate holds
the request open up to N seconds (``wait_s``, at most 60, never more than 80%
of ``timeout_s`` nor more than ``task_timeout_s``; 0: no ``Prefer`` header)
and answers with the prediction, finished or not. An unfinished one is polled
with ``GET`` on its ``urls.get`` (when that lies under ``base_url``, else
``{base_url}/predictions/{id}``) every ``poll_interval_s`` until its
``status`` is ``succeeded``, ``failed``, ``canceled`` or ``aborted``; up to
``max_poll_errors`` transient poll failures in a row are tolerated. When
``task_timeout_s`` has passed the prediction is cancelled (``POST
urls.cancel``, or ``{base_url}/predictions/{id}/cancel``, best effort) and
the attempt fails with the transient ``provider_timeout``; when the polls
keep failing it is cancelled too, and the last poll's error is raised.

What is sent
------------
``input`` holds exactly the fields that ``inputs`` maps (Darkroom field ->
the model's input name), plus the operator's ``fixed_inputs``; a field
without a mapping is not sent, nor is an absent value (no seed, no size).
Darkroom fields: ``prompt``, ``negative_prompt``, ``seed``, ``n``, ``width``,
``height``, ``size`` (``"WxH"``), ``aspect_ratio`` (``"W:H"`` reduced:
1024x768 is ``"4:3"``), ``strength``, ``duration_s`` and ``image`` (the
source image as a ``data:<type>;base64,...`` URI). Without ``inputs`` only
the prompt is sent (as ``prompt``). Nothing else goes: no user id, email, job
id, IP, webhook or key of ours, no request id (Replicate needs none). The API
key goes only to ``base_url``'s origin, never to the CDN the outputs are on.

Outputs: ``output`` is a URL or a list of URLs (``https://replicate.delivery/...``;
``data:`` URIs are decoded too); each is downloaded through the SSRF guard
with a size cap and checked by decoding (PNG/JPEG/WebP images; an MP4 video
for image-to-video).

Errors
------
429 (with Retry-After), 5xx, timeouts and connection failures are transient
(providers/http.py); other 4xx (Replicate's RFC 7807 problem bodies: 401,
402, 404, 422) are permanent. A ``failed`` prediction whose ``error`` is a
content refusal (``E005`` "flagged as sensitive", "NSFW content detected",
...) is the permanent ``provider_content_refused``; out of memory
(``E1001``: the same input fails again) is the permanent
``provider_rejected_request``; any other failure, and a ``canceled`` or
``aborted`` prediction, is the transient ``provider_task_failed``. Only the
error's ``E####`` code is kept, never its text (it may echo the input).

Limits
------
- ``n`` without a mapping: ``n`` predictions one after another (``seed``,
  when mapped, is ``seed + i`` for the i-th, so they differ), the first
  output of each. With a mapping: one prediction, its first ``n`` outputs.
  Fewer outputs than asked is a malformed answer (transient).
- No negative prompt, seed or size unless the model has an input for it and
  ``inputs`` maps it; which inputs a model takes, and their ranges, is the
  model's (a wrong name is ignored or refused with 422 by the model).
- Source images go inline as a data URI (Replicate suggests its Files API
  above about 256 KB; it is not used, so nothing of ours is stored at
  Replicate beyond the prediction itself).
- A storyboard's ``shots`` are not sent (models take one prompt); the video's
  length only as ``duration_s`` when mapped.
- Replicate's ``Cancel-After`` deadline header and webhooks are not used.
- Replicate keeps an API prediction's inputs and outputs for one hour.
- Region: Replicate documents none; the operator's ``region`` is what users
  are shown.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote

from services.common.config import flag
from services.common.contracts.generation import JOB_TYPES
from services.generation.providers import base, common
from services.generation.providers.http import ProviderHttp
from services.generation.providers.media import image_output, video_output

DEFAULT_BASE_URL = "https://api.replicate.com/v1"
#: Darkroom's fields that ``inputs`` may map onto a model's inputs.
FIELDS = ("prompt", "negative_prompt", "seed", "n", "width", "height", "size", "aspect_ratio",
          "strength", "duration_s", "image")
RUNNING = ("starting", "processing")
#: How a failed prediction's error says the vendor or the model refused the content.
REFUSALS = ("e005", "flagged", "nsfw", "sensitive content", "content policy", "content_policy",
            "moderation", "safety system")
#: Errors that the same input would meet again (E1001: the model ran out of memory).
REJECTIONS = ("E1001",)
MAX_WAIT_S = 60
MODEL = re.compile(r"^([A-Za-z0-9][\w.-]*)/([A-Za-z0-9][\w.-]*)(?::([\w.-]+))?$")
VERSION = re.compile(r"^[\w.:/-]+$")
INPUT_NAME = re.compile(r"^[A-Za-z_][\w.-]{0,99}$")
ERROR_CODE = re.compile(r"\bE\d{3,4}\b")


def _inputs(value) -> dict[str, str]:
    """The ``inputs`` mapping, checked: Darkroom field -> model input name."""
    inputs = common.field_mapping(value, FIELDS, INPUT_NAME, {"prompt": "prompt"})
    if len(set(inputs.values())) != len(inputs):
        raise ValueError("inputs: two fields map to the same model input")
    return inputs


def _aspect_ratio(width: int, height: int) -> str:
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


class ReplicateProvider:
    def __init__(self, name: str, api_key: str, *, model: str | None = None,
                 version: str | None = None, deployment: str | None = None, inputs: Mapping[str, str] | None = None,
                 fixed_inputs: Mapping | None = None, base_url: str = DEFAULT_BASE_URL,
                 job_types: tuple[str, ...] = (base.TEXT_TO_IMAGE,), timeout_s: float = 75.0,
                 wait_s: int = MAX_WAIT_S, poll_interval_s: float = 1.0,
                 task_timeout_s: float = 600.0, max_poll_errors: int = 3,
                 max_download_bytes: int = 200 * 1024 * 1024,
                 result_url_allow: tuple[str, ...] = (), allow_private_network: bool = False,
                 resolver=None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        if not api_key:
            raise ValueError("api_key: Replicate needs an API token")
        if sum(bool(x) for x in (model, version, deployment)) != 1:
            raise ValueError("model: set one of model (owner/name[:version]), version "
                             "and deployment (owner/name)")
        self.create_path, self.version = "/predictions", None
        if deployment:
            match = MODEL.match(str(deployment))
            if not match or match.group(3):
                raise ValueError(f"deployment: {deployment!r} is not owner/name")
            self.create_path = "/deployments/{}/{}/predictions".format(
                *(quote(part, safe="") for part in match.groups()[:2]))
        elif model:
            match = MODEL.match(str(model))
            if not match:
                raise ValueError(f"model: {model!r} is not owner/name or owner/name:version")
            owner, model_name, self.version = match.groups()
            if not self.version:
                self.create_path = (f"/models/{quote(owner, safe='')}/"
                                    f"{quote(model_name, safe='')}/predictions")
        else:
            if not VERSION.match(str(version)):
                raise ValueError(f"version: {version!r} is not a version id")
            self.version = str(version)
        self.inputs = _inputs(inputs)
        self.fixed_inputs = dict(fixed_inputs or {})
        clash = set(self.fixed_inputs) & set(self.inputs.values())
        if clash:
            raise ValueError(f"fixed_inputs.{sorted(clash)[0]}: also mapped in inputs")
        job_types = common.job_types_of(job_types, JOB_TYPES)
        if {base.IMAGE_TO_IMAGE, base.IMAGE_TO_VIDEO} & set(job_types) and "image" not in self.inputs:
            raise ValueError("inputs.image: image-to-image and image-to-video need the "
                             "model's image input")
        if not 0 <= int(wait_s) <= MAX_WAIT_S:
            raise ValueError(f"wait_s must be between 0 and {MAX_WAIT_S}")
        self.name = name
        self.job_types = frozenset(job_types)
        # the request is held open no longer than our read timeout and the deadline allow
        self.wait_s = min(int(wait_s), int(float(timeout_s) * 0.8), int(task_timeout_s))
        base.keep_polling(self, poll_interval_s, task_timeout_s, max_poll_errors, sleep, clock)
        self.http = ProviderHttp(name, base_url, api_key, timeout_s, max_download_bytes,
                                 result_url_allow, resolver,
                                 allow_private_network=allow_private_network)

    @classmethod
    def from_config(cls, name: str, conf: dict, **kwargs) -> ReplicateProvider:
        """From the providers file's entry; ``region``, ``max_concurrency``,
        ``enabled`` and ``base_dir`` are the router's, not read here."""
        fixed = conf.get("fixed_inputs")
        if fixed is not None and not isinstance(fixed, Mapping):
            raise ValueError("fixed_inputs must map model input names to values")
        return cls(
            name, str(conf.get("api_key") or ""), model=conf.get("model") or None,
            version=conf.get("version") or None, deployment=conf.get("deployment") or None,
            inputs=conf.get("inputs"), fixed_inputs=fixed,
            base_url=str(conf.get("base_url") or DEFAULT_BASE_URL),
            job_types=conf.get("job_types") or (base.TEXT_TO_IMAGE,),
            timeout_s=common.conf_number(conf, "timeout_s", 75),
            wait_s=int(common.conf_number(conf, "wait_s", MAX_WAIT_S, whole=True)),
            poll_interval_s=common.conf_number(conf, "poll_interval_s", 1),
            task_timeout_s=common.conf_number(conf, "task_timeout_s", 600),
            max_poll_errors=int(common.conf_number(conf, "max_poll_errors", 3, whole=True)),
            max_download_bytes=int(common.conf_number(conf, "max_download_bytes", 200 * 1024 * 1024,
                                           minimum=1, whole=True)),
            result_url_allow=conf.get("result_url_allow") or (),
            allow_private_network=flag(conf.get("allow_private_network", False)),
            **kwargs,
        )

    # ------------------------------------------------------------------ what is sent

    def values(self, request: base.ProviderRequest, index: int = 0) -> dict:
        """Every Darkroom field's value for the ``index``-th prediction."""
        # n predictions with one seed would draw one image n times
        seed = common.seed_for(request, 0 if "n" in self.inputs else index)
        image = None
        if request.source_image is not None:
            image = common.data_uri(request.source_image, request.source_content_type)
        sized = request.width and request.height
        return {
            "prompt": request.prompt, "negative_prompt": request.negative_prompt or None,
            "seed": seed, "n": request.n, "width": request.width, "height": request.height,
            "size": request.size,
            "aspect_ratio": _aspect_ratio(request.width, request.height) if sized else None,
            "strength": request.strength, "duration_s": request.duration_s, "image": image,
        }

    def payload(self, request: base.ProviderRequest, index: int = 0) -> dict:
        """Exactly what is sent: the mapped fields and the operator's fixed inputs."""
        values = self.values(request, index)
        model_input = dict(self.fixed_inputs)
        for field, name in self.inputs.items():
            if values[field] is not None:
                model_input[name] = values[field]
        body = {"input": model_input}
        if self.version:
            body["version"] = self.version
        return body

    # ------------------------------------------------------------------ running

    def generate(self, request: base.ProviderRequest,
                 progress: base.ProgressCallback | None = None) -> base.ProviderResult:
        base.submitting(self, request, progress)
        deadline = self.clock() + self.task_timeout_s
        runs = 1 if "n" in self.inputs else request.n
        urls: list[str] = []
        for index in range(runs):
            prediction = self._run(request, index, deadline, progress, runs)
            found = self._output_urls(prediction)
            urls.extend(found if runs == 1 else found[:1])
        if len(urls) < request.n:
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} answered with fewer outputs than asked")
        outputs = []
        for index, url in enumerate(urls[: request.n]):
            base.report(progress, 0.9 + 0.1 * index / request.n, "downloading")
            outputs.append(self._output(request, self._fetch(url)))
        base.report(progress, 1.0, "downloaded")
        return base.ProviderResult(tuple(outputs))

    def _run(self, request: base.ProviderRequest, index: int, deadline: float,
             progress: base.ProgressCallback | None, runs: int) -> dict:
        """One prediction, created and followed until it succeeded."""
        headers = {"Prefer": f"wait={self.wait_s}"} if self.wait_s else {}
        prediction = self.http.call("POST", self.create_path, self.payload(request, index),
                                    headers=headers)
        pid = common.answer_id(prediction.get("id"), self.name, "a prediction id")
        get = self._path(prediction, "get", f"/predictions/{quote(pid, safe='')}")
        cancel = self._path(prediction, "cancel", f"/predictions/{quote(pid, safe='')}/cancel")

        def read(prediction: dict) -> dict | None:
            status = prediction.get("status")
            if status == "succeeded":
                return prediction
            if status == "failed":
                raise self._failure(prediction.get("error"))
            if status in ("canceled", "aborted"):
                raise base.task_ended(self.name, "prediction", status)
            if status not in RUNNING:
                raise base.unknown_status(self.name, "prediction")
            base.report(progress, 0.9 * (index + (0.5 if status == "processing" else 0.1)) / runs,
                        status)
            return None

        return base.wait_for_task(
            lambda: self.http.call("GET", get), read, who=self.name, first=prediction,
            what="the prediction", deadline=deadline, **base.polling(self),
            cancel=lambda: self.http.call("POST", cancel),
            # the polls keep failing: cancel it, the last poll's error is raised
            gave_up=lambda error: self._cancel(cancel))

    def _path(self, prediction: dict, kind: str, fallback: str) -> str:
        """``urls.get``/``urls.cancel`` when under our base URL (the key is sent
        there), else the documented path built from the id."""
        urls = prediction.get("urls")
        url = urls.get(kind) if isinstance(urls, dict) else None
        ours = self.http.base_url + "/"
        if isinstance(url, str) and url.startswith(ours):
            return "/" + url[len(ours):]
        return fallback

    def _cancel(self, path: str) -> None:
        try:
            self.http.call("POST", path)
        except base.ProviderError:
            pass  # best effort: Replicate may finish or expire it on its own

    def _failure(self, error) -> base.ProviderError:
        text = str(error or "")
        # the code only: a model's error text may echo the input
        code = ERROR_CODE.search(text)
        message = f"{self.name} prediction failed" + (f": {code.group()}" if code else "")
        if any(hint in text.lower() for hint in REFUSALS):
            return base.PermanentProviderError(base.CONTENT_REFUSED, message)
        if code and code.group() in REJECTIONS:
            return base.PermanentProviderError("provider_rejected_request", message)
        return base.TransientProviderError("provider_task_failed", message)

    # ------------------------------------------------------------------ outputs

    def _output_urls(self, prediction: dict) -> list[str]:
        output = prediction.get("output")
        urls = [output] if isinstance(output, str) else output
        if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
            raise base.TransientProviderError("invalid_provider_output",
                                              f"{self.name} finished without output URLs")
        return urls

    def _fetch(self, url: str) -> bytes:
        if not url.startswith("data:"):
            return self.http.download(url)[0]
        return common.data_uri_bytes(url, self.name, self.http.max_download_bytes)

    def _output(self, request: base.ProviderRequest, data: bytes) -> base.ProviderOutput:
        if request.job_type == base.IMAGE_TO_VIDEO:
            return video_output(data, self.name)
        return image_output(data, self.name)
