"""Who may call a service's operators' RPCs: services/common/operators.py asks
auth, and a service's own dead-letter queues are the only ones it touches
(services/common/dead_letters.py ``OwnQueues``), refused before any broker."""

from __future__ import annotations

import pytest

from services.common import operators
from services.common.dead_letters import OwnQueues
from services.common.errors import DomainError, admin_required
from tests.unit.common.test_spending import Reply

ADMIN = "01900000-0000-7000-8000-000000000009"


class FakeOperatorAuth:
    """``RpcProxy("auth")``: ``require_operator.call_async`` as nameko's proxy has it."""

    def __init__(self, answer, delay: float = 0.0):
        self.calls: list[tuple] = []
        self.answer, self.delay = answer, delay

    @property
    def require_operator(self):
        auth = self

        class Method:
            @staticmethod
            def call_async(*args):
                auth.calls.append(args)
                return Reply(auth.answer, auth.delay)

        return Method


def refusal(call, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(DomainError) as caught:
        call(*args, **kwargs)
    return caught.value.status, caught.value.code


def test_an_operator_is_who_auth_says():
    auth = FakeOperatorAuth({"user_id": ADMIN})
    assert operators.require_operator(auth, ADMIN) == ADMIN
    assert auth.calls == [(ADMIN,)]


def test_auths_refusal_passes_through_and_silence_is_503():
    assert refusal(operators.require_operator, FakeOperatorAuth(admin_required()), ADMIN) == (
        403, "admin_required")
    assert refusal(operators.require_operator, FakeOperatorAuth({"user_id": ADMIN}, delay=1.0),
                   ADMIN, timeout=0.05) == (503, "service_unavailable")


def test_only_the_services_own_dead_letter_queues():
    own = OwnQueues("amqp://nowhere:1//", ["evt-a--svc.a", "evt-b--svc.b"])
    assert own.resolve("evt-a--svc.a") == own.resolve("dlq.evt-a--svc.a") == "dlq.evt-a--svc.a"
    for other in ("evt-c--other.c", "dlq.evt-c--other.c", "dlq.broker", "", None, 3):
        assert refusal(own.resolve, other) == (404, "not_found")
        assert refusal(own.replay, other) == (404, "not_found")  # before any connection
    for bad in (0, -1, 10_001, 2.5, True, "3"):
        assert refusal(own.replay, "evt-a--svc.a", bad) == (400, "invalid_request")
