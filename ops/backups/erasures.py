"""Keeping erased users out of restored backups.

The privacy service remembers every erased user as a keyed hash
(``erased_subjects``: ``pseudonym(PRIVACY_PSEUDONYM_KEY, user id)`` and the
time). That table is the erasure log: each backup set carries a copy
(``erasures.json.enc``), and a restore gathers the log from the restored
set, every newer set, and the live privacy database when it still answers.
Before the stack starts, :func:`replay` erases again every user of the
restored databases whose hash is in that log, with each service's own
``privacy.erase`` (the code the erasure ran the first time), and records
them in the restored privacy database.
"""

from __future__ import annotations

import logging
from datetime import datetime
from types import SimpleNamespace

from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.common import fieldcrypt
from services.common.engine import make_engine
from services.common.ids import isoformat, parse_uuid, pseudonym, trusted_id, utcnow

log = logging.getLogger(__name__)


def read_log(url: str, required: bool = False) -> dict[str, str]:
    """``{subject: erased_at}`` of the privacy database at ``url``. Empty when
    it cannot be read (a fresh database, or gone), unless ``required``:
    then the error propagates."""
    from services.privacy.models import ErasedSubject

    engine = make_engine(url)
    try:
        with engine.connect() as conn:  # the model's column type reads times as UTC
            rows = conn.execute(select(ErasedSubject.subject, ErasedSubject.erased_at)).all()
    except SQLAlchemyError as exc:
        if required:
            raise
        log.info("no erasure log at the privacy database: %s", type(exc).__name__)
        return {}
    finally:
        engine.dispose()
    return {str(subject): isoformat(at) for subject, at in rows}


def merge(*logs: dict[str, str]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for one in logs:
        for subject, at in one.items():
            merged[subject] = min(at, merged.get(subject, at))
    return merged


def _settings(service: str, config: dict, backend):
    """What ``services.<service>.privacy.erase`` gets besides the session."""
    if service == "auth":
        from services.auth.settings import AuthSettings

        return AuthSettings.from_config(config)
    if service == "billing":
        from services.billing.settings import BillingSettings

        return BillingSettings.from_config(config)
    if service == "generation":
        from services.generation.settings import GenerationSettings

        return GenerationSettings.from_config(config)
    if service == "storage":
        return SimpleNamespace(backend=backend)  # its erase deletes through the store
    return None


def _candidates(auth_url: str, privacy_url: str) -> set[str]:
    """Every user id the restored databases name: the accounts, and the
    users of privacy requests (an erasure under way when the set was taken)."""
    found: set[str] = set()
    for url, query in ((auth_url, "SELECT id FROM users"),
                       (privacy_url, "SELECT DISTINCT user_id FROM privacy_requests "
                                     "WHERE user_id IS NOT NULL")):
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                # SQLite keeps UUIDs as 32 hex digits: the canonical form, as hashed
                found.update(str(parse_uuid(str(r[0]))) for r in conn.execute(text(query)))
        finally:
            engine.dispose()
    return found


def _stop_restored_jobs(db: Session, user_id: str) -> None:
    """No worker runs during a restore: a job restored as running is not
    running, and generation's erase (which waits for running jobs) may
    delete it. The caller commits."""
    from sqlalchemy import update

    from services.common.contracts.generation import JobState
    from services.generation.models import Job

    db.execute(update(Job).where(Job.user_id == trusted_id(user_id),
                                 Job.status == JobState.RUNNING)
               .values(status=JobState.FAILED).execution_options(synchronize_session=False))


def replay(urls: dict[str, str], configs: dict[str, dict], backend, erasure_log: dict[str, str],
           now: datetime | None = None) -> list[str]:
    """Erase again, in every restored database and the restored object store,
    each user whose keyed hash is in ``erasure_log``; add the whole log to the
    restored privacy database. Returns the user ids erased."""
    from services.common.contracts.privacy import PARTICIPANTS
    from services.privacy.models import ErasedSubject
    from services.privacy.own_data import erase as erase_privacy_data
    from services.privacy.requests import forget_erased
    from services.privacy.settings import PrivacySettings

    now = now or utcnow()
    key = PrivacySettings.from_config(configs["privacy"]).pseudonym_key
    erased = sorted(uid for uid in _candidates(urls["auth"], urls["privacy"])
                    if pseudonym(key, uid) in erasure_log)
    for service in PARTICIPANTS:
        if not erased:
            break
        module = __import__(f"services.{service}.privacy", fromlist=["erase"])
        settings = _settings(service, configs[service], backend)
        # its personal fields are read (auth: the address) with its own keys
        fieldcrypt.configure_from(configs[service])
        engine = make_engine(urls[service])
        try:
            with Session(engine) as db:
                for uid in erased:
                    if service == "generation":
                        _stop_restored_jobs(db, uid)
                    module.erase(db, settings, uid, now, True)
                db.commit()
        finally:
            engine.dispose()
    engine = make_engine(urls["privacy"])
    try:
        with Session(engine) as db:
            for uid in map(trusted_id, erased):
                erase_privacy_data(db, uid)
                forget_erased(db, key, uid, now)
            db.flush()
            known = set(db.scalars(select(ErasedSubject.subject)))
            for subject, at in erasure_log.items():
                if subject not in known:
                    db.add(ErasedSubject(subject=subject, erased_at=datetime.fromisoformat(
                        at.replace("Z", "+00:00"))))
            db.commit()
    finally:
        engine.dispose()
    return erased
