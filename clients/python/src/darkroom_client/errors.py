"""The one exception the client raises, built from the API's error envelope
``{"error": {"code", "message", "details"}}`` (docs/api.md, "Conventions")."""

from __future__ import annotations

from typing import Any


class DarkroomError(Exception):
    """An answer that is not a success, or no answer at all.

    ``status`` is the HTTP status (``None`` when the server could not be
    reached: ``code`` is then ``connection_error``), ``code`` the API's
    machine-readable code (``invalid_request``, ``not_found``,
    ``insufficient_credits``...), ``details`` its details (``fields`` for a
    400 ``invalid_request``), ``request_id`` the ``X-Request-Id`` to quote
    to an operator, ``retry_after`` the seconds a 429/503 asked to wait."""

    def __init__(self, status: int | None, code: str, message: str,
                 details: dict[str, Any] | None = None, *, request_id: str | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{status or 'no answer'} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.request_id = request_id
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response, retry_after: float | None = None) -> DarkroomError:
        """The error a ``requests`` response carries; a body that is not the
        envelope (a proxy's HTML page...) gives ``http_<status>`` and its text."""
        code, message, details = f"http_{response.status_code}", "", {}
        try:
            envelope = response.json()
        except ValueError:
            envelope = None
        error = envelope.get("error") if isinstance(envelope, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            code = error["code"]
            message = str(error.get("message") or "")
            details = error.get("details") if isinstance(error.get("details"), dict) else {}
        else:
            message = (response.text or response.reason or "").strip()[:200]
        return cls(response.status_code, code, message or response.reason or code, details,
                   request_id=response.headers.get("X-Request-Id"), retry_after=retry_after)


class WebhookVerificationError(DarkroomError):
    """A webhook whose signature, timestamp or body does not check out."""

    def __init__(self, message: str):
        super().__init__(None, "invalid_signature", message)
