"""A fake of Replicate's predictions API over real HTTP on loopback.

It speaks the documented API under ``/v1`` (use ``fake.base_url``):

- ``POST /v1/models/{owner}/{name}/predictions`` (and
  ``/v1/deployments/{owner}/{name}/predictions``) ``{"input": {...}}`` and
  ``POST /v1/predictions`` ``{"version": "...", "input": {...}}`` → 201 with
  the prediction ``{id, model, version, input, output, error, logs, status,
  created_at, urls: {get, cancel}}``. ``Prefer: wait`` / ``Prefer: wait=N``
  (1-60) is checked; with it, and ``sync`` set, the prediction comes back
  already finished (as when it finishes within the wait), else ``starting``.
- ``GET /v1/predictions/{id}``: ``starting``, then ``processing`` until
  ``polls_to_finish`` polls, then ``outcome`` (``succeeded``, ``failed`` with
  ``failure`` as its ``error``, ``canceled``, or ``never`` to run forever).
- ``POST /v1/predictions/{id}/cancel``: the prediction becomes ``canceled``.
- Outputs: ``output_kind`` ``"image"`` (PNG, sized from the input's
  ``width``/``height`` if any, else 64x64), ``"video"`` (MP4) or ``"data"``
  (PNG ``data:`` URIs); as a list, or a single string with ``output_list``
  False. One output per ``count_input`` (default ``num_outputs``; 1 if absent).
  URLs point at ``/delivery/<id>.png`` on ``result_base`` (default: this
  server), which serves ``files`` without any key.

Every request is recorded. API calls without ``Authorization: Bearer
<api_key>`` get 401, errors are RFC 7807 problem bodies ``{title, detail,
status}``; 429 carries ``Retry-After: 2``. ``fail_next`` scripts the create
call (see tests/fakes/providers.py), ``fail_polls`` the polls.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections import deque
from urllib.parse import urlsplit

from tests.fakes.providers import FakeHTTPServer, Recorded, Response, _json, mp4_bytes, png_bytes

CREATE_MODEL = re.compile(r"^/v1/(?:models|deployments)/([\w.-]+)/([\w.-]+)/predictions$")
PREDICTION = re.compile(r"^/v1/predictions/([\w-]+)(/cancel)?$")
PREFER = re.compile(r"^wait(=(\d+))?$")
OPTIONAL = {"webhook", "webhook_events_filter", "stream"}


def _problem(status: int, title: str, detail: str, headers: dict | None = None) -> Response:
    return _json(status, {"type": "https://replicate.com/docs/errors", "title": title,
                          "detail": detail, "status": status}, headers)


class FakeReplicate(FakeHTTPServer):
    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 result_base: str | None = None):
        super().__init__(api_key, hang_s)
        self.result_base = result_base
        self.sync = True
        self.polls_to_finish = 2
        self.outcome = "succeeded"
        self.failure = "E1000: the fake broke"
        self.output_kind = "image"
        self.output_list = True
        self.count_input = "num_outputs"
        self.predictions: dict[str, dict] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self._poll_script: deque = deque()

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def fail_polls(self, *statuses: int) -> None:
        with self._lock:
            self._poll_script.extend(statuses)

    # ------------------------------------------------------------ protocol

    def scripted(self, request: Recorded) -> bool:
        path = urlsplit(request.path).path
        return request.method == "POST" and (path == "/v1/predictions"
                                             or bool(CREATE_MODEL.match(path)))

    def error(self, status: int) -> Response:
        if status == 401:
            return _problem(401, "Unauthenticated",
                            "You did not pass a valid authentication token")
        headers = {"Retry-After": "2"} if status == 429 else {}
        return _problem(status, f"Fake error {status}", "The fake was told to fail", headers)

    def garbage(self, request: Recorded) -> Response:
        return _json(201, {"unexpected": True})

    def route(self, request: Recorded) -> Response:
        path = urlsplit(request.path).path
        if path.startswith("/delivery/"):
            found = self.files.get(path[len("/delivery/"):].rsplit(".", 1)[0])
            if found is None:
                return _problem(404, "Not found", "No such file")
            return 200, {"Content-Type": found[1]}, found[0]
        if path.startswith("/v1/") and self.api_key \
                and request.header("Authorization") != f"Bearer {self.api_key}":
            return self.error(401)
        if self.scripted(request):
            return self._create(request, path)
        match = PREDICTION.match(path)
        if match:
            prediction = self.predictions.get(match.group(1))
            if prediction is None:
                return _problem(404, "Not found", "The requested resource could not be found")
            if match.group(2) and request.method == "POST":
                if prediction["status"] in ("starting", "processing"):
                    prediction["status"] = "canceled"
                prediction["cancelled"] = True
                return _json(200, self._public(prediction))
            if request.method == "GET" and not match.group(2):
                return self._poll(prediction)
        return _problem(404, "Not found", "The requested resource could not be found")

    def _create(self, request: Recorded, path: str) -> Response:
        if "application/json" not in (request.header("Content-Type") or ""):
            return _problem(415, "Unsupported media type", "Send JSON")
        try:
            body = request.json()
        except ValueError:
            return _problem(400, "Bad request", "The body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return _problem(422, "Input validation failed", "input: required object")
        model_path = CREATE_MODEL.match(path)
        allowed = {"input", *OPTIONAL} | (set() if model_path else {"version"})
        if set(body) - allowed:
            return _problem(422, "Invalid request", f"unknown fields {sorted(set(body) - allowed)}")
        if not model_path and not isinstance(body.get("version"), str):
            return _problem(422, "Input validation failed", "version: required")
        prefer = request.header("Prefer")
        wait = PREFER.match(prefer) if prefer is not None else None
        if prefer is not None and (not wait or (wait.group(2) and
                                                not 1 <= int(wait.group(2)) <= 60)):
            return _problem(400, "Invalid Prefer header", "Prefer: wait or wait=1..60")
        pid = secrets.token_hex(10)
        model = "/".join(model_path.groups()) if model_path else None
        prediction = {"id": pid, "model": model, "version": body.get("version"),
                      "input": body["input"], "output": None, "error": None, "logs": "",
                      "status": "starting", "created_at": "2025-01-01T00:00:00Z",
                      "polls": 0, "cancelled": False}
        self.predictions[pid] = prediction
        if prefer is not None and self.sync and self.outcome != "never":
            self._finish(prediction)
        return _json(201, self._public(prediction))

    def _poll(self, prediction: dict) -> Response:
        with self._lock:
            failing = self._poll_script.popleft() if self._poll_script else None
        if failing:
            return self.error(failing)
        prediction["polls"] += 1
        if prediction["status"] in ("starting", "processing"):
            if self.outcome == "never" or prediction["polls"] < self.polls_to_finish:
                prediction["status"] = "processing"
            else:
                self._finish(prediction)
        return _json(200, self._public(prediction))

    def _finish(self, prediction: dict) -> None:
        if self.outcome == "failed":
            prediction.update(status="failed", error=self.failure)
        elif self.outcome in ("canceled", "aborted"):
            prediction["status"] = self.outcome
        else:
            prediction.update(status="succeeded", output=self._outputs(prediction["input"]))

    def _outputs(self, model_input: dict) -> list[str] | str:
        count = int(model_input.get(self.count_input, 1))
        width, height = int(model_input.get("width", 64)), int(model_input.get("height", 64))
        urls = []
        for i in range(count):
            if self.output_kind == "video":
                data, kind = mp4_bytes(), "video/mp4"
            else:
                data, kind = png_bytes(width, height, (30 * i % 256, 100, 180)), "image/png"
            if self.output_kind == "data":
                urls.append(f"data:{kind};base64,{base64.b64encode(data).decode()}")
                continue
            file_id = secrets.token_hex(8)
            self.files[file_id] = (data, kind)
            extension = "mp4" if kind == "video/mp4" else "png"
            urls.append(f"{self.result_base or self.url}/delivery/{file_id}.{extension}")
        return urls if self.output_list else urls[0]

    def _public(self, prediction: dict) -> dict:
        body = {k: v for k, v in prediction.items() if k not in ("polls", "cancelled")}
        api = f"{self.base_url}/predictions/{prediction['id']}"
        body["urls"] = {"get": api, "cancel": f"{api}/cancel"}
        return body
