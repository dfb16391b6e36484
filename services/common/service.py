"""What every Darkroom nameko service has: observability (with the state
gauges of services/common/metrics.py), a ``ping`` RPC,
the removal of its dead letters that name an erased user, and its operators'
RPCs for its own dead letters (``admin_dead_letters``,
``admin_replay_dead_letters``: services/common/operators.py says who may call them).

    class AuthService(DarkroomService):
        name = "auth"
        db = Database(migrations=...)
"""

from __future__ import annotations

import logging

from nameko.extensions import DependencyProvider

from services.common import operators
from services.common.dead_letters import DeadLetters, OwnDeadLetters
from services.common.errors import DomainError
from services.common.memory import LargeAllocations
from services.common.metrics import StateMetrics
from services.common.observability import Observability
from services.common.queues import RpcProxy, rpc
from services.common.resolver import NameLookups
from services.common.secrets import ProductionSecrets

log = logging.getLogger(__name__)


class DarkroomService:
    name = "darkroom"
    production_secrets = ProductionSecrets()  # DARKROOM_ENV=production: no weak secrets
    observe = Observability()
    state_gauges = StateMetrics()  # services.common.metrics: read at each scrape
    # at an erasure: self.dead_letters(user_id, ...) removes this service's
    # dead letters that name the user
    dead_letters = DeadLetters()
    own_dead_letters = OwnDeadLetters()  # the operators' view of them
    operator_auth = RpcProxy("auth")  # asks auth who may operate
    large_allocations = LargeAllocations()  # freed large blocks leave the resident set
    name_lookups = NameLookups()  # without green DNS, lookups in the thread pool

    @rpc
    def ping(self) -> dict:
        """Answered by every service; the gateway's /readyz calls it."""
        return {"service": self.name, "ok": True}

    def _require_operator(self, actor) -> str:
        """The actor's id when it may operate (auth's rule); 403
        ``admin_required`` otherwise. Auth overrides it with the rule read in place."""
        return operators.require_operator(self.operator_auth, actor)

    # ------------------------------------------------------------ operators: dead letters

    @rpc(expected_exceptions=DomainError)
    def admin_dead_letters(self, actor) -> dict:
        """``GET /v1/admin/dead-letters``: this service's non-empty dead-letter
        queues (of its own event handlers), a few letters each, bodies left out."""
        self._require_operator(actor)
        return {"service": self.name, "items": self.own_dead_letters.list()}

    @rpc(expected_exceptions=DomainError)
    def admin_replay_dead_letters(self, actor, queue, limit=None) -> dict:
        """``POST /v1/admin/dead-letters/{service}/{queue}/replay``: replay one
        of this service's own dead-letter queues (404 ``not_found`` for any other)."""
        actor = self._require_operator(actor)
        name, replayed = self.own_dead_letters.replay(queue, limit)
        log.warning("dead letters replayed by an operator",
                    extra={"actor": actor, "queue": name, "replayed": replayed})
        return {"service": self.name, "queue": name, "replayed": replayed}


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
