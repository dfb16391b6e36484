"""Routes, retries with backoff, circuit breakers and failover, on a fake clock."""

from __future__ import annotations

from collections import deque

import pytest

from services.common.contracts.generation import JOB_TYPES
from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderOutput,
    ProviderRequest,
    ProviderResult,
    TransientProviderError,
)
from services.generation.providers.local import LocalProvider
from services.generation.providers.router import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerPolicy,
    CircuitBreaker,
    ProviderConfigError,
    RetryPolicy,
    Router,
    build_router,
)

REQUEST = ProviderRequest("text-to-image", "a kite over the dunes", seed=1)


class Clock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Scripted:
    """A provider that plays its script (exceptions or "ok"), then succeeds."""

    def __init__(self, name: str, *script, job_types=JOB_TYPES):
        self.name = name
        self.job_types = frozenset(job_types)
        self.script = deque(script)
        self.calls = 0

    def generate(self, request, progress=None):
        self.calls += 1
        outcome = self.script.popleft() if self.script else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        if progress:
            progress(1.0, "done")
        return ProviderResult((ProviderOutput(self.name.encode(), "image/png", 1, 1),))


def transient(code="provider_server_error", **kw):
    return TransientProviderError(code, **kw)


def router(*providers, attempts=3, failures=5, cooldown=60.0, clock=None, routes=None):
    clock = clock or Clock()
    names = [p.name for p in providers]
    return Router({p.name: p for p in providers},
                  routes or {"text-to-image": names},
                  RetryPolicy(attempts, base_delay_s=0.5, max_delay_s=3.0),
                  BreakerPolicy(failures, cooldown), clock=clock, sleep=clock.sleep), clock


# ------------------------------------------------------------------ retries and failover


def test_the_first_provider_that_succeeds_is_named_in_the_result():
    first = Scripted("first")
    r, _ = router(first, Scripted("second"))
    routed = r.run(REQUEST)
    assert routed.provider == "first" and routed.result.outputs[0].data == b"first"
    assert [(a.provider, a.code) for a in routed.attempts] == [("first", None)]


def test_transient_errors_are_retried_with_exponential_backoff():
    flaky = Scripted("flaky", transient(), transient("provider_timeout"))
    r, clock = router(flaky, attempts=3)
    routed = r.run(REQUEST)
    assert routed.provider == "flaky" and flaky.calls == 3
    assert clock.sleeps == [0.5, 1.0]
    assert [a.code for a in routed.attempts] == ["provider_server_error", "provider_timeout", None]


