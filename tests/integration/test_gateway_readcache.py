"""The read cache's event consumer (gateway/readcache.py) against the real
RabbitMQ: an event published to a service's events exchange drops its
user's entries; when the broker closes the consumer's connection nothing is
answered from memory until it is back, and then the cache starts empty."""

from __future__ import annotations

import urllib.parse
import uuid

import requests
from kombu import Connection
from nameko.standalone.events import get_event_exchange

from gateway.readcache import EventListener, HostStamps, ReadCache
from tests.conftest import wait_for

USER = str(uuid.uuid4())


def publish(amqp_uri: str, service: str, routing_key: str, body: dict) -> None:
    with Connection(amqp_uri) as conn:
        conn.Producer().publish(body, exchange=get_event_exchange(service, {}),
                                routing_key=routing_key, serializer="json", declare=[
                                    get_event_exchange(service, {})])


def listener_connections(mgmt: str, vhost: str) -> list[str]:
    quoted = urllib.parse.quote(vhost, safe="")
    found = requests.get(f"{mgmt}/api/vhosts/{quoted}/connections", timeout=10)
    found.raise_for_status()
    return [c["name"] for c in found.json()]


def counter():
    calls = []

    def load():
        calls.append(1)
        return len(calls)

    return load, calls


def test_events_and_a_lost_connection(make_vhost, rabbit_server):
    _, mgmt = rabbit_server
    amqp_uri, vhost = make_vhost("readcache")
    listener = EventListener(amqp_uri)
    cache = ReadCache(15, HostStamps(), listener=listener)
    listener.cache = cache
    try:
        wait_for(cache.live, 30, 0.1, "the consumer connected")
        load, calls = counter()
        assert cache.fetch("balance", USER, None, load) == 1
        assert cache.fetch("balance", USER, None, load) == 1  # from memory

        # an event of another user changes nothing; one of this user drops the entry
        publish(amqp_uri, "billing", "credits_captured", {"user_id": str(uuid.uuid4())})
        publish(amqp_uri, "billing", "credits_captured", {"user_id": USER})
        wait_for(lambda: cache.fetch("balance", USER, None, load) == 2, 30, 0.05,
                 "the event to drop the entry")
        assert cache.fetch("balance", USER, None, load) == 2

        # the broker closes the consumer's connection: memory answers nothing
        names = wait_for(lambda: listener_connections(mgmt, vhost), 30, 0.2, "the connection")
        for name in names:
            requests.delete(f"{mgmt}/api/connections/{urllib.parse.quote(name, safe='')}",
                            timeout=10).raise_for_status()
        wait_for(lambda: not listener.connected, 30, 0.05, "the consumer to notice")
        before = len(calls)
        cache.fetch("balance", USER, None, load)
        cache.fetch("balance", USER, None, load)
        assert len(calls) == before + 2  # both asked the service

        # it reconnects on its own, with the cache emptied
        wait_for(lambda: listener.connections >= 2 and cache.live(), 30, 0.1, "reconnected")
        assert len(cache) == 0
        first = cache.fetch("balance", USER, None, load)
        assert cache.fetch("balance", USER, None, load) == first
    finally:
        listener.stop()
