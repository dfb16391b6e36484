"""Losing a unique-key race, handled one way.

Two transactions insert the same key at once (two first calls for a user,
the same Idempotency-Key twice, an event delivered twice): the database lets
one commit, and the other's flush or commit raises ``IntegrityError``. The
loser rolls back and then, depending on what the key means, either reads what
the winner wrote, or answers the error the conflict means, or runs its work
once more (which now finds the winner's rows). :func:`first_wins` does that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

T = TypeVar("T")


def first_wins(session: Session, write: Callable[[], T],
               lost: Callable[[], T] | BaseException | None = None, *,
               attempts: int = 2, savepoint: bool = False) -> T:
    """Run ``write()``, which flushes or commits rows under a unique key.

    When it loses the race for that key, the transaction is rolled back
    (with ``savepoint``, only what ``write()`` did, in a SAVEPOINT) and:

    - ``lost`` is an exception: it is raised (the conflict is the caller's
      answer, e.g. 409 ``policy_version_exists``);
    - ``lost`` is a callable: its result is returned; it re-reads what the
      winner wrote (it may raise, e.g. when nothing explains the loss);
    - ``lost`` is None: ``write()`` runs again, up to ``attempts`` times in
      all, and sees the winner's rows; the last loss is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            if savepoint:
                with session.begin_nested():
                    return write()
            return write()
        except IntegrityError:
            if not savepoint:
                session.rollback()
            if isinstance(lost, BaseException):
                raise lost from None
            if lost is not None:
                return lost()
            if attempt == attempts:
                raise
            log.info("unique-key race lost; running again (%d of %d)", attempt + 1, attempts)
    raise AssertionError("unreachable")
