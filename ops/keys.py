"""API keys for operators: ``auth.revoke_keys`` over nameko RPC (one key by
id or prefix, or every key of a user), and how the CLI prints the answer."""

from __future__ import annotations

from ops import rpc
from ops.errors import OpsError
from services.common.ids import parse_uuid


def revoke(config: dict, key: str | None, user: str | None) -> dict:
    """``key``: a key's id, its prefix (``drk_abcd1234``) or the whole key;
    ``user``: every key of that account (id or email)."""
    if bool(key) == bool(user):
        raise OpsError("name one key (id or prefix) or --user, not both", exit_code=2)
    if user:
        selector = {"user": user}
    elif parse_uuid(key.strip()) is not None:
        selector = {"key_id": key.strip()}
    else:
        selector = {"prefix": key.strip()}
    return rpc.call(config, "auth", "revoke_keys", selector)


def revoke_lines(answer: dict) -> list[str]:
    items = answer.get("items") or []
    if not items:
        return ["no live API keys: nothing revoked"]
    return [f"revoked {len(items)} API key{'s' if len(items) != 1 else ''}:",
            *(f"  {k['id']}  drk_{k['prefix']}  {k['name']!r}  user {k['user_id']}" for k in items)]
