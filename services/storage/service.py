"""The storage service: every stored file (uploads, generated outputs, export
archives), its metadata, and the retention that deletes it.

Entrypoints are thin: load the payload through its contract, call the domain
modules (:mod:`objects`, :mod:`retention`), dispatch events (into the outbox,
in the same transaction), commit, dump the answer through its contract.

    nameko run --config deploy/config/storage.yaml services.storage.service:StorageService
"""

from __future__ import annotations

import logging
from pathlib import Path

from nameko.extensions import DependencyProvider
from sqlalchemy.orm import Session

from services.common import privacy_parts as parts
from services.common.contracts import load_rpc
from services.common.contracts import privacy as privacy_contracts
from services.common.contracts import storage as c
from services.common.db import Database, claim_event
from services.common.errors import DomainError
from services.common.ids import utcnow
from services.common.messaging import EventPublisher, event_handler
from services.common.privacy_parts import PrivacyParticipant
from services.common.queues import rpc
from services.common.service import DarkroomService, FromConfig
from services.common.timers import timer
from services.storage import images, objects, retention
from services.storage import privacy as privacy_data
from services.storage.backends import Backend, make_backend
from services.storage.models import outbox, processed_events
from services.storage.settings import StorageSettings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
PURGE_INTERVAL_SECONDS = 60
ORPHAN_SWEEP_INTERVAL_SECONDS = 3600


class ObjectStore(DependencyProvider):
    """The configured backend (``self.store.backend``), made ready when the
    service starts: bucket or directory created, and for s3 the safety
    lifecycle rule set one day past the longest retention any owner has."""

    def setup(self):
        self.settings = StorageSettings.from_config(self.container.config)
        self.backend: Backend = make_backend(self.settings)
        self.safety_expiry_days = 0

    def start(self):
        database = next(d for d in self.container.dependencies if isinstance(d, Database))
        with Session(database.engine) as session:
            longest = retention.longest_plan_retention(session)
        self.ensure_covers(longest)

    def ensure_covers(self, retention_days: int | None) -> None:
        """Make sure the safety expiry comes after ``retention_days``."""
        days = self.settings.safety_expiry_days(retention_days)
        if days > self.safety_expiry_days:
            self.backend.ensure_ready(days)
            self.safety_expiry_days = days

    def get_dependency(self, worker_ctx):
        return self


def decode_gate(config) -> images.DecodeGate:
    settings = StorageSettings.from_config(config)
    return images.DecodeGate(settings.max_concurrent_decodes, settings.decode_wait_seconds)


