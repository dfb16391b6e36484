"""Accounts for operators, through the services that own them: auth
(``set_admin``, ``list_users``, ``find_user``, ``disable_user``,
``enable_user``) and privacy (``erase_as_operator``: deleting an account is
the privacy service's erasure, the one home for erasure: every service's
part, the grace period and the mailed cancel link, the certificate), and how
the CLI prints them. A user is named by id or email address."""

from __future__ import annotations

from ops import rpc
from ops.errors import OpsError


def _auth(config: dict, method: str, *args):
    return rpc.call(config, "auth", method, *args)


def set_admin(config: dict, email: str, is_admin: bool) -> dict:
    """Returns auth's answer ``{"user_id", "is_admin", "otpauth_uri",
    "api_keys_revoked"}`` (granting or withdrawing admin revokes the account's
    API keys); a DomainError (unknown user...) propagates for the CLI to print."""
    return _auth(config, "set_admin", email, is_admin)


def list_users(config: dict, email: str | None, limit: int, cursor: str | None) -> dict:
    query: dict = {"limit": limit}
    if email:
        query["email"] = email
    if cursor:
        query["cursor"] = cursor
    return _auth(config, "list_users", query)


def show(config: dict, user: str) -> dict:
    return _auth(config, "find_user", user)


def set_disabled(config: dict, user: str, disabled: bool) -> dict:
    return _auth(config, "disable_user" if disabled else "enable_user", user)


def delete(config: dict, user: str, reason: str) -> dict:
    """Ask the privacy service to erase the account auth knows as ``user``:
    ``{"user": auth's view, "request": the erasure request}``."""
    reason = reason.strip()
    if not reason:
        raise OpsError("--reason must say why the account is erased", exit_code=2)
    account = show(config, user)
    request = rpc.call(config, "privacy", "erase_as_operator", account["id"], reason)
    return {"user": account, "request": request}


MINOR_REASON = "reported by a guardian as under the minimum age (no grace period)"


def delete_minor(config: dict, user: str) -> dict:
    """The privacy service's erasure of ``user`` at once (``immediate``): no
    grace period, no cancel link. ``{"user": auth's view, "request": ...}``."""
    account = show(config, user)
    request = rpc.call(config, "privacy", "erase_as_operator", account["id"], MINOR_REASON,
                       immediate=True)
    return {"user": account, "request": request}


# ------------------------------------------------------------ printing


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def _state(user: dict) -> str:
    flags = ["disabled" if user.get("disabled_at") else "active"]
    if user.get("is_admin"):
        flags.append("admin")
    if not user.get("email_verified"):
        flags.append("unverified")
    if user.get("processing_restricted"):
        flags.append("restricted")
    return ",".join(flags)


def list_lines(page: dict) -> list[str]:
    users = page.get("items") or []
    if not users:
        return ["no users match"]
    rows = [(str(u["id"]), str(u["email"]), _state(u), str(u.get("plan")),
             str(u.get("sessions_active")), str(u.get("api_keys_active")),
             str(u.get("created_at"))) for u in users]
    lines = _table(("USER", "EMAIL", "STATE", "PLAN", "SESSIONS", "KEYS", "CREATED"), rows)
    if page.get("next_cursor"):
        lines.append(f"more: --cursor {page['next_cursor']}")
    return lines


def show_lines(user: dict) -> list[str]:
    fields = ("id", "email", "email_verified", "display_name", "plan", "is_admin", "totp_enabled",
              "processing_restricted", "disabled_at", "sessions_active", "api_keys_active",
              "created_at", "updated_at")
    return [f"{(name.replace('_', ' ') + ':'):<23}{'-' if user.get(name) is None else user[name]}"
            for name in fields]


def disabled_lines(answer: dict) -> list[str]:
    if not answer["disabled"]:
        return [f"{answer['email']} is enabled again (user {answer['user_id']}); "
                "it signs in afresh: revoked keys stay revoked"]
    return [f"{answer['email']} is disabled (user {answer['user_id']}): "
            f"{answer['sessions_revoked']} session(s) and {answer['api_keys_revoked']} "
            "API key(s) revoked"]


def delete_minor_lines(result: dict) -> list[str]:
    request = result["request"]
    return [f"erasure of {result['user']['email']} (user {result['user']['id']}) started at "
            f"once, without a grace period: request {request['id']}, {request['status']}",
            "follow it (and its certificate) with `darkroom-ops privacy report`"]


def delete_lines(result: dict) -> list[str]:
    request = result["request"]
    return [f"erasure of {result['user']['email']} (user {result['user']['id']}) requested: "
            f"request {request['id']}, {request['status']}",
            f"it starts at {request.get('starts_at') or 'once the grace period is over'}; "
            "the owner was mailed a cancel link; follow it with `darkroom-ops privacy report`"]
