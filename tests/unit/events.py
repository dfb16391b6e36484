"""A ``dispatch`` for unit tests of a service's domain modules."""

from __future__ import annotations

from services.common import contracts


class Events:
    """Validates each event against its contract (``<service>.<type>``), as the
    service's EventPublisher does, and keeps the envelope."""

    def __init__(self, service: str):
        self.service = service
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, event_type: str, data: dict) -> str:
        body = contracts.make_event(f"{self.service}.{event_type}", data)
        self.seen.append((event_type, body))
        return body["event_id"]

    def of(self, event_type: str) -> list[dict]:
        return [body for kind, body in self.seen if kind == event_type]

    def clear(self) -> None:
        self.seen.clear()
