"""services.common.queues: the arguments of every durable queue, classic or quorum."""

from __future__ import annotations

import importlib

import pytest
from amqp.exceptions import PreconditionFailed
from kombu import Exchange, Queue
from nameko.events import BROADCAST, SERVICE_POOL
from nameko.rpc import RPC_REPLY_QUEUE_TTL
from nameko.rpc import Rpc as NamekoRpc

from services.common import queues
from services.common.messaging import ReliableEventHandler, dead_letter_queue, retry_queue
from services.common.queues import (
    QueueTypeMismatch,
    Rpc,
    RpcConsumer,
    delivery_limit,
    queue_arguments,
    queue_type,
)

QUORUM = {"AMQP_QUEUE_TYPE": "quorum"}
EVT = "evt-auth-user_registered--notifications.on_registered"


def test_the_queue_type_defaults_to_classic_and_refuses_anything_else():
    assert queue_type({}) == "classic"
    assert queue_type({"AMQP_QUEUE_TYPE": " Quorum "}) == "quorum"
    with pytest.raises(ValueError, match="AMQP_QUEUE_TYPE must be one of classic, quorum"):
        queue_type({"AMQP_QUEUE_TYPE": "stream"})


def test_the_delivery_limit_defaults_to_20_and_must_be_positive():
    assert delivery_limit({}) == 20
    assert delivery_limit({"AMQP_DELIVERY_LIMIT": "5"}) == 5
    with pytest.raises(ValueError, match="AMQP_DELIVERY_LIMIT must be positive"):
        delivery_limit({"AMQP_DELIVERY_LIMIT": 0})


def test_classic_queues_keep_the_arguments_they_had():
    for name in ("rpc-auth", EVT, f"dlq.{EVT}"):
        assert queue_arguments(name, {}) == {}
    assert queue_arguments("darkroom.retry.1000ms", {}) == {
        "x-message-ttl": 1000, "x-dead-letter-exchange": ""}


def test_quorum_queues_and_the_event_queues_delivery_limit():
    assert queue_arguments("rpc-auth", QUORUM) == {"x-queue-type": "quorum"}
    assert queue_arguments(f"dlq.{EVT}", QUORUM) == {"x-queue-type": "quorum"}
    assert queue_arguments(EVT, {**QUORUM, "AMQP_DELIVERY_LIMIT": 3}) == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 3,
        "x-dead-letter-exchange": "darkroom.dead-letter",
        "x-dead-letter-routing-key": EVT,  # dlq.<queue> is bound with it
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert queue_arguments("darkroom.retry.60000ms", QUORUM) == {
        "x-queue-type": "quorum", "x-message-ttl": 60000, "x-dead-letter-exchange": "",
        "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def test_which_queues_are_darkrooms():
    for name in ("rpc-auth", EVT, f"dlq.{EVT}", "darkroom.retry.1000ms"):
        assert queues.is_darkroom_queue(name)
    for name in ("rpc.reply-standalone_rpc_proxy-1", "darkroom.retry.soon", "orders"):
        assert not queues.is_darkroom_queue(name)


def test_messaging_declares_its_queues_with_those_arguments():
    assert retry_queue(1000, QUORUM).queue_arguments["x-queue-type"] == "quorum"
    assert dead_letter_queue(EVT, QUORUM).queue_arguments == {"x-queue-type": "quorum"}
    assert dead_letter_queue(EVT).queue_arguments is None  # classic, as before


class _RefusingQueue:
    def __init__(self, queue):
        self.queue = queue

    def declare(self):
        raise PreconditionFailed("inequivalent arg 'x-queue-type'", (50, 10), "Queue.declare")


def test_a_refused_declaration_names_the_migration(monkeypatch):
    queue = queues.apply(Queue("rpc-auth", durable=True), QUORUM)
    monkeypatch.setattr(Queue, "__call__", lambda self, channel: _RefusingQueue(self))
    with pytest.raises(QueueTypeMismatch) as caught:
        queues.declare(queue, channel=object())
    message = str(caught.value)
    assert "'rpc-auth' as a quorum queue" in message
    assert "darkroom-ops queues migrate --to quorum" in message
    assert "docs/runbooks/quorum-queues.md" in message


class _Container:
    def __init__(self, config):
        self.config = {"AMQP_URI": "amqp://guest:guest@127.0.0.1:1/", **config}
        self.service_name = "notifications"
        self.shared_extensions = {}


def _declared(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(queues, "declare_all",
                        lambda uri, durable, exchanges=(): calls.append((durable, exchanges)))
    return calls


def test_the_rpc_consumer_declares_rpc_queue_quorum_at_setup(monkeypatch):
    calls = _declared(monkeypatch)
    container = _Container(QUORUM)  # extensions hold their container weakly
    consumer = RpcConsumer().bind(container)
    monkeypatch.setattr(consumer.queue_consumer, "register_provider", lambda provider: None)
    consumer.setup()
    assert consumer.queue.name == "rpc-notifications"
    assert consumer.queue.queue_arguments == {"x-queue-type": "quorum"}
    assert [q.name for q in calls[0][0]] == ["rpc-notifications"]
    assert issubclass(Rpc, NamekoRpc) and isinstance(Rpc.rpc_consumer, RpcConsumer)


@pytest.mark.parametrize("handler_type, quorum", [(SERVICE_POOL, True), (BROADCAST, False)])
def test_only_service_pool_event_queues_become_quorum(monkeypatch, handler_type, quorum):
    calls = _declared(monkeypatch)
    container = _Container(QUORUM)  # extensions hold their container weakly
    handler = ReliableEventHandler("auth", "user_registered", handler_type=handler_type,
                                   reliable_delivery=False).bind(container, "on_registered")
    monkeypatch.setattr(handler.queue_consumer, "register_provider", lambda provider: None)
    handler.setup()
    durable, exchanges = calls[0]
    names = [q.name for q in durable]
    assert names[0] == f"dlq.{handler.queue.name}"  # the dead-letter queue first
    assert (handler.queue in durable) is quorum
    assert (handler.queue.queue_arguments or {}).get("x-queue-type") == (
        "quorum" if quorum else None)
    assert all(isinstance(e, Exchange) for e in exchanges)


def test_services_reply_on_a_transient_queue(monkeypatch):
    """A reply queue must not be durable: on a cluster a durable classic queue whose
    node is down cannot be declared again anywhere (NOT_FOUND home node down), and a
    service reconnecting to another node would loop on it (tests/cluster)."""
    container = _Container(QUORUM)
    proxy = queues.RpcProxy("billing").bind(container, "billing")
    listener = proxy.rpc_reply_listener
    assert isinstance(listener, queues.ReplyListener)
    monkeypatch.setattr(listener.queue_consumer, "register_provider", lambda provider: None)
    listener.setup()
    assert listener.queue.name.startswith("rpc.reply-notifications-")
    assert listener.queue.durable is False
    assert listener.queue.queue_arguments == {"x-expires": RPC_REPLY_QUEUE_TTL}  # classic


@pytest.mark.parametrize("service", ["billing", "generation", "notifications", "privacy"])
def test_every_service_calling_others_uses_that_proxy(service):
    module = importlib.import_module(f"services.{service}.service")
    assert module.RpcProxy is queues.RpcProxy
