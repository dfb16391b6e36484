"""What the generation domain tests share: a migrated SQLite database."""

from __future__ import annotations

import pytest

from tests.unit.databases import migrated_database


@pytest.fixture
def db(tmp_path):
    with migrated_database("generation", tmp_path) as session:
        yield session
