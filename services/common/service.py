"""What every Darkroom nameko service has: observability and a ``ping`` RPC.

    class AuthService(DarkroomService):
        name = "auth"
        db = Database(migrations=...)
"""

from __future__ import annotations

from nameko.rpc import rpc

from services.common.observability import Observability


class DarkroomService:
    name = "darkroom"
    observe = Observability()

    @rpc
    def ping(self) -> dict:
        """Answered by every service; the gateway's /readyz calls it."""
        return {"service": self.name, "ok": True}
