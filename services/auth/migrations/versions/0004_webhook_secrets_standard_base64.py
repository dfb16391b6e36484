"""webhook secrets in standard base64 (Standard Webhooks), the same key bytes

Secrets were made as ``whsec_`` + base64url; Standard Webhooks libraries
decode the part after ``whsec_`` as standard base64, which reads ``-`` and
``_`` wrongly. Each secret is rewritten in the standard alphabet, padded: the
key it encodes does not change.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import base64
import binascii
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "whsec_"
secrets_table = sa.table("webhook_secrets", sa.column("user_id", sa.Uuid()),
                         sa.column("secret", sa.String()))


def _rewrite(secret: str, decode, encode) -> str | None:
    if not secret.startswith(PREFIX):
        return None
    text = secret[len(PREFIX):].rstrip("=")
    try:
        key = decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    new = PREFIX + encode(key).decode()
    return new if new != secret else None


def _convert(decode, encode) -> None:
    bind = op.get_bind()
    for user_id, secret in bind.execute(sa.select(secrets_table.c.user_id,
                                                  secrets_table.c.secret)).all():
        new = _rewrite(secret, decode, encode)
        if new is not None:
            bind.execute(sa.update(secrets_table).where(secrets_table.c.user_id == user_id)
                         .values(secret=new))


def upgrade() -> None:
    _convert(base64.urlsafe_b64decode, base64.b64encode)


def downgrade() -> None:
    _convert(base64.b64decode, lambda key: base64.urlsafe_b64encode(key).rstrip(b"="))
