"""Hand-written fakes cannot drift from what they stand in for.

Every ``class Fake*`` under tests/ is listed below: either in ``STANDS_IN_FOR``
with the real service (or protocol) it imitates, or in ``NOT_OURS`` (fakes of
something that is not one of our services: a provider's HTTP API, Stripe,
nameko's proxy, a clock).

A fake of one of our services offers only RPCs the real service has, each with
the real parameters (names, kinds and defaults; annotations aside). A fake that
offers fewer RPCs than the real service says why (``Imitates.why``), and the test
names the missing ones when that reason is absent; a fake of the gateway's view
offers at least every RPC the gateway calls on that service.

What a fake offers: for a nameko service class (tests/integration), its ``@rpc``
entrypoints; for a :class:`FakeRpcService`, its ``rpc_<name>`` methods; for any
other fake, its public methods.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from nameko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
from nameko.rpc import Rpc

from services.auth.service import AuthService
from services.billing.service import BillingService
from services.common.service import DarkroomService
from services.generation.service import GenerationService
from services.notifications.mailer import Mailer
from services.privacy.service import PrivacyService
from services.storage.service import StorageService
from tests.unit.gateway.conftest import FakeRpcService

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_VIEW = "the gateway's view: what gateway/ calls"


@dataclass(frozen=True)
class Imitates:
    real: type  # the service class (or protocol) it stands in for
    why: str | None = None  # why it offers fewer RPCs than ``real`` (None: it offers all)
    gateway: str | None = None  # offers every RPC gateway/ calls on this service


STANDS_IN_FOR = {
    # the gateway's unit tests (a fake pool of in-memory services)
    "tests.unit.gateway.conftest.FakeAuth": Imitates(AuthService, GATEWAY_VIEW, "auth"),
    "tests.unit.gateway.conftest.FakeStorage": Imitates(StorageService, GATEWAY_VIEW, "storage"),
    "tests.unit.gateway.conftest.FakeService": Imitates(
        DarkroomService, None),  # any service the gateway only pings
    "tests.unit.gateway.conftest.FakePrivacy": Imitates(
        PrivacyService, "what GET /v1/me asks (tests/unit/privacy has the privacy API's fake)"),
    "tests.unit.gateway.test_billing_api.FakeBilling": Imitates(BillingService, GATEWAY_VIEW, "billing"),
    "tests.unit.gateway.test_generation_api.FakeGeneration": Imitates(
        GenerationService, GATEWAY_VIEW, "generation"),
    "tests.unit.privacy.test_gateway_api.FakePrivacy": Imitates(PrivacyService, GATEWAY_VIEW, "privacy"),
    # one caller's view each
    "tests.unit.ops.test_jobs_cli.FakeGeneration": Imitates(
        GenerationService, "what `darkroom-ops jobs` calls: find_jobs and replay_job"),
    "tests.unit.ops.test_webhooks_cli.FakeGeneration": Imitates(
        GenerationService, "what `darkroom-ops webhooks` calls: find_webhook_deliveries and "
                           "redeliver_webhook"),
    "tests.unit.notifications.test_receipts.FakeAuth": Imitates(
        AuthService, "what notifications asks auth: a recipient's address (get_user)"),
    "tests.unit.notifications.test_notify.FakeMailer": Imitates(Mailer),
    "tests.unit.notifications.test_receipts.FakeMailer": Imitates(Mailer),
    "tests.unit.privacy.test_parts.FakeStorage": Imitates(
        StorageService, "what an export archive's upload calls: an output slot, then commit"),
    "tests.unit.privacy.test_archive.FakeStorage": Imitates(
        StorageService, "what the export archive calls: sources, an output slot, commit"),
    # nameko services run in place of the real ones (tests/integration)
    "tests.integration.probe_service.FakeAuthService": Imitates(
        AuthService, "what `darkroom-ops users set-admin` calls (set_admin) and what a "
                     "spending service asks (get_user)"),
    "tests.integration.probe_service.FakeStorageService": Imitates(
        StorageService, "what `darkroom-ops storage` calls (purge_expired, report)"),
}

NOT_OURS = {
    "tests.unit.gateway.conftest.FakeRpcService": "the base of the in-memory services above",
    "tests.unit.gateway.conftest.FakePool": "gateway.rpc.RpcPool (a pool of proxies)",
    "tests.unit.gateway.test_generation_api.FakeClock": "time.monotonic and sleep",
    "tests.unit.gateway.test_rpc_pool.FakeStandalone": "nameko's ServiceRpcProxy",
    "tests.unit.privacy.test_parts.FakeHttp": "requests",
    "tests.unit.privacy.test_archive.FakeHttp": "requests",
    "tests.unit.common.test_spending.FakeAuth": "nameko's RpcProxy (get_user.call_async and its timing)",
    "tests.unit.common.test_operators.FakeOperatorAuth": "nameko's RpcProxy "
                                                         "(require_operator.call_async)",
    "tests.fakes.stripe.FakeStripe": "Stripe's HTTP API",
    "tests.fakes.paypal.FakePayPal": "PayPal's REST API (Orders v2, refunds, webhook verification)",
    "tests.unit.client.conftest.FakeDarkroom": (
        "the gateway's HTTP API as the Python client sees it (its unit tests; "
        "tests/e2e/test_python_client.py runs it against the real stack)"),
    "tests.fakes.replicate.FakeReplicate": "Replicate's predictions API",
    "tests.fakes.providers.FakeHTTPServer": "the base of the providers' HTTP APIs",
    "tests.fakes.providers.FakeOpenAIImages": "a provider's HTTP API",
    "tests.fakes.providers.FakeAsyncTasks": "a provider's HTTP API",
    "tests.fakes.providers.FakeVendorTasks": "a vendor's own task API (async_task's mapping)",
    "tests.fakes.fal.FakeFal": "fal.ai's queue API",
    "tests.fakes.providers.FakeChatCompletions": "a provider's HTTP API",
    "tests.fakes.dashscope.FakeDashScope": "Alibaba Cloud DashScope's task API",
    "tests.fakes.providers.FakeWebhookReceiver": "a webhook receiver",
    "tests.fakes.comfyui.FakeComfyUI": "ComfyUI's HTTP API",
    "tests.fakes.ark.FakeArk": "Volcano Engine Ark's HTTP API (Seedream, Seedance)",
    "tests.fakes.openrouter.FakeOpenRouter": "OpenRouter's HTTP API (chat completions)",
    "tests.fakes.gemini.FakeGemini": "Google's Gemini API (generateContent, predict, Veo)",
}


def fake_classes_in_tests() -> set[str]:
    """``module.Class`` of every top-level ``class Fake*`` under tests/."""
    found = set()
    for path in (ROOT / "tests").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ClassDef) and node.name.startswith("Fake"):
                found.add(f"{module}.{node.name}")
    return found


def load(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def parameters(function) -> list[tuple]:
    """What a caller relies on: each parameter's name, kind and default."""
    return [(p.name, p.kind.name, p.default)
            for p in inspect.signature(function).parameters.values()]


