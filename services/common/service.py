"""What every Darkroom nameko service has: observability and a ``ping`` RPC.

    class AuthService(DarkroomService):
        name = "auth"
        db = Database(migrations=...)
"""

from __future__ import annotations

from nameko.rpc import rpc

from services.common.observability import Observability
from services.common.secrets import ProductionSecrets


class DarkroomService:
    name = "darkroom"
    production_secrets = ProductionSecrets()  # DARKROOM_ENV=production: no weak secrets
    observe = Observability()

    @rpc
    def ping(self) -> dict:
        """Answered by every service; the gateway's /readyz calls it."""
        return {"service": self.name, "ok": True}
