"""What the generation domain tests share: a migrated SQLite database."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from services.common.db import make_engine
from services.common.migrations import SERVICES_DIR, upgrade


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path}/generation.db"
    upgrade(SERVICES_DIR / "generation" / "migrations", url)
    engine = make_engine(url)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()
