"""A fake of Google's Gemini API (Developer API, ``/v1beta``) over real HTTP on
loopback (see tests/fakes/providers.py for the machinery).

Every call needs ``x-goog-api-key: <key>`` (else 403 ``PERMISSION_DENIED``).

- ``POST /v1beta/models/{model}:generateContent``: ``contents[].parts[]`` each
  ``{text}`` or ``{inlineData{mimeType, data}}``; ``generationConfig`` with
  ``responseModalities`` containing ``IMAGE``, optional ``seed``,
  ``imageConfig{aspectRatio, imageSize}``. Answers one PNG in ``inlineData``.
- ``POST /v1beta/models/{model}:predict`` (Imagen): ``instances[{prompt}]``,
  ``parameters{sampleCount, aspectRatio, sampleImageSize, personGeneration,
  includeRaiReason}`` → ``predictions[]{bytesBase64Encoded, mimeType}``.
- ``POST /v1beta/models/{model}:predictLongRunning`` (Veo):
  ``instances[{prompt, image{bytesBase64Encoded, mimeType}}]``, ``parameters``
  → ``{"name": "models/{model}/operations/{id}"}``; ``GET /v1beta/{name}``
  answers ``done: false`` for ``polls_to_finish - 1`` polls, then the result
  with a video URI ``/v1beta/files/{id}:download?alt=media`` (served with the key;
  ``video_delivery = "redirect"`` makes it a 302 to ``http://localhost:<port>/storage/{id}``,
  another origin that needs no key; ``"inline"`` puts the video in ``encodedVideo``).

Unknown fields anywhere in these bodies are a 400 ``INVALID_ARGUMENT`` (as
Google's "Unknown name" errors). ``outcome`` scripts the answer: ``"ok"``,
``"blocked"`` (``promptFeedback.blockReason``), ``"safety"`` (finishReason
``IMAGE_SAFETY``, no image), ``"no_image"`` (text only), ``"filtered"``
(Imagen ``raiFilteredReason`` / Veo ``raiMediaFilteredCount``), ``"failed"``
(operation ``error``, code ``failure_code``) or ``"never"`` (never done).
A 429 carries ``RetryInfo.retryDelay`` (``retry_delay``) and no Retry-After header.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections import deque
from urllib.parse import urlsplit

from tests.fakes.openrouter import RATIOS
from tests.fakes.providers import FakeHTTPServer, Recorded, Response, _json, mp4_bytes, png_bytes

STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
CALL = re.compile(r"^/v1beta/models/([A-Za-z0-9._-]+):(generateContent|predict|predictLongRunning)$")
OPERATION = re.compile(r"^/v1beta/(models/[A-Za-z0-9._-]+/operations/[a-z0-9]+)$")
FILE = re.compile(r"^/v1beta/files/([a-z0-9]+):download$")
STORAGE = re.compile(r"^/storage/([a-z0-9]+)$")
PARAMETERS = {"predict": {"sampleCount", "aspectRatio", "sampleImageSize", "personGeneration",
                          "includeRaiReason"},
              "predictLongRunning": {"aspectRatio", "durationSeconds", "negativePrompt",
                                     "resolution", "personGeneration", "sampleCount"}}


class Invalid(Exception):
    pass


def _require(condition, message: str) -> None:
    if not condition:
        raise Invalid(message)


def _image(value) -> None:
    _require(isinstance(value, dict), "an image is an object")
    base64.b64decode(value.get("data") or value.get("bytesBase64Encoded") or "", validate=True)


class FakeGemini(FakeHTTPServer):
    def __init__(self, api_key: str | None = None, hang_s: float = 5.0,
                 polls_to_finish: int = 2):
        super().__init__(None, hang_s)  # the key goes in x-goog-api-key, checked in route
        self.key = api_key
        self.outcome = "ok"
        self.failure_code = 3  # google.rpc.Code of a failed operation (3 INVALID_ARGUMENT)
        self.failure_message = "the fake broke"
        self.retry_delay = "2s"
        self.video_delivery = "uri"  # "redirect": the download 302s to another origin;
        # "inline": the video comes in the operation as ``encodedVideo``
        self.polls_to_finish = polls_to_finish
        self.operations: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self._poll_script: deque = deque()

    def fail_polls(self, *statuses: int) -> None:
        with self._lock:
            self._poll_script.extend(statuses)

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST" and bool(CALL.match(request.path))

    def error(self, status: int, message: str | None = None) -> Response:
        error = {"code": status, "message": message or f"fake error {status}",
                 "status": STATUS.get(status, "UNKNOWN")}
        if status == 429:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                 "retryDelay": self.retry_delay}]
        return _json(status, {"error": error})

    def garbage(self, request: Recorded) -> Response:
        return _json(200, {"candidates": [{"content": {"parts": [{"inlineData": {
            "mimeType": "image/png", "data": base64.b64encode(b"not a png").decode()}}]}}],
            "predictions": [{"bytesBase64Encoded": base64.b64encode(b"no").decode()}],
            "name": "../../../etc/passwd"})

    # ------------------------------------------------------------ routing

    def route(self, request: Recorded) -> Response:
        path = urlsplit(request.path).path
        stored = STORAGE.match(path)  # a signed storage URL: no key needed (nor wanted)
        if stored and request.method == "GET" and stored.group(1) in self.files:
            return 200, {"Content-Type": "video/mp4"}, self.files[stored.group(1)]
        if self.key and request.header("x-goog-api-key") != self.key:
            return self.error(403, "Method doesn't allow unregistered callers")
        call = CALL.match(path)
        if call and request.method == "POST":
            try:
                body = request.json()
                _require(isinstance(body, dict), "body must be an object")
                return getattr(self, call.group(2))(call.group(1), body)
            except (Invalid, ValueError, TypeError, AttributeError) as exc:
                return self.error(400, f"Invalid JSON payload received. {exc}")
        operation = OPERATION.match(path)
        if operation and request.method == "GET":
            return self.poll(operation.group(1))
        file = FILE.match(path)
        if file and request.method == "GET" and file.group(1) in self.files:
            if self.video_delivery == "redirect":
                port = self._server.server_address[1]
                return 302, {"Location": f"http://localhost:{port}/storage/{file.group(1)}"}, b""
            return 200, {"Content-Type": "video/mp4"}, self.files[file.group(1)]
        return self.error(404, "not found")

    def generateContent(self, model: str, body: dict) -> Response:  # noqa: N802 (the API's name)
        _require(set(body) <= {"contents", "generationConfig"}, f"Unknown name in {sorted(body)}")
        contents = body.get("contents")
        _require(isinstance(contents, list) and contents, "contents is required")
        for content in contents:
            _require(set(content) <= {"role", "parts"} and content.get("parts"), "bad content")
            for part in content["parts"]:
                _require(len(part) == 1 and set(part) <= {"text", "inlineData"}, "bad part")
                if "inlineData" in part:
                    _require(set(part["inlineData"]) == {"mimeType", "data"}, "bad inlineData")
                    _image(part["inlineData"])
        config = body.get("generationConfig") or {}
        _require(set(config) <= {"responseModalities", "seed", "imageConfig"},
                 f"Unknown name in generationConfig {sorted(config)}")
        _require("IMAGE" in (config.get("responseModalities") or ()), "no IMAGE modality")
        image_config = config.get("imageConfig") or {}
        _require(set(image_config) <= {"aspectRatio", "imageSize"}, "bad imageConfig")
        _require(image_config.get("aspectRatio", "1:1") in RATIOS, "bad aspectRatio")
        if self.outcome == "blocked":
            return _json(200, {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})
        if self.outcome == "safety":
            return _json(200, {"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}]})
        parts: list[dict] = [{"text": "Here you go."}]
        if self.outcome != "no_image":
            image = png_bytes(*RATIOS[image_config.get("aspectRatio", "1:1")])
            parts.append({"inlineData": {"mimeType": "image/png",
                                         "data": base64.b64encode(image).decode()}})
        return _json(200, {"candidates": [{"content": {"role": "model", "parts": parts},
                                           "finishReason": "STOP", "index": 0}],
                           "modelVersion": model})

    def _instances(self, method: str, body: dict, instance_fields: set) -> tuple[dict, dict]:
        _require(set(body) <= {"instances", "parameters"}, f"Unknown name in {sorted(body)}")
        instances = body.get("instances")
        _require(isinstance(instances, list) and len(instances) == 1, "one instance")
        instance = instances[0]
        _require(isinstance(instance.get("prompt"), str) and set(instance) <= instance_fields,
                 f"bad instance {sorted(instance)}")
        parameters = body.get("parameters") or {}
        _require(set(parameters) <= PARAMETERS[method],
                 f"Unknown name in parameters {sorted(parameters)}")
        return instance, parameters

    def predict(self, model: str, body: dict) -> Response:
        _, parameters = self._instances("predict", body, {"prompt"})
        count = int(parameters.get("sampleCount", 4))
        _require(1 <= count <= 4, "sampleCount is 1-4")
        if self.outcome == "filtered":
            return _json(200, {"predictions": [{"raiFilteredReason": "filtered (fake)"}]})
        size = RATIOS[parameters.get("aspectRatio", "1:1")]
        return _json(200, {"predictions": [
            {"mimeType": "image/png", "bytesBase64Encoded":
                base64.b64encode(png_bytes(*size, (30 * i, 90, 90))).decode()}
            for i in range(count)]})

    def predictLongRunning(self, model: str, body: dict) -> Response:  # noqa: N802
        instance, parameters = self._instances("predictLongRunning", body, {"prompt", "image"})
        if "image" in instance:
            _require(set(instance["image"]) == {"bytesBase64Encoded", "mimeType"}, "bad image")
            _image(instance["image"])
        _require(parameters.get("aspectRatio", "16:9") in ("16:9", "9:16"), "bad aspectRatio")
        name = f"models/{model}/operations/{secrets.token_hex(6)}"
        self.operations[name] = {"polls": 0, "request": body, "count":
                                 int(parameters.get("sampleCount", 1))}
        return _json(200, {"name": name})

    def poll(self, name: str) -> Response:
        operation = self.operations.get(name)
        if operation is None:
            return self.error(404, "operation not found")
        with self._lock:
            failing = self._poll_script.popleft() if self._poll_script else None
        if failing:
            return self.error(failing)
        operation["polls"] += 1
        if self.outcome == "never" or operation["polls"] < self.polls_to_finish:
            return _json(200, {"name": name})
        if self.outcome == "failed":
            return _json(200, {"name": name, "done": True, "error": {
                "code": self.failure_code, "message": self.failure_message}})
        result: dict = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                                 "PredictLongRunningResponse"}
        if self.outcome == "filtered":
            result["generateVideoResponse"] = {
                "raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": ["Unable to generate videos (fake safety filter)."]}
        else:
            samples = []
            for _ in range(operation["count"]):
                file_id = secrets.token_hex(6)
                self.files[file_id] = mp4_bytes()
                if self.video_delivery == "inline":
                    samples.append({"video": {"encodedVideo": base64.b64encode(
                        self.files[file_id]).decode(), "encoding": "video/mp4"}})
                    continue
                samples.append({"video": {"uri": f"{self.url}/v1beta/files/{file_id}"
                                                 ":download?alt=media"}})
            result["generateVideoResponse"] = {"generatedSamples": samples}
        return _json(200, {"name": name, "done": True, "response": result})
