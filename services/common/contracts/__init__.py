"""Contracts: the marshmallow schema of every event and RPC payload.

Publishers dump through them (:func:`make_event`), consumers load through them
(:func:`load_event`, :func:`load_rpc`). Each service's payloads live in a module
of this package named after the service; :data:`EVENTS` maps every event name
(``<service>.<fact>``) to its schema.
"""

from __future__ import annotations

# Import the per-service modules so EVENTS is complete wherever contracts is used.
from services.common.contracts import (  # noqa: F401
    auth,
    billing,
    generation,
    oidc,
    privacy,
    storage,
)
from services.common.contracts.base import (  # noqa: F401 - the package's API
    EVENTS,
    EventSchema,
    PageQuery,
    RpcSchema,
    Sealed,
    event_schema,
    load_event,
    load_rpc,
    make_event,
    page_of,
    register_event,
)