class StorageService(PrivacyParticipant, DarkroomService):
    name = "storage"
    privacy = privacy_data  # its part of privacy requests

    db = Database(migrations=MIGRATIONS)
    state_metrics = staticmethod(retention.state_metrics)  # gauges read at each scrape
    dispatch = EventPublisher(outbox=outbox)
    settings = FromConfig(StorageSettings.from_config)
    store = ObjectStore()
    # the process's bound on images decoded at once (made at start: a green semaphore)
    decodes = FromConfig(decode_gate)

    def _url_view(self, obj) -> dict:
        return c.ImageObject().dump(objects.view_with_url(self.store.backend, self.settings, obj))

    # ------------------------------------------------------------ user uploads

    @rpc(expected_exceptions=DomainError)
    def create_upload_slot(self, owner_id) -> dict:
        slot = objects.create_upload_slot(self.db, self.store.backend, self.settings, owner_id, utcnow())
        self.db.commit()
        return c.UploadSlot().dump(slot)

    @rpc(expected_exceptions=DomainError)
    def finish_upload(self, owner_id, upload_id) -> dict:
        obj, staged = objects.finish_upload(
            self.db, self.store.backend, self.settings, owner_id, upload_id, utcnow(),
            decodes=self.decodes,
        )
        self.db.commit()
        if staged:
            try:
                self.store.backend.delete_many([staged])
            except Exception:  # the orphan sweep removes it later
                log.exception("could not delete a finished staging upload")
        log.info("upload stored", extra={"object_id": str(obj.id), "size": obj.size})
        return self._url_view(obj)

    # ------------------------------------------------------------ outputs

    @rpc(expected_exceptions=DomainError)
    def create_output_slot(self, owner_id, payload) -> dict:
        data = load_rpc(c.OutputSlotRequest, payload)
        slot = objects.create_output_slot(
            self.db, self.store.backend, self.settings, owner_id, data, utcnow()
        )
        self.db.commit()
        return c.OutputSlot().dump(slot)

    @rpc(expected_exceptions=DomainError)
    def commit_objects(self, owner_id, object_ids) -> dict:
        rows = objects.commit_objects(
            self.db, self.store.backend, self.settings, owner_id, object_ids, utcnow()
        )
        self.db.commit()
        return {"items": [self._url_view(obj) for obj in rows]}

    # ------------------------------------------------------------ gallery

    @rpc(expected_exceptions=DomainError)
    def get_object(self, owner_id, object_id) -> dict:
        return self._url_view(objects.get_visible(self.db, owner_id, object_id, utcnow()))

    @rpc(expected_exceptions=DomainError)
    def get_source(self, owner_id, object_id) -> dict:
        """An object of the owner's that a service reads (a job's source
        image), with a download URL on the service network; 404 otherwise."""
        obj = objects.get_visible(self.db, owner_id, object_id, utcnow())
        return c.ImageObject().dump(objects.source_view(self.store.backend, self.settings, obj))

    @rpc(expected_exceptions=DomainError)
    def get_public_object(self, public_id) -> dict:
        """A public object by its public id (the ``public_id`` its owner sees)."""
        obj = objects.get_public(self.db, public_id, utcnow())
        return c.PublicImageObject().dump(objects.public_view(self.store.backend, self.settings, obj))

    @rpc(expected_exceptions=DomainError)
    def list_objects(self, owner_id, query=None) -> dict:
        data = load_rpc(c.ImageQuery, query)
        rows, next_cursor = objects.list_objects(self.db, owner_id, data, utcnow())
        items = [objects.view_with_url(self.store.backend, self.settings, obj) for obj in rows]
        return c.ImagePage().dump({"items": items, "next_cursor": next_cursor})

    @rpc(expected_exceptions=DomainError)
    def sign_outputs(self, owner_id, payload) -> dict:
        """Signed download URLs of the owner's objects among ``object_ids``
        (a page of jobs' outputs at once); others are left out."""
        data = load_rpc(c.SignOutputs, payload)
        items = objects.signed_urls(self.db, self.store.backend, self.settings, owner_id,
                                    data["object_ids"], utcnow())
        return {"items": c.OutputUrl(many=True).dump(items)}

    @rpc(expected_exceptions=DomainError)
    def owners_between(self, window) -> dict:
        """For a breach (privacy): ``{owner_id: objects}`` of the objects
        stored at some time within ``window`` (``{"from", "to"}``)."""
        data = load_rpc(privacy_contracts.Window, window)
        found = objects.owners_between(self.db, data["window_from"], data["window_to"])
        return found

    @rpc(expected_exceptions=DomainError)
    def set_visibility(self, owner_id, object_id, payload) -> dict:
        data = load_rpc(c.SetVisibility, payload)
        obj = objects.set_visibility(self.db, self.store.backend, owner_id, object_id,
                                     data["visibility"], utcnow())
        self.db.commit()
        return self._url_view(obj)

    @rpc(expected_exceptions=DomainError)
    def delete_object(self, owner_id, object_id) -> None:
        obj = objects.delete_object(self.db, self.store.backend, owner_id, object_id, utcnow())
        self.db.commit()
        log.info("object deleted", extra={"object_id": str(obj.id)})
        return None

    # ------------------------------------------------------------ privacy

    def privacy_deps(self) -> ObjectStore:
        return self.store  # the privacy module's export and erase use the backend

    def privacy_store(self, event: dict) -> parts.Store:
        """A big export part is stored here, as an export object of the user's
        (the privacy service reads it back)."""
        now = utcnow()

        def store(blob: bytes):
            return objects.store_export(self.db, self.store.backend, self.settings,
                                        event["user_id"], event["request_id"], blob, now).id

        return store

    # ------------------------------------------------------------ retention

    @event_handler("billing", "plan_changed")
    def plan_changed(self, event: dict) -> None:
        """Keep the plan's retention for the user's objects, old and new."""
        if not claim_event(self.db, processed_events, event["event_id"], "storage.plan_changed"):
            return
        moved = retention.apply_plan_change(
            self.db, event["user_id"], event["plan"], event["retention_days"], event["occurred_at"]
        )
        # before the commit: if the lifecycle rule cannot be moved, the event is retried
        self.store.ensure_covers(event["retention_days"])
        self.db.commit()
        log.info("plan retention applied", extra={
            "user_id": str(event["user_id"]), "retention_days": event["retention_days"],
            "objects": moved, "stale": moved is None,
        })

    @rpc(expected_exceptions=DomainError)
    def purge_expired(self, payload=None) -> dict:
        data = load_rpc(c.PurgeRequest, payload)
        result = retention.purge_expired(
            self.db, self.store.backend, self.settings, utcnow(), self.dispatch,
            batch_size=data["batch_size"], dry_run=data["dry_run"],
            **({"max_batches": data["max_batches"]} if data["max_batches"] else {}),
        )
        log.info("purge requested", extra=result)
        return result

    @timer("storage.purge", PURGE_INTERVAL_SECONDS, once=False)  # rows claimed
    def purge_timer(self) -> dict:
        """Purge expired objects, batch after batch, up to a bound per tick."""
        result = retention.purge_expired(
            self.db, self.store.backend, self.settings, utcnow(), self.dispatch,
            max_batches=retention.MAX_BATCHES_PER_TICK,
        )
        if result["objects"]:
            log.info("retention purge", extra=result)
        return result

    @timer("storage.orphan_sweep", ORPHAN_SWEEP_INTERVAL_SECONDS,
           once=False)  # its transaction holds the lock (retention.sweep_orphans)
    def orphan_timer(self) -> None:
        self.sweep_orphans()

    @rpc(expected_exceptions=DomainError)
    def sweep_orphans(self) -> dict:
        """Delete orphaned bytes now (the timer does it every hour):
        ``{"objects", "bytes", "batch_id"}`` (zeros when another instance is sweeping)."""
        result = retention.sweep_orphans(self.db, self.store.backend, self.settings, utcnow())
        if result is None:
            return {"objects": 0, "bytes": 0, "batch_id": None}
        return {"objects": result.objects, "bytes": result.bytes,
                "batch_id": str(result.batch_id) if result.batch_id else None}

    @rpc(expected_exceptions=DomainError)
    def report(self) -> dict:
        return retention.report(self.db, utcnow())
