"""Secrets inside events, encrypted: what a dead-letter queue keeps is useless.

Some events carry a secret the mail must show: auth's a verification code or
a password-reset token, privacy's ``erasure_scheduled`` the erasure's cancel
token. Events sit in outbox rows, retry queues and dead-letter queues that
operators read, so the secret travels *sealed*: encrypted and authenticated
with Fernet (AES-128-CBC + HMAC-SHA256, cryptography) under
``MAIL_SECRETS_KEY``, a secret only the services that seal (auth, privacy) and
the notifications service (which opens, to write the mail) hold.

``MAIL_SECRETS_KEY`` is any long random string; the Fernet key is derived
from it with HKDF-SHA256. A comma-separated list rotates it: the first value
seals, every one opens (docs/operations.md, "Rotating secrets").
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CONFIG_KEY = "MAIL_SECRETS_KEY"
_INFO = b"darkroom mail secrets v1"


class UnreadableSecret(ValueError):
    """The sealed value was not made under any of the configured keys (or was
    altered)."""


def _fernet(secret: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        secret.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


class Sealer:
    """Seals with the first key of ``MAIL_SECRETS_KEY`` and opens with any."""

    def __init__(self, keys: str):
        values = [k.strip() for k in str(keys or "").split(",") if k.strip()]
        if not values:
            raise ValueError(f"{CONFIG_KEY} must be set")
        self._fernet = MultiFernet([_fernet(v) for v in values])

    @classmethod
    def from_config(cls, config: dict) -> Sealer:
        return cls(config.get(CONFIG_KEY) or "")

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise UnreadableSecret("the sealed secret cannot be opened with MAIL_SECRETS_KEY") from exc