def test_backoff_is_capped_and_respects_retry_after_within_the_cap():
    policy = RetryPolicy(attempts=6, base_delay_s=0.5, max_delay_s=3.0)
    assert [policy.delay(i) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(0, retry_after=2.0) == 2.0
    assert policy.delay(0, retry_after=60.0) == 3.0
    limited = Scripted("limited", transient("provider_rate_limited", retry_after=2.5))
    r, clock = router(limited)
    r.run(REQUEST)
    assert clock.sleeps == [2.5]


def test_after_the_last_attempt_the_next_provider_is_tried():
    down = Scripted("down", *[transient() for _ in range(3)])
    backup = Scripted("backup")
    r, clock = router(down, backup, attempts=3)
    routed = r.run(REQUEST)
    assert routed.provider == "backup"
    assert down.calls == 3 and backup.calls == 1
    assert clock.sleeps == [0.5, 1.0]  # no sleep before failing over


def test_a_permanent_error_is_not_retried_but_fails_over():
    picky = Scripted("picky", PermanentProviderError("provider_rejected_request"))
    backup = Scripted("backup")
    r, clock = router(picky, backup)
    routed = r.run(REQUEST)
    assert routed.provider == "backup" and picky.calls == 1 and clock.sleeps == []


def test_when_all_fail_transiently_the_error_is_provider_unavailable():
    a = Scripted("a", *[transient() for _ in range(2)])
    b = Scripted("b", *[transient("provider_timeout") for _ in range(2)])
    r, _ = router(a, b, attempts=2)
    with pytest.raises(TransientProviderError) as caught:
        r.run(REQUEST)
    assert caught.value.code == "provider_unavailable"
    assert [(x.provider, x.code) for x in caught.value.attempts] == [
        ("a", "provider_server_error"), ("a", "provider_server_error"),
        ("b", "provider_timeout"), ("b", "provider_timeout")]


def test_when_all_fail_and_one_refused_the_error_is_the_refusal():
    a = Scripted("a", PermanentProviderError("provider_rejected_request", "no"))
    b = Scripted("b", *[transient() for _ in range(3)])
    r, _ = router(a, b)
    with pytest.raises(PermanentProviderError) as caught:
        r.run(REQUEST)
    assert caught.value.code == "provider_rejected_request"


def test_a_content_refusal_stops_the_route_without_failover():
    assert CONTENT_REFUSED == "content_refused"
    down = Scripted("down", *[transient() for _ in range(3)])
    strict = Scripted("strict", PermanentProviderError(CONTENT_REFUSED, "no"))
    backup = Scripted("backup")
    r, clock = router(down, strict, backup)
    with pytest.raises(PermanentProviderError) as caught:
        r.run(REQUEST)
    assert caught.value.code == "content_refused"
    assert strict.calls == 1 and backup.calls == 0  # the backup is never asked
    assert [(x.provider, x.code) for x in caught.value.attempts][-1] == ("strict",
                                                                          "content_refused")
    assert r.breakers["strict"].state == CLOSED  # a refusal proves the vendor is up


def test_a_job_type_without_a_route_is_unavailable():
    r, _ = router(Scripted("a"))
    assert r.supports("text-to-image") and not r.supports("image-to-video")
    with pytest.raises(PermanentProviderError) as caught:
        r.run(ProviderRequest("image-to-video", "p"))
    assert caught.value.code == "job_type_unavailable"


def test_progress_reaches_the_caller():
    seen = []
    r, _ = router(Scripted("a"))
    r.run(REQUEST, lambda fraction, stage: seen.append((fraction, stage)))
    assert seen == [(1.0, "done")]


def test_an_unexpected_exception_propagates():
    r, _ = router(Scripted("buggy", KeyError("oops")), Scripted("b"))
    with pytest.raises(KeyError):
        r.run(REQUEST)


# ------------------------------------------------------------------ circuit breaker


def test_the_breaker_opens_after_k_failures_and_the_provider_is_skipped():
    down = Scripted("down", *[transient() for _ in range(10)])
    backup = Scripted("backup")
    r, clock = router(down, backup, attempts=2, failures=3, cooldown=30)
    r.run(REQUEST)  # 2 failures
    routed = r.run(REQUEST)  # 3rd failure opens the breaker: no 4th try
    assert down.calls == 3 and r.breaker_states()["down"] == OPEN
    assert [(a.provider, a.code) for a in routed.attempts] == [
        ("down", "provider_server_error"), ("backup", None)]
    calls_before = down.calls
    routed = r.run(REQUEST)
    assert down.calls == calls_before  # skipped while open
    assert [(a.provider, a.code) for a in routed.attempts] == [("down", "circuit_open"),
                                                              ("backup", None)]


def test_after_the_cooldown_one_probe_goes_through_and_failure_reopens():
    down = Scripted("down", *[transient() for _ in range(10)])
    r, clock = router(down, Scripted("backup"), attempts=3, failures=1, cooldown=30)
    r.run(REQUEST)
    assert down.calls == 1 and r.breaker_states()["down"] == OPEN
    clock.now += 29
    r.run(REQUEST)
    assert down.calls == 1
    clock.now += 1
    r.run(REQUEST)  # half-open: exactly one probe, which fails
    assert down.calls == 2 and r.breaker_states()["down"] == OPEN
    r.run(REQUEST)
    assert down.calls == 2  # a fresh cooldown


def test_a_successful_probe_closes_the_breaker():
    down = Scripted("down", transient())
    r, clock = router(down, Scripted("backup"), failures=1, cooldown=10)
    r.run(REQUEST)
    clock.now += 10
    assert r.run(REQUEST).provider == "down"
    assert r.breaker_states()["down"] == CLOSED


def test_a_half_open_breaker_lets_a_single_probe_through():
    clock = Clock()
    breaker = CircuitBreaker(BreakerPolicy(failures=1, cooldown_s=5), clock)
    breaker.failure()
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow()  # a second caller while the probe runs
    breaker.success()
    assert breaker.allow() and breaker.allow()


def test_a_permanent_error_counts_as_proof_of_life():
    picky = Scripted("picky", transient(), PermanentProviderError("provider_rejected_request"),
                     transient())
    r, _ = router(picky, attempts=1, failures=2)
    codes = []
    for _ in range(3):
        with pytest.raises((TransientProviderError, PermanentProviderError)) as caught:
            r.run(REQUEST)
        codes.append(caught.value.code)
    assert codes == ["provider_unavailable", "provider_rejected_request", "provider_unavailable"]
    assert r.breaker_states()["picky"] == CLOSED  # never two transient failures in a row
    assert picky.calls == 3


def test_a_probe_that_crashes_does_not_leave_the_breaker_stuck():
    crashing = Scripted("crashing", transient(), RuntimeError("bug"))
    r, clock = router(crashing, failures=1, cooldown=5, attempts=1)
    with pytest.raises(TransientProviderError):
        r.run(REQUEST)
    clock.now += 5
    with pytest.raises(RuntimeError):
        r.run(REQUEST)
    clock.now += 5
    assert r.run(REQUEST).provider == "crashing"


# ------------------------------------------------------------------ configuration


def test_the_default_configuration_routes_everything_to_local():
    r = build_router({})
    assert set(r.routes) == set(JOB_TYPES)
    assert all(names == ("local",) for names in r.routes.values())
    assert isinstance(r.providers["local"], LocalProvider)


def test_a_full_configuration_builds_each_adapter_and_its_routes():
    config = {
        "providers": {
            "local": {"type": "local", "video_fps": 8},
            "openai": {"type": "openai_images", "base_url": "http://images.example",
                       "api_key": "k", "model": "m", "timeout_s": 5},
            "video": {"type": "async_task", "base_url": "http://video.example",
                      "poll_interval_s": 1, "task_timeout_s": 60},
            "spare": {"type": "openai_images", "base_url": "http://x.example", "enabled": "false"},
        },
        "routes": {"text-to-image": ["openai", "spare", "local"], "image-to-video": "video,local"},
        "retry": {"attempts": 2, "base_delay_s": 1, "max_delay_s": 4},
        "breaker": {"failures": 3, "cooldown_s": 20},
    }
    r = build_router(config)
    assert r.routes == {"text-to-image": ("openai", "local"), "image-to-video": ("video", "local")}
    assert r.retry == RetryPolicy(2, 1.0, 4.0)
    assert r.breakers["openai"].policy == BreakerPolicy(3, 20.0)
    assert r.providers["openai"].http.timeout_s == 5
    assert r.providers["local"].settings.video_fps == 8
    assert "spare" not in r.providers


def test_without_routes_each_type_goes_to_every_capable_provider_in_order():
    r = build_router({"providers": {
        "openai": {"type": "openai_images", "base_url": "http://images.example"},
        "local": {"type": "local"}}})
    assert r.routes["text-to-image"] == ("openai", "local")
    assert r.routes["image-to-video"] == ("local",)


@pytest.mark.parametrize("config, message", [
    ({"providers": {"x": {"type": "dalle"}}}, "unknown type"),
    ({"providers": {"Bad Name": {"type": "local"}}}, "not a valid name"),
    ({"providers": {"o": {"type": "openai_images"}}}, "base_url"),
    ({"providers": {"o": {"type": "openai_images", "base_url": "ftp://x"}}}, "base_url"),
    ({"providers": {"local": {"type": "local"}}, "routes": {"text-to-image": ["nope"]}},
     "unknown provider"),
    ({"providers": {"o": {"type": "openai_images", "base_url": "http://x"}},
      "routes": {"image-to-video": ["o"]}}, "cannot run"),
    ({"routes": {"text-to-music": ["local"]}}, "unknown job type"),
    ({"routes": {"text-to-image": ["local", "local"]}}, "listed twice"),
    ({"retry": {"attempts": 0}}, "attempts"),
    ({"breaker": {"failures": "many"}}, "many"),
])
def test_a_configuration_that_cannot_work_is_refused_at_start(config, message):
    with pytest.raises(ProviderConfigError, match=message):
        build_router(config)


@pytest.mark.parametrize("config, message", [
    ({"providers": {"local": {"type": "local", "max_concurrency": 0}}},
     "providers.local: max_concurrency"),
    ({"providers": {"local": {"type": "local", "max_concurrency": "lots"}}}, "max_concurrency"),
    ({"providers": {"local": {"type": "local", "region": ["cn"]}}}, "providers.local: region"),
    ({"providers": {"o": {"type": "openai_images", "base_url": "http://x", "timeout_s": "x"}}},
     "providers.o:"),
])
def test_validation_errors_name_the_provider(config, message):
    with pytest.raises(ProviderConfigError, match=message):
        build_router(config)


def test_an_unknown_type_lists_the_known_ones():
    with pytest.raises(ProviderConfigError, match=r"providers\.x: unknown type 'dalle' \(local, "):
        build_router({"providers": {"x": {"type": "dalle"}}})


def test_region_and_max_concurrency_are_kept_per_provider():
    r = build_router({"providers": {
        "local": {"type": "local", "region": "on-premises", "max_concurrency": 2,
                  "allow_private_network": True},
        "openai": {"type": "openai_images", "base_url": "https://images.example", "region": "us"},
    }})
    assert r.region_of("local") == "on-premises" and r.region_of("openai") == "us"
    assert r.region_of("nope") is None
    assert set(r.slots) == {"local"}


def test_max_concurrency_lets_only_that_many_calls_in_at_once():
    import threading

    inside, most, lock, gate = [0], [0], threading.Lock(), threading.Event()

    class Slow(Scripted):
        def generate(self, request, progress=None):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            gate.wait(0.2)
            with lock:
                inside[0] -= 1
            return super().generate(request, progress)

    slow = Slow("slow")
    r = Router({"slow": slow}, {"text-to-image": ["slow"]}, max_concurrency={"slow": 2})
    threads = [threading.Thread(target=r.run, args=(REQUEST,)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert slow.calls == 5 and most[0] == 2


# ------------------------------------------------------------------ the providers file


def write(tmp_path, text, name="providers.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_providers_file_is_read_and_its_variables_filled_in(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_IMAGES_KEY", "sk-from-env")
    path = write(tmp_path, """
providers:
  openai:
    type: openai_images
    base_url: https://images.example/v1x
    api_key: ${TEST_IMAGES_KEY}
    region: us
    max_concurrency: 4
    job_types: [text-to-image]
    timeout_s: 30
  local: {type: local, region: on-premises}
routes:
  text-to-image: [openai, local]
retry: {attempts: 2, base_delay_s: 0, max_delay_s: 1}
breaker: {failures: 2, cooldown_s: 5}
""")
    r = build_router({"GENERATION": {"PROVIDERS_FILE": str(path)}})
    assert r.routes == {"text-to-image": ("openai", "local")}
    assert r.providers["openai"].http.api_key == "sk-from-env"
    assert r.region_of("openai") == "us" and r.region_of("local") == "on-premises"
    assert r.retry == RetryPolicy(2, 0.0, 1.0) and r.breakers["local"].policy.failures == 2


def test_a_missing_variable_stops_the_start_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_MISSING_KEY", raising=False)
    path = write(tmp_path, "providers:\n  o: {type: openai_images, base_url: 'https://x',"
                           " api_key: '${TEST_MISSING_KEY}'}\n")
    with pytest.raises(ProviderConfigError, match=r"providers\.o\.api_key: environment "
                                                  r"variable TEST_MISSING_KEY is not set"):
        build_router({"GENERATION": {"PROVIDERS_FILE": str(path)}})


def test_every_provider_gets_the_files_directory_as_base_dir(tmp_path):
    from services.generation.providers.config import load_providers_file

    path = write(tmp_path, "providers:\n  local: {type: local}\n  other: {type: local,"
                           " base_dir: /elsewhere}\n")
    data = load_providers_file(path, environ={})
    assert data["providers"]["local"]["base_dir"] == str(tmp_path.resolve())
    assert data["providers"]["other"]["base_dir"] == "/elsewhere"


@pytest.mark.parametrize("text, message", [
    ("providers: [a, b]\n", "providers: a mapping"),
    ("provider: {}\n", "unknown key 'provider'"),
    ("- a\n", "a mapping of providers"),
    ("providers: {local: {type: local}}\nroutes: {text-to-image: [local, nope]}\n",
     r"routes\.text-to-image: unknown provider 'nope'"),
])
def test_a_bad_providers_file_is_refused(tmp_path, text, message):
    with pytest.raises(ProviderConfigError, match=message):
        build_router({"GENERATION": {"PROVIDERS_FILE": str(write(tmp_path, text))}})


def test_an_unreadable_providers_file_is_named(tmp_path):
    with pytest.raises(ProviderConfigError, match="cannot read it"):
        build_router({"GENERATION": {"PROVIDERS_FILE": str(tmp_path / "absent.yaml")}})


def test_the_bundled_file_is_local_only_and_the_default():
    from services.generation.providers.config import DEFAULT_FILE, load_providers_file

    assert DEFAULT_FILE.name == "local.yaml" and DEFAULT_FILE.parent.name == "providers"
    data = load_providers_file(None, environ={})
    assert list(data["providers"]) == ["local"]
    r = build_router({"GENERATION": {"PROVIDERS_FILE": ""}})
    assert set(r.providers) == {"local"} and r.supports("image-to-video")


def test_every_listed_type_is_known_to_the_registry():
    from services.generation.providers.router import TYPES, build_provider

    for kind in TYPES:
        try:
            build_provider("x", {"type": kind})
        except ProviderConfigError as exc:
            assert "unknown type" not in str(exc), kind
