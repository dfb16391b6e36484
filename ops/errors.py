"""What the ops commands raise for an expected failure: the CLI prints the
message (no traceback) and exits with ``exit_code``."""

from __future__ import annotations


class OpsError(Exception):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
