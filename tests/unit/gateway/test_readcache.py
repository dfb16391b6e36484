"""The gateway's read cache (gateway/readcache.py): when memory may answer, and
when it must not. The end-to-end side (two gunicorn workers, real services) is
tests/e2e/test_read_cache.py."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import uuid

import pytest

from gateway import readcache
from gateway.readcache import HostStamps, ReadCache, job_lifetime, users_in

USER = "01900000-0000-7000-8000-000000000001"
OTHER = "01900000-0000-7000-8000-000000000002"


class Listener:
    def __init__(self, connected=True):
        self.connected = connected

    def ensure_running(self):
        return self.connected


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(ttl=15.0, connected=True, stamps=None):
    clock = Clock()
    cache = ReadCache(ttl, stamps or HostStamps(slots=readcache.SLOTS), listener=Listener(connected),
                      clock=clock)
    return cache, clock


def loader(*values):
    calls = []
    it = iter(values)

    def load():
        calls.append(1)
        return next(it)

    return load, calls


def test_second_read_is_answered_from_memory_until_the_bound():
    cache, clock = make(ttl=15)
    load, calls = loader({"n": 1}, {"n": 2})
    assert cache.fetch("me", USER, None, load) == {"n": 1}
    clock.now += 14.9
    assert cache.fetch("me", USER, None, load) == {"n": 1}
    assert len(calls) == 1
    clock.now += 0.2  # 15.1 s after the RPC started
    assert cache.fetch("me", USER, None, load) == {"n": 2}
    assert len(calls) == 2


def test_the_entry_keeps_the_rendered_value_and_lifetime_sees_the_loaded_one():
    cache, clock = make(ttl=15)
    load, calls = loader({"n": 1}, {"n": 2})
    rendered, seen = [], []

    def render(value):
        rendered.append(value)
        return f"n={value['n']}".encode()

    def lifetime(value):
        seen.append(value)
        return 10

    assert cache.fetch("me", USER, None, load, lifetime, render) == b"n=1"
    assert cache.fetch("me", USER, None, load, lifetime, render) == b"n=1"  # a hit: not rendered
    assert len(calls) == 1 and rendered == [{"n": 1}] and seen == [{"n": 1}]
    clock.now += 10.1  # the value's own lifetime
    assert cache.fetch("me", USER, None, load, lifetime, render) == b"n=2"
    uncached, _ = make(connected=False)  # no consumer: loaded and rendered every time
    assert uncached.fetch("me", USER, None, loader({"n": 3})[0], lifetime, render) == b"n=3"


def test_nothing_is_kept_without_a_connected_consumer():
    cache, _ = make(connected=False)
    load, calls = loader(1, 2, 3)
    assert [cache.fetch("me", USER, None, load) for _ in range(3)] == [1, 2, 3]
    assert len(cache) == 0


def test_a_write_stamp_from_any_process_ends_the_entry():
    stamps = HostStamps()
    cache, _ = make(stamps=stamps)
    load, calls = loader("old", "new")
    cache.fetch("me", USER, None, load)

    # another worker (a fork sharing the stamps) handled the user's write
    proc = multiprocessing.get_context("fork").Process(target=stamps.bump, args=(USER,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0

    assert cache.fetch("me", USER, None, load) == "new"
    assert len(calls) == 2


def test_a_write_while_the_rpc_runs_leaves_nothing_stale():
    """The read took the stamp before its RPC; the write bumps it after its
    own RPC returned: the value read (maybe from before the write) is not served."""
    cache, _ = make()
    calls = []

    def load():
        calls.append(1)
        if len(calls) == 1:
            cache.wrote(USER)  # the write ends while this read's RPC is out
            return "before the write"
        return "after the write"

    assert cache.fetch("me", USER, None, load) == "before the write"
    assert cache.fetch("me", USER, None, load) == "after the write"


def test_an_event_while_the_rpc_runs_keeps_the_value_out():
    cache, _ = make()
    calls = []

    def load():
        calls.append(1)
        if len(calls) == 1:
            cache.invalidate(USER)  # the consumer takes the user's event meanwhile
        return len(calls)

    assert cache.fetch("balance", USER, None, load) == 1
    assert len(cache) == 0
    assert cache.fetch("balance", USER, None, load) == 2
    assert cache.fetch("balance", USER, None, load) == 2


def test_an_event_drops_that_users_entries_only():
    cache, _ = make()
    mine, my_calls = loader("a", "b")
    theirs, their_calls = loader("x", "y")
    cache.fetch("me", USER, None, mine)
    cache.fetch("me", OTHER, None, theirs)
    cache.invalidate(USER)
    assert cache.fetch("me", USER, None, mine) == "b"
    assert cache.fetch("me", OTHER, None, theirs) == "x"
    assert len(their_calls) == 1


def test_reconnection_drops_everything_and_a_read_in_flight():
    cache, _ = make()
    calls = []

    def load():
        calls.append(1)
        if len(calls) == 1:
            cache.clear()  # the consumer reconnected while this RPC ran
        return len(calls)

    assert cache.fetch("me", USER, None, load) == 1
    assert cache.fetch("me", USER, None, load) == 2
    assert cache.fetch("me", USER, None, load) == 2


def test_unreadable_stamps_mean_no_cache():
    class Broken:
        def read(self, user_id):
            raise OSError("redis is away")

        def bump(self, user_id):
            raise OSError("redis is away")

    cache, _ = make(stamps=Broken())
    load, calls = loader(1, 2)
    assert cache.fetch("me", USER, None, load) == 1
    assert cache.fetch("me", USER, None, load) == 2
    cache.wrote(USER)  # logged, never raised into the request


def test_lifetime_none_is_not_kept():
    cache, _ = make()
    load, calls = loader({"status": "running"}, {"status": "succeeded"})
    cache.fetch("job", USER, "j", load, job_lifetime)
    assert cache.fetch("job", USER, "j", load, job_lifetime) == {"status": "succeeded"}


def iso(seconds_from_now: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)).isoformat()


def test_job_lifetime_only_final_jobs_and_never_past_a_signed_url():
    assert job_lifetime({"status": "running", "output_urls": []}) is None
    assert job_lifetime({"status": "queued"}) is None
    assert job_lifetime({"status": "failed", "output_urls": []}) == float("inf")
    seconds = job_lifetime({"status": "succeeded", "output_urls": [
        {"url_expires_at": iso(600)}, {"url_expires_at": iso(5)}]})
    assert 3 < seconds <= 5
    assert job_lifetime({"status": "succeeded",
                         "output_urls": [{"url_expires_at": iso(-1)}]}) < 0


def test_a_job_entry_ends_with_its_earliest_url():
    cache, clock = make(ttl=15)
    job = {"status": "succeeded", "output_urls": [{"url_expires_at": iso(4)}]}
    load, calls = loader(job, {**job, "fresh": True})
    cache.fetch("job", USER, "j", load, job_lifetime)
    clock.now += 3
    assert "fresh" not in cache.fetch("job", USER, "j", load, job_lifetime)
    clock.now += 1.5  # past the URL's expiry, within the 15 s bound
    assert cache.fetch("job", USER, "j", load, job_lifetime)["fresh"] is True


def test_users_in_events():
    assert users_in({"user_id": USER, "email": "a@b"}) == [USER]
    assert users_in({"user_ids": [USER, OTHER]}) == [USER, OTHER]
    assert users_in({"owner_id": USER}) == [USER]
    assert users_in({"facts": []}) == []
    assert users_in(["not", "a", "dict"]) == []


def test_the_listener_clears_the_cache_on_events(monkeypatch):
    listener = readcache.EventListener("amqp://unused")
    cache = ReadCache(15, HostStamps(), listener=Listener())
    listener.cache = cache
    load, calls = loader(1, 2)
    cache.fetch("me", USER, None, load)
    listener._on_message({"user_id": USER, "event_id": "e"}, message=None)
    assert cache.fetch("me", USER, None, load) == 2


def test_a_new_policy_version_empties_the_cache_for_everyone():
    """privacy.policy_published names no user, yet changes every /v1/me (a
    material version asks everyone to accept it)."""
    from types import SimpleNamespace

    listener = readcache.EventListener("amqp://unused")
    cache = ReadCache(15, HostStamps(), listener=Listener())
    listener.cache = cache
    load, _ = loader(1, 2, 3, 4)
    assert cache.fetch("me", USER, None, load) == 1
    assert cache.fetch("me", OTHER, None, load) == 2
    other_event = SimpleNamespace(delivery_info={"exchange": "billing.events",
                                                 "routing_key": "policy_published"})
    listener._on_message({"policy_version": "v2", "material": True, "event_id": "e"}, other_event)
    assert cache.fetch("me", USER, None, load) == 1  # not privacy's: kept
    published = SimpleNamespace(delivery_info={"exchange": "privacy.events",
                                               "routing_key": "policy_published"})
    listener._on_message({"policy_version": "v2", "material": True, "event_id": "e"}, published)
    assert cache.fetch("me", USER, None, load) == 3
    assert cache.fetch("me", OTHER, None, load) == 4


def test_from_config_bound_is_the_credential_caches():
    cache = readcache.from_config({"AUTH_CACHE_SECONDS": 15, "AMQP_URI": "amqp://x",
                                   "RATELIMIT_STORAGE_URI": "memory://"})
    assert cache.ttl == 15 and isinstance(cache.stamps, HostStamps)
    assert readcache.from_config({"AUTH_CACHE_SECONDS": 90, "AMQP_URI": "amqp://x"}).ttl == 30
    assert readcache.from_config({"AUTH_CACHE_SECONDS": 15, "AMQP_URI": "amqp://x",
                                  "READ_CACHE_ENABLED": "false"}).ttl == 0
    redis_backed = readcache.from_config({"AUTH_CACHE_SECONDS": 15, "AMQP_URI": "amqp://x",
                                          "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0"})
    assert isinstance(redis_backed.stamps, readcache.RedisStamps)


def test_redis_stamps_shared_by_two_caches():
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/15")
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail("the test Redis (127.0.0.1:6379) is not running")
    a, _ = make(stamps=readcache.RedisStamps("", client=client))
    b, _ = make(stamps=readcache.RedisStamps("", client=client))
    user = str(uuid.uuid4())
    load_b, calls = loader("old", "new")
    b.fetch("me", user, None, load_b)
    a.wrote(user)  # another replica handled the write
    assert b.fetch("me", user, None, load_b) == "new"


# ------------------------------------------------------------------ the views, through Flask


@pytest.fixture
def cached_app(make_app):
    from tests.unit.gateway.conftest import BEARER

    app = make_app()
    stamps = HostStamps()
    app.extensions["darkroom"].read_cache = ReadCache(15, stamps, listener=Listener())
    return app, stamps, BEARER


def test_me_is_read_once_then_again_after_the_owners_patch(cached_app, auth):
    app, stamps, bearer = cached_app
    client = app.test_client()
    assert client.get("/v1/me", headers=bearer).status_code == 200
    assert client.get("/v1/me", headers=bearer).status_code == 200
    assert len(auth.called("get_user")) == 1
    before = stamps.read(USER)

    assert client.patch("/v1/me", json={"display_name": "Ada L."}, headers=bearer).status_code == 200
    assert stamps.read(USER)[0] == before[0] + 1  # every worker of the host sees it
    assert client.get("/v1/me", headers=bearer).status_code == 200
    assert len(auth.called("get_user")) == 2  # asked again: the fake keeps no profile


def test_a_hit_answers_the_body_of_the_miss_without_presenting_it_again(cached_app, monkeypatch):
    from gateway.api import common

    app, _, bearer = cached_app
    client = app.test_client()
    first = client.get("/v1/me", headers=bearer)
    presented = []
    real = common.present
    monkeypatch.setattr(common, "present", lambda *a: presented.append(a) or real(*a))
    second = client.get("/v1/me", headers=bearer)
    assert second.status_code == first.status_code == 200
    assert second.data == first.data and second.mimetype == "application/json"
    assert second.get_json()["id"] == USER and "policy" in second.get_json()
    assert presented == []
    app.extensions["darkroom"].read_cache.listener.connected = False  # no cache: the same body
    third = client.get("/v1/me", headers=bearer)
    assert third.data == first.data and presented[0][0].__name__ == "Me"  # presented again


def test_a_refused_credential_stamps_nothing(cached_app):
    app, stamps, _ = cached_app
    before = stamps.read(USER)
    response = app.test_client().patch("/v1/me", json={"display_name": "x"},
                                       headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert stamps.read(USER) == before


def test_a_write_without_a_credential_stamps_everyone_unless_it_changes_no_reads(cached_app, pool):
    from types import SimpleNamespace

    app, stamps, _ = cached_app
    pool.services["billing"] = SimpleNamespace(
        handle_stripe_webhook=lambda body, signature: {"received": True})
    client = app.test_client()
    before = stamps.read(OTHER)[1]
    client.post("/v1/auth/login", json={"email": "ada@example.com", "password": "x" * 12})
    assert stamps.read(OTHER)[1] == before
    refused = client.post("/v1/billing/webhooks/stripe", data=b"{" + b" " * 300_000 + b"}",
                          headers={"Content-Type": "application/json", "Stripe-Signature": "x"})
    assert refused.status_code == 413 and stamps.read(OTHER)[1] == before
    client.post("/v1/billing/webhooks/stripe", data=b"{}",
                headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=x"})
    assert stamps.read(OTHER)[1] == before + 1


def test_verify_email_stamps_the_verified_user_not_everyone(cached_app):
    app, stamps, _ = cached_app
    client = app.test_client()
    mine, everyone = stamps.read(USER)
    wrong = client.post("/v1/auth/verify-email", json={"email": "ada@example.com", "code": "000000"})
    assert wrong.status_code == 400 and stamps.read(USER) == (mine, everyone)
    ok = client.post("/v1/auth/verify-email", json={"email": "ada@example.com", "code": "123456"})
    assert ok.status_code == 200
    assert stamps.read(USER) == (mine + 1, everyone)

