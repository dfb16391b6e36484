"""What every service's models share: a declarative base of its own (its
tables in its own metadata, constraints named by ``NAMING_CONVENTION``) and
the random UUID primary key most tables have."""

from __future__ import annotations

import uuid

from sqlalchemy import MetaData, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import NAMING_CONVENTION
from services.common.ids import new_id


def service_base() -> type[DeclarativeBase]:
    """A new declarative base: one per service (``Base = service_base()`` in its models)."""

    class Base(DeclarativeBase):
        metadata = MetaData(naming_convention=NAMING_CONVENTION)

    return Base


class IdMixin:
    """``id``: a random UUID (:func:`services.common.ids.new_id`), the primary key
    and the table's first column."""

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id, sort_order=-1)
