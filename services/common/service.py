"""What every Darkroom nameko service has: observability (with the state
gauges of services/common/metrics.py), a ``ping`` RPC and
the removal of its dead letters that name an erased user.

    class AuthService(DarkroomService):
        name = "auth"
        db = Database(migrations=...)
"""

from __future__ import annotations

from nameko.extensions import DependencyProvider

from services.common.dead_letters import DeadLetters
from services.common.metrics import StateMetrics
from services.common.observability import Observability
from services.common.queues import rpc
from services.common.secrets import ProductionSecrets


class DarkroomService:
    name = "darkroom"
    production_secrets = ProductionSecrets()  # DARKROOM_ENV=production: no weak secrets
    observe = Observability()
    state_gauges = StateMetrics()  # services.common.metrics: read at each scrape
    # at an erasure: self.dead_letters(user_id, ...) removes this service's
    # dead letters that name the user
    dead_letters = DeadLetters()

    @rpc
    def ping(self) -> dict:
        """Answered by every service; the gateway's /readyz calls it."""
        return {"service": self.name, "ok": True}


class FromConfig(DependencyProvider):
    """``factory(config)``, made once when the service starts (a bad setting
    stops it there) and handed to every worker: a service's settings, a
    client, a router... ``settings = FromConfig(StorageSettings.from_config)``."""

    def __init__(self, factory, **kwargs):
        super().__init__(**kwargs)
        self.factory = factory

    def setup(self):
        self.value = self.factory(self.container.config)

    def get_dependency(self, worker_ctx):
        return self.value
