"""Choosing a provider: ordered routes, retries, circuit breakers, failover.

For a request of job type T the router walks ``routes[T]`` in order. Each
provider gets up to ``retry.attempts`` tries: a transient error is retried
after an exponential backoff (``base_delay_s * 2**i``, at most
``max_delay_s``, and never sooner than a 429's ``Retry-After`` allows
within that cap); a permanent error is not retried on that provider. Then
the next provider is tried. The first success wins and the result names its
provider. When every provider failed the error is the last permanent error
if there was one (the request itself was refused), otherwise the transient
``provider_unavailable`` (so ``darkroom-ops jobs replay --reason
provider_unavailable`` finds the jobs an outage failed).

A vendor's content-policy refusal (``content_refused``) is the exception: it
stops the route at once. Another vendor is not asked to render what one
refused; the job fails with ``content_refused``.

``max_concurrency`` (per provider): at most that many calls of the provider
run at once in this process; a request waiting for a slot just waits (the
job keeps its lease; the wait is not counted against the provider's
``timeout_s``, which is per HTTP call); adapters that apply it themselves
(:data:`OWN_CONCURRENCY`: ComfyUI, per host) get no router limit.
``region`` is kept per provider (:meth:`Router.region_of`); a run skips the
providers in the regions its user refuses (:meth:`Router.route_for`).

A job that names a ``model`` (a provider in its type's route) runs on that
provider only: its retries and breaker apply, but no other provider is
tried (the user chose the vendor and its price).

Each provider has a circuit breaker: ``breaker.failures`` transient failures
in a row open it and the provider is skipped for ``cooldown_s``; then one
request is let through as a probe (half-open): success closes the breaker,
failure opens it for another cooldown. A permanent error proves the provider
is up, so it counts as a success for the breaker. Breakers live in the
process (one per worker process), which is enough to stop hammering a dead
provider without coordination.

Clock and sleep are injectable so tests run in no time; under ``nameko run``
the default ``time.sleep`` is eventlet's green sleep.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from services.common import metrics
from services.common.contracts.generation import JOB_TYPES, MODEL_NAME_PATTERN
from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProgressCallback,
    Provider,
    ProviderRequest,
    ProviderResult,
    TransientProviderError,
)
from services.generation.providers.config import ProviderConfigError, providers_config

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
#: Adapter types that apply ``max_concurrency`` themselves (per host of a pool):
#: the router adds no limit of its own for them.
OWN_CONCURRENCY = frozenset({"comfyui"})
NAME = re.compile(MODEL_NAME_PATTERN)  # the names a job may give as its model
#: ``on_attempt(provider name, request, error code or None)``: one try was made.
AttemptCallback = Callable[[str, ProviderRequest, "str | None"], None]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def __post_init__(self):
        if self.attempts < 1 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ProviderConfigError("retry: attempts >= 1 and non-negative delays")

    def delay(self, retry_index: int, retry_after: float | None = None) -> float:
        """Seconds before retry number ``retry_index`` (0 for the first retry)."""
        delay = self.base_delay_s * (2 ** retry_index)
        if retry_after:
            delay = max(delay, retry_after)
        return min(self.max_delay_s, delay)


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5
    cooldown_s: float = 60.0

    def __post_init__(self):
        if self.failures < 1 or self.cooldown_s < 0:
            raise ProviderConfigError("breaker: failures >= 1 and a non-negative cooldown")


class CircuitBreaker:
    """closed → (K failures in a row) → open → (cooldown) → half_open: one probe."""

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            if self.state == OPEN and self.clock() - self.opened_at >= self.policy.cooldown_s:
                self.state, self._probing = HALF_OPEN, False
            if self.state == CLOSED:
                return True
            if self.state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.state, self.failures, self._probing = CLOSED, 0, False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.state == HALF_OPEN or self.failures >= self.policy.failures:
                self.state, self.opened_at, self._probing = OPEN, self.clock(), False


@dataclass(frozen=True)
class Attempt:
    """One try: ``code`` None for the success, ``circuit_open`` for a skip."""

    provider: str
    code: str | None
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class RoutedResult:
    provider: str
    result: ProviderResult
    attempts: tuple[Attempt, ...]


class Router:
    def __init__(self, providers: Mapping[str, Provider], routes: Mapping[str, Sequence[str]],
                 retry: RetryPolicy | None = None, breaker: BreakerPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 regions: Mapping[str, str] | None = None,
                 max_concurrency: Mapping[str, int] | None = None):
        self.providers = dict(providers)
        self.regions = {name: str(region) for name, region in (regions or {}).items()
                        if name in self.providers and region}
        self.slots = {name: threading.BoundedSemaphore(int(limit))
                      for name, limit in (max_concurrency or {}).items()
                      if name in self.providers and limit}
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.sleep = sleep
        self.routes: dict[str, tuple[str, ...]] = {}
        for job_type, names in routes.items():
            if job_type not in JOB_TYPES:
                raise ProviderConfigError(f"routes: unknown job type {job_type!r}")
            for name in names:
                if name not in self.providers:
                    raise ProviderConfigError(f"routes.{job_type}: unknown provider {name!r}")
                if job_type not in self.providers[name].job_types:
                    raise ProviderConfigError(f"routes.{job_type}: provider {name!r} cannot "
                                              f"run {job_type}")
            if len(set(names)) != len(names):
                raise ProviderConfigError(f"routes.{job_type}: a provider is listed twice")
            if names:
                self.routes[job_type] = tuple(names)
        self.breakers = {name: CircuitBreaker(breaker or BreakerPolicy(), clock)
                         for name in self.providers}
        for name in self.providers:
            metrics.PROVIDER_CIRCUIT_OPEN.labels(name).set(0)

    def supports(self, job_type: str) -> bool:
        return bool(self.routes.get(job_type))

    def models(self) -> dict[str, tuple[str, ...]]:
        """The providers a job may name as ``model``: those in a route, each
        with the job types whose route lists it (in ``providers`` order)."""
        return {name: tuple(t for t in JOB_TYPES if name in self.routes.get(t, ()))
                for name in self.providers if any(name in r for r in self.routes.values())}

    def region_of(self, name: str) -> str | None:
        """Where provider ``name`` processes data (its ``region``), if configured."""
        return self.regions.get(name)

    def route_for(self, job_type: str,
                  refused_regions: Collection[str] = frozenset()) -> tuple[str, ...]:
        """The route of ``job_type`` without the providers whose region is
        refused (regions compare case-insensitively; a provider without a
        configured region is never skipped)."""
        refused = {r.lower() for r in refused_regions}
        return tuple(name for name in self.routes.get(job_type, ())
                     if self.regions.get(name, "").lower() not in refused)

    def breaker_states(self) -> dict[str, str]:
        return {name: b.state for name, b in self.breakers.items()}

    def _observe(self, name: str, outcome: str | None, code: str | None,
                 elapsed_s: float | None) -> None:
        """The metrics of one try (``outcome`` None: skipped by the breaker)."""
        if outcome is not None:
            metrics.PROVIDER_SECONDS.labels(name, outcome).observe(elapsed_s or 0.0)
        if code is not None:
            metrics.PROVIDER_ERRORS.labels(name, code).inc()
        metrics.PROVIDER_CIRCUIT_OPEN.labels(name).set(
            0 if self.breakers[name].state == CLOSED else 1)

    def run(self, request: ProviderRequest, progress: ProgressCallback | None = None,
            on_attempt: AttemptCallback | None = None,
            model: str | None = None,
            refused_regions: Collection[str] = frozenset()) -> RoutedResult:
        """The first provider's success, or the error described above, which
        carries the list of attempts as ``.attempts``. ``on_attempt(name,
        request, code)`` is called after each try of a provider (``code`` None
        for the success; not for a provider skipped by its breaker): the
        disclosure log (services/generation/disclosures.py). Providers in
        ``refused_regions`` (the user's) are skipped, and never tried. With
        ``model`` only that provider runs (its retries and breaker apply, no
        failover); it must be in the job type's route (``unknown_model``
        otherwise) and not in a refused region."""
        tried = on_attempt or (lambda name, request, code: None)
        if not self.routes.get(request.job_type):
            raise PermanentProviderError("job_type_unavailable",
                                         f"no provider is configured for {request.job_type}")
        names = self.route_for(request.job_type, refused_regions)
        if model is not None:
            if model not in self.routes[request.job_type]:
                raise PermanentProviderError("unknown_model", f"model {model!r} does not run "
                                             f"{request.job_type} here")
            names = (model,) if model in names else ()
        if not names:
            raise PermanentProviderError("no_provider_for_region",
                                         f"every provider for {request.job_type} is in a "
                                         "region the user refuses")
        attempts: list[Attempt] = []
        permanent: PermanentProviderError | None = None
        for name in names:
            provider, breaker = self.providers[name], self.breakers[name]
            for retry_index in range(self.retry.attempts):
                if not breaker.allow():
                    attempts.append(Attempt(name, "circuit_open"))
                    self._observe(name, None, None, None)
                    break
                started = self.clock()
                try:
                    with self.slots.get(name) or contextlib.nullcontext():
                        result = provider.generate(request, progress)
                except TransientProviderError as exc:
                    breaker.failure()
                    attempts.append(Attempt(name, exc.code, self.clock() - started))
                    self._observe(name, "transient", exc.code, attempts[-1].elapsed_s)
                    tried(name, request, exc.code)
                    log.warning("provider %s failed (%s), attempt %d", name, exc.code,
                                retry_index + 1)
                    if retry_index + 1 < self.retry.attempts and breaker.state == CLOSED:
                        self.sleep(self.retry.delay(retry_index, exc.retry_after))
                        continue
                    break
                except PermanentProviderError as exc:
                    breaker.success()
                    attempts.append(Attempt(name, exc.code, self.clock() - started))
                    self._observe(name, "permanent", exc.code, attempts[-1].elapsed_s)
                    tried(name, request, exc.code)
                    log.warning("provider %s refused the request (%s)", name, exc.code)
                    permanent = exc
                    break
                except BaseException:
                    breaker.failure()  # never leave a half-open probe dangling
                    self._observe(name, "transient", "internal_error", self.clock() - started)
                    tried(name, request, "internal_error")
                    raise
                breaker.success()
                attempts.append(Attempt(name, None, self.clock() - started))
                self._observe(name, "ok", None, attempts[-1].elapsed_s)
                tried(name, request, None)
                return RoutedResult(name, result, tuple(attempts))
            if permanent is not None and permanent.code == CONTENT_REFUSED:
                break  # no failover: another vendor is not asked what one refused
        if permanent is not None:
            error = PermanentProviderError(permanent.code, permanent.message,
                                           status=permanent.status)
        else:
            error = TransientProviderError(
                "provider_unavailable",
                f"every provider for {request.job_type} failed or is paused: "
                + ", ".join(f"{a.provider}={a.code}" for a in attempts))
        error.attempts = tuple(attempts)
        raise error


# ------------------------------------------------------------------ configuration


def _names(value) -> list[str]:
    if isinstance(value, str):  # "openai,local" from an environment variable
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value or ()]


def _enabled(conf: Mapping) -> bool:
    value = conf.get("enabled", True)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


#: The adapter types, as an unknown ``type`` lists them (each has a branch below).
TYPES = ("local", "openai_images", "async_task", "replicate", "fal", "comfyui", "volcengine_ark",
         "dashscope", "openrouter", "gemini")


def build_provider(name: str, conf: Mapping, *, offload: Callable | None = None,
                   sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic, resolver=None) -> Provider:
    from services.generation.providers.async_task import AsyncTaskProvider
    from services.generation.providers.local import LocalProvider
    from services.generation.providers.openai_images import OpenAIImagesProvider

    kind = conf.get("type")
    try:
        if kind == "local":
            return LocalProvider.from_config(name, dict(conf), offload)
        if kind == "replicate":
            from services.generation.providers.replicate import ReplicateProvider

            provider = ReplicateProvider.from_config(name, dict(conf), sleep=sleep, clock=clock)
        elif kind == "openai_images":
            provider = OpenAIImagesProvider.from_config(name, dict(conf))
        elif kind == "fal":
            from services.generation.providers.fal import FalProvider

            provider = FalProvider.from_config(name, dict(conf), sleep=sleep, clock=clock)
        elif kind == "async_task":
            provider = AsyncTaskProvider.from_config(name, dict(conf), sleep=sleep, clock=clock)
        elif kind == "comfyui":
            from services.generation.providers.comfyui import ComfyUIProvider

            provider = ComfyUIProvider.from_config(name, dict(conf), sleep=sleep, clock=clock,
                                                   resolver=resolver)
        elif kind == "volcengine_ark":
            from services.generation.providers.volcengine_ark import ArkProvider

            provider = ArkProvider.from_config(name, dict(conf), sleep=sleep, clock=clock)
        elif kind in ("openrouter", "gemini"):
            from services.generation.providers.gemini import GeminiProvider
            from services.generation.providers.openrouter import OpenRouterProvider

            provider = (OpenRouterProvider.from_config(name, dict(conf)) if kind == "openrouter"
                        else GeminiProvider.from_config(name, dict(conf), sleep=sleep, clock=clock))
        elif kind == "dashscope":
            from services.generation.providers.dashscope import DashScopeProvider

            provider = DashScopeProvider.from_config(name, dict(conf), sleep=sleep, clock=clock)
        else:
            raise ProviderConfigError(f"providers.{name}: unknown type {kind!r} "
                                      f"({', '.join(TYPES)})")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ProviderConfigError):
            raise
        raise ProviderConfigError(f"providers.{name}: {exc}") from None
    if resolver is not None:
        provider.http.guard.resolver = resolver
    return provider


def build_router(config: Mapping, *, offload: Callable | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, resolver=None) -> Router:
    """A router from a service config (the providers file named by its
    ``GENERATION.PROVIDERS_FILE``, see :mod:`.config`) or from the file's
    structure itself: ``providers``, ``routes``, ``retry``, ``breaker``
    (docs/providers.md).

    A provider with ``enabled: false`` is left out, and out of every route.
    Without ``routes`` each job type goes to every enabled provider that can
    run it, in the order of ``providers``. Without ``providers``: ``local`` only.
    """
    section = providers_config(config)
    configured = section.get("providers") or {"local": {"type": "local"}}
    if not isinstance(configured, Mapping):
        raise ProviderConfigError("providers: a mapping of name -> provider config")
    providers: dict[str, Provider] = {}
    regions: dict[str, str] = {}
    limits: dict[str, int] = {}
    for name, conf in configured.items():
        if not NAME.match(str(name)):
            raise ProviderConfigError(f"providers: {name!r} is not a valid name "
                                      "(lowercase letters, digits, - and _)")
        conf = conf or {}
        if not isinstance(conf, Mapping):
            raise ProviderConfigError(f"providers.{name}: a mapping of settings")
        if not _enabled(conf):
            continue
        region, limit = conf.get("region"), conf.get("max_concurrency")
        if region is not None and not isinstance(region, str | int):
            raise ProviderConfigError(f"providers.{name}: region must be a string (cn, us, ...)")
        try:
            limit = int(limit) if limit not in (None, "") else None
        except (TypeError, ValueError):
            limit = 0
        if limit is not None and limit < 1:
            raise ProviderConfigError(f"providers.{name}: max_concurrency must be a whole "
                                      "number >= 1")
        providers[name] = build_provider(name, conf, offload=offload, sleep=sleep,
                                         clock=clock, resolver=resolver)
        if region not in (None, ""):
            regions[name] = str(region)
        if limit and conf.get("type") not in OWN_CONCURRENCY:
            limits[name] = limit
    if section.get("routes") is None:
        routes = {t: [n for n, p in providers.items() if t in p.job_types] for t in JOB_TYPES}
    else:
        routes = {}
        for job_type, names in section["routes"].items():
            names = _names(names)
            unknown = [n for n in names if n not in configured]
            if unknown:
                raise ProviderConfigError(f"routes.{job_type}: unknown provider {unknown[0]!r}")
            routes[job_type] = [n for n in names if n in providers]
    retry = section.get("retry") or {}
    breaker = section.get("breaker") or {}
    try:
        retry_policy = RetryPolicy(int(retry.get("attempts", 3)),
                                   float(retry.get("base_delay_s", 0.5)),
                                   float(retry.get("max_delay_s", 8.0)))
        breaker_policy = BreakerPolicy(int(breaker.get("failures", 5)),
                                       float(breaker.get("cooldown_s", 60.0)))
    except (TypeError, ValueError) as exc:
        raise ProviderConfigError(str(exc)) from None
    return Router(providers, routes, retry_policy, breaker_policy, clock=clock, sleep=sleep,
                  regions=regions, max_concurrency=limits)
