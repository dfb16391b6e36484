"""services.common.spending: spending needs a verified address, as auth says it."""

from __future__ import annotations

import eventlet
import pytest

from services.common import spending
from services.common.errors import DomainError

USER = "01900000-0000-7000-8000-000000000001"


class Reply:
    def __init__(self, answer, delay: float = 0.0):
        self.answer, self.delay = answer, delay

    def result(self):
        if self.delay:
            eventlet.sleep(self.delay)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FakeAuth:
    """``RpcProxy("auth")``: ``<method>.call_async`` as nameko's proxy has it
    (``get_user`` here, ``require_operator`` in test_operators.py), answering
    ``answer`` after ``delay``."""

    def __init__(self, answer, delay: float = 0.0):
        self.calls: list[tuple] = []
        self.answer, self.delay = answer, delay

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        auth = self

        class Method:
            @staticmethod
            def call_async(*args):
                auth.calls.append(args)
                return Reply(auth.answer, auth.delay)

        return Method


def test_a_verified_address_may_spend():
    auth = FakeAuth({"id": USER, "email_verified": True})
    assert spending.require_verified(auth, USER) is None
    assert auth.calls == [(USER,)]


@pytest.mark.parametrize("user", [{"id": USER, "email_verified": False}, {"id": USER}])
def test_an_unverified_address_is_403_email_unverified(user):
    with pytest.raises(DomainError) as caught:
        spending.require_verified(FakeAuth(user), USER)
    assert (caught.value.status, caught.value.code) == (403, "email_unverified")


def test_auths_refusal_passes_through():
    with pytest.raises(DomainError) as caught:
        spending.require_verified(FakeAuth(DomainError("not_found", "user not found", 404)), USER)
    assert (caught.value.status, caught.value.code) == (404, "not_found")


def test_no_answer_in_time_is_503():
    with pytest.raises(DomainError) as caught:
        spending.require_verified(FakeAuth({"email_verified": True}, delay=1.0), USER,
                                  timeout=0.05)
    assert (caught.value.status, caught.value.code) == (503, "service_unavailable")


def test_the_two_step_check_asks_at_once_and_answers_the_same_each_time():
    auth = FakeAuth({"id": USER, "email_verified": False})
    check = spending.VerifiedCheck(auth, USER)
    assert auth.calls == [(USER,)]  # the question left before any waiting
    for _ in range(2):
        with pytest.raises(DomainError) as caught:
            check()
        assert caught.value.code == "email_unverified"
    assert auth.calls == [(USER,)]
    check.close()


def test_the_two_step_check_of_a_verified_address_passes():
    check = spending.VerifiedCheck(FakeAuth({"id": USER, "email_verified": True}), USER)
    assert check() is None and check() is None


def test_a_two_step_check_never_waited_for_is_forgotten():
    forgotten = []

    class Listener:
        _reply_events: dict = {}

    auth = FakeAuth({"email_verified": True})
    auth.reply_listener = Listener()
    check = spending.VerifiedCheck(auth, USER)
    reply = check._pending.reply
    reply.reply_event = object()
    Listener._reply_events = {"cid": reply.reply_event}
    check.close()
    forgotten.append(Listener._reply_events)
    assert forgotten == [{}]
