"""Losing a unique-key race: roll back, then read the winner, answer the
conflict, or run again. Two real sessions on one SQLite file race for a key."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.engine import make_engine
from services.common.errors import DomainError
from services.common.races import first_wins

metadata = MetaData()
names = Table("names", metadata, Column("name", String(20), primary_key=True),
              Column("owner", String(20), nullable=False))
other = Table("other", metadata, Column("id", Integer, primary_key=True))


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/races.db")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def take(session: Session, name: str, owner: str):
    def write():
        session.execute(insert(names).values(name=name, owner=owner))
        session.commit()
        return owner
    return write


def owner_of(session: Session, name: str):
    return session.scalar(select(names.c.owner).where(names.c.name == name))


def test_the_winner_is_read_back(engine):
    with Session(engine) as winner, Session(engine) as loser:
        take(winner, "fox", "ann")()
        assert first_wins(loser, take(loser, "fox", "bob"), lambda: owner_of(loser, "fox")) == "ann"


def test_without_a_race_the_write_answers(engine):
    with Session(engine) as session:
        assert first_wins(session, take(session, "fox", "bob"), lambda: "lost") == "bob"


def test_a_loss_can_be_a_domain_error(engine):
    with Session(engine) as winner, Session(engine) as loser:
        take(winner, "fox", "ann")()
        with pytest.raises(DomainError) as info:
            first_wins(loser, take(loser, "fox", "bob"), DomainError("taken", "taken", 409))
        assert info.value.code == "taken"
        assert owner_of(loser, "fox") == "ann"


def test_without_lost_the_write_runs_again_and_sees_the_winner(engine):
    calls = []
    with Session(engine) as winner, Session(engine) as loser:
        take(winner, "fox", "ann")()

        def write():  # blind insert the first time, as if it had read before the winner
            calls.append(1)
            if len(calls) == 1:
                return take(loser, "fox", "bob")()
            return owner_of(loser, "fox")

        assert first_wins(loser, write) == "ann"
    assert len(calls) == 2


def test_the_last_loss_is_raised_after_the_attempts(engine):
    calls = []
    with Session(engine) as winner, Session(engine) as loser:
        take(winner, "fox", "ann")()

        def write():
            calls.append(1)
            return take(loser, "fox", "bob")()

        with pytest.raises(IntegrityError):
            first_wins(loser, write, attempts=3)
    assert len(calls) == 3


def test_a_savepoint_keeps_what_the_transaction_did_before(engine):
    with Session(engine) as winner, Session(engine) as loser:
        take(winner, "fox", "ann")()
        loser.execute(insert(other).values(id=1))  # before the race, same transaction

        def add():
            loser.execute(insert(names).values(name="fox", owner="bob"))
            return True

        assert first_wins(loser, add, lambda: False, savepoint=True) is False
        loser.commit()
        assert loser.scalar(select(other.c.id)) == 1
        assert owner_of(loser, "fox") == "ann"


def test_without_a_savepoint_the_whole_transaction_is_rolled_back(engine):
    with Session(engine) as winner, Session(engine) as loser:
        take(winner, "fox", "ann")()
        loser.execute(insert(other).values(id=1))
        first_wins(loser, take(loser, "fox", "bob"), lambda: None)
        loser.commit()
        assert loser.scalar(select(other.c.id)) is None
