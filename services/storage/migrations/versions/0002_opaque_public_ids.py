"""opaque public ids: objects.public_id; public objects made private

Public URLs used to name the object's key ``objects/<owner>/<id>``, so two
public images of one person could be linked. A public object now gets a
random ``public_id`` and a copy of its bytes under ``public/<public_id>``
when it is made public. Objects public before this migration have no copy:
they are made private again (their old public links named the owner, so they
must stop working anyway); their owners publish them again to get an opaque
link.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.add_column(sa.Column("public_id", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_objects_public_id", ["public_id"])
    op.execute("UPDATE objects SET visibility = 'private' WHERE visibility = 'public'")


def downgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.drop_constraint("uq_objects_public_id", type_="unique")
        batch.drop_column("public_id")
