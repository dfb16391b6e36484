"""The CLI surface: arguments, output, exit codes (logic replaced by fakes)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ops import cli as cli_module
from ops.dlq import DeadLetter
from ops.errors import OpsError
from services.common.errors import DomainError


def test_missing_config_file_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli_module.cli, ["--config", str(tmp_path / "nope.yaml"), "dlq", "list"])
    assert result.exit_code == 1
    assert "config file not found" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_config_values_reach_the_commands(run, monkeypatch):
    seen = {}

    def fake_list(config):
        seen.update(config)
        return [("dlq.a", 2), ("dlq.bbbbbb", 0)]

    monkeypatch.setattr(cli_module.dlq_ops, "list_dlqs", fake_list)
    result = run("dlq", "list")
    assert result.exit_code == 0, result.output
    assert seen["AMQP_URI"] == "amqp://guest:guest@127.0.0.1:5672/x"
    assert seen["RABBIT_MANAGEMENT_URL"] == "http://guest:guest@127.0.0.1:15672"  # default
    assert result.output.splitlines() == ["QUEUE       MESSAGES", "dlq.a       2", "dlq.bbbbbb  0"]
    result = run("dlq", "list", "--json")
    assert json.loads(result.output) == [{"queue": "dlq.a", "messages": 2},
                                         {"queue": "dlq.bbbbbb", "messages": 0}]


def test_an_ops_error_is_a_message_and_exit_1(run, monkeypatch):
    def missing(config, queue, limit):
        raise OpsError(f"no queue 'dlq.{queue}' in vhost 'x'")

    monkeypatch.setattr(cli_module.dlq_ops, "show", missing)
    result = run("dlq", "show", "nope")
    assert result.exit_code == 1
    assert "error: no queue 'dlq.nope' in vhost 'x'" in result.output
    assert "Traceback" not in result.output


def test_show_prints_each_letter(run, monkeypatch):
    letter = DeadLetter(event="probe.poked", error="RuntimeError: boom", attempts=3, replays=1,
                        dead_lettered_at="2026-01-01T00:00:00Z", original_queue="evt-q",
                        correlation_id="req-1", content_type="application/json",
                        body={"key": "k1"}, traceback="Traceback (most recent call last):\n  x")
    monkeypatch.setattr(cli_module.dlq_ops, "show", lambda config, queue, limit: [letter] * limit)
    result = run("dlq", "show", "evt-q", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert result.output.count("#") == 2
    for text in ("error:            RuntimeError: boom", "attempts:         3", "replays:          1",
                 "original queue:   evt-q", "correlation id:   req-1", 'body:             {"key": "k1"}'):
        assert text in result.output
    assert "Traceback" not in result.output
    assert "most recent call" in run("dlq", "show", "evt-q", "--traceback").output
    items = json.loads(run("dlq", "show", "evt-q", "--json", "--limit", "1").output)
    assert items == [{k: v for k, v in letter.to_dict().items() if k != "traceback"}]


def test_limit_must_be_positive(run):
    assert run("dlq", "show", "q", "--limit", "0").exit_code == 2
    assert run("dlq", "replay", "q", "--limit", "-1").exit_code == 2


def test_replay_reports_the_count_with_a_bar_over_the_messages(run, monkeypatch):
    calls = []
    monkeypatch.setattr("click._termui_impl.isatty", lambda f: True)  # as on a terminal
    monkeypatch.setattr(cli_module.dlq_ops, "count", lambda config, queue: 7)

    def replay(config, queue, limit, bar):
        calls.append((queue, limit))
        for _ in range(3):
            bar.update(1)
        return 3

    monkeypatch.setattr(cli_module.dlq_ops, "replay", replay)
    result = run("dlq", "replay", "evt-q", "--limit", "5")
    assert result.exit_code == 0
    assert result.stdout.strip() == "replayed 3 messages from dlq.evt-q"
    assert calls == [("dlq.evt-q", 5)]
    assert "replaying" in result.stderr and "3/5" in result.stderr  # min(7 there, --limit 5)


def test_purge_refuses_without_yes(run, monkeypatch):
    purged = []
    monkeypatch.setattr(cli_module.dlq_ops, "purge", lambda config, queue: purged.append(queue) or 4)
    result = run("dlq", "purge", "evt-q")
    assert result.exit_code == 2
    assert "not purging dlq.evt-q without --yes" in result.output
    assert purged == []
    result = run("dlq", "purge", "dlq.evt-q", "--yes")
    assert result.exit_code == 0
    assert result.output.strip() == "purged 4 messages from dlq.evt-q"


def test_grant_admin_prints_the_otpauth_uri(run, monkeypatch):
    calls = []

    def fake_set_admin(config, email, is_admin):
        calls.append((email, is_admin))
        return {"user_id": "u-1", "is_admin": is_admin,
                "otpauth_uri": "otpauth://totp/Darkroom:ada?secret=X" if is_admin else None,
                "api_keys_revoked": 2 if is_admin else 0}

    monkeypatch.setattr(cli_module.user_ops, "set_admin", fake_set_admin)
    result = run("users", "grant-admin", "ada@example.com")
    assert result.exit_code == 0
    assert "ada@example.com is now an administrator (user u-1)" in result.output
    assert "otpauth://totp/Darkroom:ada?secret=X" in result.output
    assert "2 API key(s) revoked" in result.output
    result = run("users", "revoke-admin", "ada@example.com")
    assert result.exit_code == 0
    assert "no longer an administrator" in result.output and "otpauth" not in result.output
    assert "revoked" not in result.output
    assert calls == [("ada@example.com", True), ("ada@example.com", False)]


def test_a_domain_error_is_its_message_and_exit_1(run, monkeypatch):
    def unknown(config, email, is_admin):
        raise DomainError("not_found", "user not found", 404)

    monkeypatch.setattr(cli_module.user_ops, "set_admin", unknown)
    result = run("users", "grant-admin", "who@example.com")
    assert result.exit_code == 1
    assert "error: user not found (not_found)" in result.output
