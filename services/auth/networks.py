"""Client networks: the unit a login's origin is remembered and compared by
(:mod:`services.common.networks`), stored as keyed digests."""

from __future__ import annotations

from services.auth.tokens import keyed_digest


def network_digest(secret_key: bytes, network: str) -> str:
    """How a known network is stored: an HMAC, never the network itself."""
    return keyed_digest(secret_key, "login-network", network)
