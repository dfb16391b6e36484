"""The databases the domain unit tests run on: SQLite, with the service's
tables made from its models or built by its real migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import MetaData, create_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from services.common.db import make_engine
from services.common.migrations import SERVICES_DIR, upgrade


@contextmanager
def memory_database(metadata: MetaData) -> Iterator[Session]:
    """A session on an in-memory database holding ``metadata``'s tables."""
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False},
                           poolclass=StaticPool)
    metadata.create_all(engine)
    try:
        with Session(engine, expire_on_commit=False) as session:
            yield session
    finally:
        engine.dispose()


@contextmanager
def migrated_database(service: str, directory: Path) -> Iterator[Session]:
    """A session on a database file in ``directory`` built by ``service``'s migrations."""
    url = f"sqlite:///{directory}/{service}.db"
    upgrade(SERVICES_DIR / service / "migrations", url)
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            yield session
    finally:
        engine.dispose()
