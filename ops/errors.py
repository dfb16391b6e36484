"""What the ops commands raise for an expected failure: the CLI prints the
message (no traceback) and exits with ``exit_code``."""

from __future__ import annotations

from services.common.ids import parse_uuid


class OpsError(Exception):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def id_argument(value: str, what: str) -> str:
    """An id given on the command line, in canonical form; OpsError (exit 2,
    bad usage) when it is not a UUID."""
    parsed = parse_uuid(value.strip()) if isinstance(value, str) else None
    if parsed is None:
        raise OpsError(f"not a {what} (a UUID): {value!r}", exit_code=2)
    return str(parsed)
