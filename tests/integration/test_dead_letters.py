"""Dead letters that name an erased user are removed from the dead-letter
queues on a real RabbitMQ (a vhost of its own); the others stay, in order,
with their headers."""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Connection, Producer

from services.common.dead_letters import remove_naming
from services.common.messaging import dead_letter_exchange, dead_letter_queue, dlq_name

pytestmark = pytest.mark.integration

QUEUES = ("evt-billing-order_paid--notifications.order_paid",
          "evt-privacy-consent_changed--notifications.consent_changed")


@pytest.fixture
def amqp(make_vhost):
    amqp_uri, _ = make_vhost("dead-letters")
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        for queue in QUEUES:
            dead_letter_queue(queue)(channel).declare()
        channel.close()
    return amqp_uri


def dead_letter(amqp_uri: str, queue: str, body: dict, headers: dict | None = None) -> None:
    with Connection(amqp_uri) as conn:
        producer = Producer(conn.channel(), exchange=dead_letter_exchange())
        producer.publish(json.dumps(body), routing_key=queue, content_type="application/json",
                         headers={"x-darkroom-error": "boom", **(headers or {})})


def drain(amqp_uri: str, queue: str) -> list:
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        found = []
        while (message := channel.basic_get(dlq_name(queue), no_ack=True)) is not None:
            found.append((json.loads(message.body), message.headers))
        channel.close()
        return found


def test_only_the_dead_letters_naming_the_user_are_removed(amqp):
    ada, bob = str(uuid.uuid4()), str(uuid.uuid4())
    first, second = QUEUES
    dead_letter(amqp, first, {"user_id": bob, "n": 1})
    dead_letter(amqp, first, {"user_id": ada, "order_id": "o-1"})
    dead_letter(amqp, first, {"email": "Ada@Example.com", "n": 2})  # her address, another case
    dead_letter(amqp, first, {"user_id": bob, "n": 3})
    dead_letter(amqp, second, {"n": 4}, headers={"nameko.user_id": ada})  # named in a header
    dead_letter(amqp, second, {"user_id": bob, "n": 5}, headers={"nameko.correlation_id": "c-5"})

    assert remove_naming(amqp, [*QUEUES, "evt-no-such-queue"], [ada, "ada@example.com"]) == 3
    left = drain(amqp, first)
    assert [body["n"] for body, _ in left] == [1, 3]  # in their order
    ((body, headers),) = drain(amqp, second)
    assert body["n"] == 5 and headers["nameko.correlation_id"] == "c-5"
    # nothing names her any more; nothing to do twice
    assert remove_naming(amqp, QUEUES, [ada, "ada@example.com"]) == 0
    assert remove_naming(amqp, QUEUES, []) == 0
