"""Server-sent events, read as the HTML standard says (the parts the API uses:
``event``, ``data``, ``id``, ``retry`` and ``:`` comments)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class RawEvent:
    event: str
    data: str
    id: str | None = None


def parse(lines: Iterable[str], on_retry=None) -> Iterator[RawEvent]:
    """The events of a stream's lines (without their line ends); a blank line
    ends an event. ``on_retry(ms)`` hears each ``retry:`` field."""
    event, data, ident = "", [], None
    for line in lines:
        if not line:
            if data:
                yield RawEvent(event or "message", "\n".join(data), ident)
            event, data = "", []
            continue
        if line.startswith(":"):  # a comment: the server's keepalive
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            ident = value
        elif name == "retry" and value.isdigit() and on_retry is not None:
            on_retry(int(value))
