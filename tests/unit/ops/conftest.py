"""What the ops CLI tests share: invoking ``darkroom-ops`` with a test config."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ops import cli as cli_module


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
