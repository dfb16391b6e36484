"""Taking part in privacy requests is one protocol: every participating
service mixes in :class:`PrivacyParticipant` and its ``privacy`` module has
the same functions; the mixin's handlers answer only for the service named,
with the part's JSON or the erasure's counts, and commit once."""

from __future__ import annotations

import importlib
import inspect
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from services.common import contracts
from services.common.contracts.privacy import PARTICIPANTS
from services.common.privacy_parts import Erasure, ErasurePendingMirror, PrivacyParticipant

USER, REQUEST = uuid.uuid4(), uuid.uuid4()
AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def service_class(name: str):
    module = importlib.import_module(f"services.{name}.service")
    [cls] = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if c.__module__ == module.__name__ and getattr(c, "name", None) == name]
    return cls


@pytest.mark.parametrize("name", PARTICIPANTS)
def test_every_participant_takes_part_through_the_mixin_and_the_same_functions(name):
    cls = service_class(name)
    assert issubclass(cls, PrivacyParticipant)
    assert cls.privacy is importlib.import_module(f"services.{name}.privacy")
    module = cls.privacy
    assert isinstance(module.ABOUT, str) and module.ABOUT
    assert all(set(w) == {"what", "why"} for w in module.WITHHELD)
    assert list(inspect.signature(module.export).parameters)[0] == "db"
    assert len(inspect.signature(module.export).parameters) == 3
    assert list(inspect.signature(module.erase).parameters)[-2:] == ["now", "recheck"]
    assert len(inspect.signature(module.erase).parameters) == 5
    assert list(inspect.signature(module.retention_items).parameters) == ["settings"]
    # nobody writes the handlers again
    for handler in ("privacy_export_requested", "privacy_erasure_requested",
                    "retention_schedule"):
        assert handler not in vars(cls), f"{name} defines {handler} itself"


def test_the_services_that_refuse_spending_during_a_pending_erasure_share_its_handlers():
    for name in ("billing", "generation"):
        cls = service_class(name)
        assert issubclass(cls, ErasurePendingMirror)
        assert callable(cls.privacy.apply_erasure_pending)


class Demo(PrivacyParticipant, ErasurePendingMirror):
    """A participant whose privacy module is recorded calls."""

    name = "auth"  # any participant: its answer events must fit the contract

    def __init__(self, erasure: Erasure):
        self.calls, self.dispatched, self.commits = [], [], 0
        self.settings = SimpleNamespace(kind="settings")
        self.db = SimpleNamespace(commit=self._commit)
        self.erasure = erasure
        self.privacy = SimpleNamespace(
            ABOUT="about", WITHHELD=[{"what": "w", "why": "y"}],
            export=lambda db, settings, user_id: self._call("export", settings, user_id)
            or {"user": user_id},
            erase=lambda db, settings, user_id, now, recheck: self._call(
                "erase", settings, user_id, recheck) or self.erasure,
            retention_items=lambda settings: [{"data": "d", "settings": settings.kind}],
            apply_erasure_pending=lambda db, user_id, pending, at: self._call(
                "pending", user_id, pending, at))
        self.named = []

    def _call(self, *args):
        self.calls.append(args)

    def _commit(self):
        self.commits += 1

    def dispatch(self, event_type, payload):
        self.dispatched.append((event_type, payload))

    def dead_letters(self, *needles):
        self.named.append(needles)
        return 2


def test_the_export_handler_answers_only_when_named_with_the_modules_part():
    demo = Demo(Erasure({}))
    demo.privacy_export_requested({"request_id": REQUEST, "user_id": USER,
                                   "services": ["billing"]})
    assert demo.dispatched == [] and demo.commits == 0
    demo.privacy_export_requested({"request_id": REQUEST, "user_id": USER,
                                   "services": ["auth", "billing"]})
    [(event_type, payload)] = demo.dispatched
    assert event_type == "export_part_ready" and demo.commits == 1
    assert demo.calls == [("export", demo.settings, USER)]
    assert payload["data"] == {"user": str(USER)} and payload["service"] == "auth"
    assert (payload["about"], payload["withheld"]) == ("about", [{"what": "w", "why": "y"}])
    contracts.make_event("auth.export_part_ready", payload)  # fits the contract


def test_the_erasure_handler_counts_the_dead_letters_too_and_passes_the_recheck():
    demo = Demo(Erasure({"users": 1, "sessions": 3}, rows_pseudonymised=4, objects_deleted=5,
                        bytes_deleted=6, also_named=("a@example.com",)))
    demo.privacy_erasure_requested({"request_id": REQUEST, "user_id": USER,
                                    "services": ["auth"], "recheck": True})
    [(event_type, payload)] = demo.dispatched
    assert event_type == "erasure_completed" and demo.commits == 1
    assert demo.calls == [("erase", demo.settings, USER, True)]
    assert demo.named == [(USER, "a@example.com")]
    assert payload["tables"] == {"users": 1, "sessions": 3, "dead_letters": 2}
    assert (payload["rows_deleted"], payload["rows_pseudonymised"], payload["objects_deleted"],
            payload["bytes_deleted"], payload["recheck"]) == (6, 4, 5, 6, True)
    contracts.make_event("auth.erasure_completed", payload)


def test_the_schedule_and_the_pending_erasure_mirror_go_to_the_module():
    demo = Demo(Erasure({}))
    assert demo.retention_schedule() == {"items": [{"data": "d", "settings": "settings"}]}
    demo.privacy_erasure_scheduled({"user_id": USER, "occurred_at": AT})
    demo.privacy_erasure_cancelled({"user_id": USER, "occurred_at": AT})
    assert demo.calls == [("pending", USER, True, AT), ("pending", USER, False, AT)]
    assert demo.commits == 2
