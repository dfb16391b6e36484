"""What the ops CLI tests share: invoking ``darkroom-ops`` with a test config."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
from click.testing import CliRunner

from ops import cli as cli_module
from ops import rpc as rpc_ops


class Calls(list):
    """The RPCs a command made; ``answers`` holds the fake service's answers."""

    answers: dict


@pytest.fixture
def run(tmp_path):
    """``run("storage", "purge")`` → the CLI's result, with a config naming a
    test broker and a 7 s RPC timeout."""
    config = tmp_path / "ops.yaml"
    config.write_text("AMQP_URI: amqp://guest:guest@127.0.0.1:5672/x\nRPC_TIMEOUT_SECONDS: 7\n")

    def invoke(*args, input=None):
        return CliRunner().invoke(cli_module.cli, ["--config", str(config), *args], input=input)

    return invoke


@pytest.fixture
def cluster(monkeypatch):
    """``cluster(billing=fake)`` puts ``fake`` behind ops.rpc in place of
    nameko's ClusterRpcProxy (and the broker check); returns a dict that
    records the timeout, correlation id and broker of the last proxy made."""

    def install(**services) -> dict:
        seen: dict = {}

        class Proxy:
            def __init__(self, config, context_data, timeout):
                seen.update(timeout=timeout, correlation_id=context_data["correlation_id"],
                            amqp_uri=config["AMQP_URI"])
                for name, service in services.items():
                    setattr(self, name, service)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        monkeypatch.setattr(rpc_ops, "ClusterRpcProxy", Proxy)
        monkeypatch.setattr(rpc_ops, "connect", lambda uri: nullcontext())
        return seen

    return install
