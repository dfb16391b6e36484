"""A fake of OpenRouter's chat completions API with image output, over real
HTTP on loopback (see tests/fakes/providers.py for the machinery).

``POST /api/v1/chat/completions`` with ``Authorization: Bearer <key>``: the
body is checked against the documented shape (``model``; ``messages`` of
``{role, content}`` where content is a string or a list of ``text`` /
``image_url`` parts; ``modalities`` containing ``"image"``; optional
``image_config{aspect_ratio, image_size}``, ``seed``) and any other top-level
field is a 400, so an adapter that sends more than the whitelist fails here.
The answer carries one PNG as a data URI in ``choices[0].message.images``;
``outcome`` changes that: ``"refused"`` (403 moderation error with
``metadata.reasons``), ``"error_in_body"`` (200 with ``{"error": {...}}``),
``"content_filter"`` (200, no image, ``finish_reason: content_filter``),
``"no_image"`` (200, text only). Every request is recorded.
"""

from __future__ import annotations

import base64

from tests.fakes.providers import FakeHTTPServer, Recorded, Response, _json, png_bytes

PATH = "/api/v1/chat/completions"
FIELDS = {"model", "messages", "modalities", "image_config", "seed"}
RATIOS = {"1:1": (64, 64), "16:9": (64, 36), "9:16": (36, 64), "4:3": (64, 48), "3:4": (48, 64),
          "3:2": (63, 42), "2:3": (42, 63), "4:5": (48, 60), "5:4": (60, 48), "21:9": (63, 27)}


class FakeOpenRouter(FakeHTTPServer):
    def __init__(self, api_key: str | None = None, hang_s: float = 5.0):
        super().__init__(api_key, hang_s)
        self.outcome = "ok"
        self.error_code = 502  # the code of an "error_in_body" answer

    def scripted(self, request: Recorded) -> bool:
        return request.method == "POST" and request.path == PATH

    def error(self, status: int) -> Response:
        headers = {"Retry-After": "0"} if status in (429, 503) else {}
        return _json(status, {"error": {"code": status, "message": f"fake error {status}"}},
                     headers)

    def garbage(self, request: Recorded) -> Response:
        return _json(200, {"id": "gen-x", "choices": [{"message": {
            "role": "assistant", "images": [{"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}}]}}]})

    def invalid(self, message: str) -> Response:
        return _json(400, {"error": {"code": 400, "message": message}})

    def check(self, body) -> str | None:
        """What is wrong with a request body, by the documented shape."""
        if not isinstance(body, dict):
            return "body must be an object"
        if set(body) - FIELDS:
            return f"unexpected fields {sorted(set(body) - FIELDS)}"
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "model is required"
        modalities = body.get("modalities") or ()
        if "image" not in modalities or not set(modalities) <= {"image", "text"}:
            return "modalities must be image, or image and text"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages is required"
        for message in messages:
            if set(message) != {"role", "content"} or message["role"] not in ("user", "system"):
                return "a message is {role, content}"
            content = message["content"]
            if isinstance(content, str):
                continue
            for part in content:
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    continue
                url = (part.get("image_url") or {}).get("url", "")
                if part.get("type") != "image_url" or not url.startswith(("data:image/",
                                                                          "https://")):
                    return "a content part is text or image_url"
                if url.startswith("data:"):
                    base64.b64decode(url.partition(",")[2], validate=True)
        config = body.get("image_config")
        if config is not None and (set(config) - {"aspect_ratio", "image_size"}
                                   or config.get("aspect_ratio", "1:1") not in RATIOS
                                   or config.get("image_size", "1K") not in ("1K", "2K", "4K")):
            return "bad image_config"
        if "seed" in body and not isinstance(body["seed"], int):
            return "seed is an integer"
        return None

    def route(self, request: Recorded) -> Response:
        if not self.scripted(request):
            return super().route(request)
        try:
            problem = self.check(request.json())
        except (ValueError, AttributeError, TypeError):
            problem = "malformed request"
        if problem:
            return self.invalid(problem)
        body = request.json()
        if self.outcome == "refused":
            return _json(403, {"error": {"code": 403, "message": "Your input was flagged",
                                         "metadata": {"reasons": ["violence"],
                                                      "flagged_input": "...",
                                                      "provider_name": "fake",
                                                      "model_slug": body["model"]}}})
        if self.outcome == "error_in_body":
            return _json(200, {"error": {"code": self.error_code, "message": "upstream broke"}})
        message: dict = {"role": "assistant", "content": "Here is your image."}
        finish = "stop"
        if self.outcome == "content_filter":
            message["content"], finish = "", "content_filter"
        elif self.outcome != "no_image":
            ratio = (body.get("image_config") or {}).get("aspect_ratio", "1:1")
            image = png_bytes(*RATIOS[ratio])
            message["images"] = [{"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(image).decode()}}]
        return _json(200, {"id": "gen-fake", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": finish,
                                        "native_finish_reason": finish.upper(),
                                        "message": message}]})
