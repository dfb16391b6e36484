"""What a database outage is (services/common/db.py ``is_outage``), what an
RPC caller gets for one (503 ``service_unavailable``, services/common/queues.py
``Rpc``), and how an event handler's message waits one out instead of being
dead-lettered (services/common/messaging.py). The restart itself runs in
tests/integration/test_postgres_restart.py."""

from __future__ import annotations

import sqlite3
import sys
from types import SimpleNamespace

import pytest
from sqlalchemy import exc as sa_exc

from services.common.db import is_outage, outage_error, sqlstate
from services.common.engine import make_engine
from services.common.errors import DomainError
from services.common.messaging import ATTEMPT_HEADER, ReliableEventHandler
from services.common.queues import Rpc
from tests.conftest import free_port


class Pg8000Error(Exception):
    """pg8000's errors carry the server's fields in a dict (``C``: SQLSTATE)."""


def server_error(code: str, cls=sa_exc.ProgrammingError) -> sa_exc.DBAPIError:
    return cls("SELECT 1", {}, Pg8000Error({"S": "FATAL", "C": code, "M": "..."}))


@pytest.mark.parametrize("exc", [
    sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")),
    sa_exc.InterfaceError("SELECT 1", {}, Exception("network error")),
    sa_exc.DisconnectionError("gone"),
    sa_exc.TimeoutError("QueuePool limit reached"),
    server_error("57P01"),  # terminating connection due to administrator command
    server_error("57P03"),  # the database system is starting up
    server_error("08006"),  # connection failure
    server_error("53300"),  # too many connections
    sa_exc.DBAPIError("SELECT 1", {}, Exception("x"), connection_invalidated=True),
])
def test_outages(exc):
    assert is_outage(exc)
    error = outage_error(exc)
    assert (error.status, error.code, error.details["cause"]) == (503, "service_unavailable",
                                                                  "database")
    assert error.details["retry_after"] >= 1


@pytest.mark.parametrize("exc", [
    server_error("42P01"),  # undefined table: a bug
    server_error("23505", sa_exc.IntegrityError),
    sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("no such table: jobs")),
    sa_exc.PendingRollbackError("rolled back"),
    ValueError("a bug"),
    DomainError("not_found", "no", 404),
    None,
])
def test_not_outages(exc):
    assert not is_outage(exc)
    assert outage_error(exc) is None


def test_sqlstate_of_psycopg_and_pg8000():
    assert sqlstate(server_error("57P03")) == "57P03"
    psycopg = sa_exc.OperationalError("SELECT 1", {}, SimpleNamespace(args=(), sqlstate="08001"))
    assert sqlstate(psycopg) == "08001"
    assert sqlstate(ValueError("x")) is None


def test_a_server_that_is_not_there_is_an_outage():
    """A refused (or reset) connection comes out of the engine as
    SQLAlchemy's InterfaceError, not a bare OSError."""
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    try:
        with pytest.raises(sa_exc.InterfaceError) as raised:
            engine.connect()
    finally:
        engine.dispose()
    assert is_outage(raised.value)


def test_an_rpc_answers_a_database_outage_with_503():
    answered = []
    entrypoint = object.__new__(Rpc)
    entrypoint.rpc_consumer = SimpleNamespace(
        handle_result=lambda message, result, exc_info: answered.append(exc_info) or (
            result, exc_info))
    down = sa_exc.InterfaceError("SELECT 1", {}, Exception("Can't create a connection"))
    entrypoint.handle_result("message", None, None, (type(down), down, None))
    sent = answered[-1][1]
    assert isinstance(sent, DomainError)
    assert (sent.status, sent.code) == (503, "service_unavailable")
    bug = ValueError("a bug")
    entrypoint.handle_result("message", None, None, (ValueError, bug, None))
    assert answered[-1][1] is bug  # anything else crosses as it did
    entrypoint.handle_result("message", None, {"ok": 1}, None)
    assert answered[-1] is None


class Handler(ReliableEventHandler):
    """The handler's retry decisions, without a broker: what it would publish."""

    def __init__(self, delays):
        self.retry_delays = delays
        self.event_name = "billing.credits_reserved"
        self.queue = SimpleNamespace(name="evt-billing-credits_reserved--generation.x")
        self.container = SimpleNamespace(service_name="generation")
        self.published = []

    def _publish_or_requeue(self, message, **kwargs):
        self.published.append(kwargs)
        return True


def processed(handler, exc, attempt):
    message = SimpleNamespace(headers={ATTEMPT_HEADER: attempt}, body=b"{}")
    try:
        raise exc
    except Exception:
        handler.handle_message_processed(message, exc_info=sys.exc_info())
    return handler.published[-1]


def test_a_handler_waits_a_database_outage_out_at_its_last_delay():
    handler = Handler([300, 1000])
    down = sa_exc.OperationalError("SELECT 1", {}, Exception("the database is starting up"))
    first = processed(handler, down, 1)
    assert first["exchange"].name == "darkroom.retry.300ms"
    assert first["headers"][ATTEMPT_HEADER] == 2
    for _ in range(5):  # past max_attempts: still retried, at the last delay
        again = processed(handler, down, 3)
        assert again["exchange"].name == "darkroom.retry.1000ms"
        assert again["headers"][ATTEMPT_HEADER] == 3
    # anything else at the last attempt is dead-lettered, as before
    dead = processed(handler, ValueError("a bug"), 3)
    assert dead["exchange"].name == "darkroom.dead-letter"


def test_without_retry_delays_an_outage_is_dead_lettered():
    handler = Handler([])
    down = sa_exc.OperationalError("SELECT 1", {}, Exception("down"))
    assert processed(handler, down, 1)["exchange"].name == "darkroom.dead-letter"