def offered(cls: type) -> dict[str, list[tuple]]:
    """RPC name -> parameters, of a service class, a FakeRpcService or a plain fake."""
    functions = dict(inspect.getmembers(cls, inspect.isfunction))
    if any(isinstance(ext, Rpc) for fn in functions.values()
           for ext in getattr(fn, ENTRYPOINT_EXTENSIONS_ATTR, ())):
        return {name: parameters(fn) for name, fn in functions.items()
                if any(isinstance(ext, Rpc) for ext in getattr(fn, ENTRYPOINT_EXTENSIONS_ATTR, ()))}
    if issubclass(cls, FakeRpcService):
        return {name.removeprefix("rpc_"): parameters(fn) for name, fn in functions.items()
                if name.startswith("rpc_")}
    return {name: parameters(fn) for name, fn in functions.items() if not name.startswith("_")}


def called_by_gateway(service: str) -> set[str]:
    """The RPCs gateway/ calls on ``service``: ``proxy.<service>.<rpc>(`` (or ``rpc.…``),
    or ``call(...)``/``for_caller(...)``/``as_operator(...)`` naming ``"<service>.<rpc>"``."""
    call = re.compile(rf"\b(?:proxy|rpc)\.{service}\.(\w+)\(|\b(?:call|for_caller|as_operator)\("
                      rf"[^\"()]*\"{service}\.(\w+)\"")
    return {direct or named for path in (ROOT / "gateway").rglob("*.py")
            for direct, named in call.findall(path.read_text())}


def test_every_fake_in_tests_is_listed():
    found = fake_classes_in_tests()
    assert found - STANDS_IN_FOR.keys() - NOT_OURS.keys() == set(), \
        "a new Fake*: add it to STANDS_IN_FOR (one of our services) or NOT_OURS"
    assert (STANDS_IN_FOR.keys() | NOT_OURS.keys()) - found == set(), "listed, but gone"


@pytest.mark.parametrize("dotted", sorted(STANDS_IN_FOR))
def test_a_fake_offers_the_real_rpcs_with_the_real_parameters(dotted):
    spec = STANDS_IN_FOR[dotted]
    fake, real = offered(load(dotted)), offered(spec.real)
    assert fake, f"{dotted} offers nothing"
    assert set(fake) - set(real) == set(), f"{spec.real.__name__} has no such RPC"
    drifted = {name: {"fake": params, "real": real[name]}
               for name, params in fake.items() if params != real[name]}
    assert drifted == {}, f"{dotted}: not the parameters of the real RPCs"
    missing = set(real) - set(fake)
    if spec.why is None:
        assert missing == set(), f"{dotted} lacks these RPCs (or say why it is a subset)"
    else:
        assert missing, f"{dotted} offers every RPC now: drop its `why`"
    if spec.gateway is not None:
        assert called_by_gateway(spec.gateway) - set(fake) == set(), \
            f"the gateway calls these {spec.gateway} RPCs, which {dotted} lacks"


def test_the_check_sees_drift():
    """The comparison itself: a renamed parameter, a lost default, an RPC the
    service does not have are each told apart from a faithful fake."""

    class Faithful(FakeRpcService):
        def rpc_get_job(self, user_id, job_id):
            return {}

        def rpc_list_jobs(self, user_id, query=None):
            return {}

    class Renamed(FakeRpcService):
        def rpc_get_job(self, user, job_id):
            return {}

    class NoDefault(FakeRpcService):
        def rpc_list_jobs(self, user_id, query):
            return {}

    real = offered(GenerationService)
    assert offered(Faithful) == {name: real[name] for name in ("get_job", "list_jobs")}
    assert offered(Renamed)["get_job"] != real["get_job"]
    assert offered(NoDefault)["list_jobs"] != real["list_jobs"]
    assert "submit" in called_by_gateway("generation")
    assert "set_admin" not in called_by_gateway("auth")
