"""One home for output (ops/output.py): every command takes --json, prints
its result as JSON on stdout (errors too), draws progress on stderr; and the
text forms of the new commands (users, keys, jobs cancel, dlq replay --all,
doctor), with the services replaced by fakes."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from ops import cli as cli_module
from ops import doctor as doctor_ops
from ops.errors import OpsError
from ops.output import output, progress
from services.common.errors import DomainError


def commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in commands(cli_module.cli)])
def test_every_command_takes_json(path):
    command = dict(commands(cli_module.cli))[tuple(path.split())]
    assert "--json" in [opt for param in command.params for opt in param.opts], path


def test_output_prints_json_or_lines_and_fails_on_request():
    @click.command()
    @click.option("--n", type=int)
    @output(lambda r: [f"n is {r['n']}"], failed=lambda r: r["n"] > 1)
    def command(n):
        return {"n": n}

    runner = CliRunner()
    assert runner.invoke(command, ["--n", "1"]).stdout == "n is 1\n"
    result = runner.invoke(command, ["--n", "2", "--json"])
    assert (result.exit_code, json.loads(result.stdout)) == (1, {"n": 2})


def test_an_error_with_json_is_json_on_stdout_and_text_on_stderr(run, monkeypatch):
    def unknown(config, user):
        raise DomainError("not_found", "user not found", 404)

    monkeypatch.setattr(cli_module.user_ops, "show", unknown)
    result = run("users", "show", "x@example.com", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": {"code": "not_found",
                                                   "message": "user not found"}}
    assert result.stderr == "error: user not found (not_found)\n"
    usage = run("keys", "revoke", "--json")
    assert usage.exit_code == 2
    assert json.loads(usage.stdout)["error"]["code"] == "usage"
    plain = run("users", "show", "x@example.com")
    assert plain.stdout == "" and "user not found" in plain.stderr


def test_progress_goes_to_stderr_only_and_is_quiet_with_json(monkeypatch):
    monkeypatch.setattr("click._termui_impl.isatty", lambda f: True)  # as on a terminal

    @click.command()
    @output(lambda r: [str(r)])
    def command():
        with progress([1, 2, 3], "counting") as bar:
            return sum(bar)

    result = CliRunner().invoke(command)
    assert result.stdout == "6\n"
    assert "counting" in result.stderr and "3/3" in result.stderr
    result = CliRunner().invoke(command, ["--json"])
    assert result.stdout == "6\n"
    assert result.stderr == ""


USER = {"id": "7d7ab5a4-0000-4000-8000-000000000001", "email": "ada@example.com",
        "email_verified": True, "display_name": None, "plan": "free", "is_admin": False,
        "totp_enabled": False, "processing_restricted": False, "disabled_at": None,
        "sessions_active": 2, "api_keys_active": 1, "created_at": "2026-12-01T10:00:00Z",
        "updated_at": "2026-12-01T10:00:00Z"}


def test_users_list_and_show(run, cluster):
    class Auth:
        def list_users(self, query):
            self.query = query
            return {"items": [USER, {**USER, "id": "u2", "email": "bob@example.com",
                                     "disabled_at": "2026-12-02T00:00:00Z", "is_admin": True}],
                    "next_cursor": "c2"}

        def find_user(self, ref):
            return USER

    auth = Auth()
    cluster(auth=auth)
    result = run("users", "list", "--email", "example", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert auth.query == {"limit": 2, "email": "example"}
    lines = result.stdout.splitlines()
    assert lines[1].split()[:6] == [USER["id"], "ada@example.com", "active", "free", "2", "1"]
    assert lines[2].split()[2] == "disabled,admin"
    assert lines[-1] == "more: --cursor c2"
    shown = run("users", "show", "ada@example.com").stdout
    assert "email:                 ada@example.com" in shown
    assert "disabled at:           -" in shown


def test_users_disable_and_delete(run, cluster):
    class Auth:
        def disable_user(self, ref):
            return {"user_id": USER["id"], "email": USER["email"], "disabled": True,
                    "sessions_revoked": 2, "api_keys_revoked": 1}

        def find_user(self, ref):
            return USER

    class Privacy:
        calls: list = []

        def erase_as_operator(self, user_id, reason):
            self.calls.append((user_id, reason))
            return {"id": "r1", "type": "erasure", "status": "pending",
                    "starts_at": "2026-12-04T10:00:00Z"}

    privacy = Privacy()
    cluster(auth=Auth(), privacy=privacy)
    assert run("users", "disable", "ada@example.com").stdout.strip() == (
        f"ada@example.com is disabled (user {USER['id']}): 2 session(s) and 1 API key(s) revoked")
    assert run("users", "delete", "ada@example.com", "--reason", "x").exit_code == 2
    assert privacy.calls == []
    blank = run("users", "delete", "ada@example.com", "--reason", "  ", "--yes")
    assert blank.exit_code == 2 and privacy.calls == []
    result = run("users", "delete", "ada@example.com", "--reason", "abuse", "--yes")
    assert result.exit_code == 0, result.output
    assert privacy.calls == [(USER["id"], "abuse")]  # auth's id, not what was typed
    assert result.stdout.startswith(f"erasure of ada@example.com (user {USER['id']}) requested: "
                                    "request r1, pending")


def test_users_delete_minor_erases_without_grace(run, cluster):
    class Auth:
        def find_user(self, ref):
            return USER

    class Privacy:
        calls: list = []

        def erase_as_operator(self, user_id, reason, immediate=False):
            self.calls.append((user_id, reason, immediate))
            return {"id": "r2", "type": "erasure", "status": "pending",
                    "starts_at": "2026-12-04T10:00:00Z"}

    privacy = Privacy()
    cluster(auth=Auth(), privacy=privacy)
    refused = run("users", "delete-minor", "ada@example.com")
    assert refused.exit_code == 2 and privacy.calls == []
    result = run("users", "delete-minor", "ada@example.com", "--yes")
    assert result.exit_code == 0, result.output
    assert privacy.calls == [(USER["id"], "reported by a guardian as under the minimum age "
                                          "(no grace period)", True)]
    assert result.stdout.startswith(f"erasure of ada@example.com (user {USER['id']}) started "
                                    "at once, without a grace period: request r2, pending")


@pytest.mark.parametrize("args, selector", [
    (["drk_abcd1234"], {"prefix": "drk_abcd1234"}),
    (["7d7ab5a4-0000-4000-8000-000000000009"], {"key_id": "7d7ab5a4-0000-4000-8000-000000000009"}),
    (["--user", "ada@example.com"], {"user": "ada@example.com"}),
])
def test_keys_revoke_selectors(run, cluster, args, selector):
    seen = []

    class Auth:
        def revoke_keys(self, given):
            seen.append(given)
            return {"items": [{"id": "k1", "prefix": "abcd1234", "name": "ci", "user_id": "u1"}]}

    cluster(auth=Auth())
    result = run("keys", "revoke", *args)
    assert result.exit_code == 0, result.output
    assert seen == [selector]
    assert result.stdout.splitlines() == ["revoked 1 API key:", "  k1  drk_abcd1234  'ci'  user u1"]


def test_keys_revoke_needs_one_selector(run, cluster):
    cluster(auth=object())
    assert run("keys", "revoke").exit_code == 2
    assert run("keys", "revoke", "drk_x", "--user", "u").exit_code == 2


def test_dlq_replay_all(run, monkeypatch):
    monkeypatch.setattr(cli_module.dlq_ops, "replay_plan", lambda config, queue, limit: [
        {"queue": "dlq.a", "messages": 2}, {"queue": "dlq.b", "messages": 1}])
    replayed = []
    monkeypatch.setattr(cli_module.dlq_ops, "replay",
                        lambda config, queue, limit, bar: replayed.append(queue) or 2)
    dry = run("dlq", "replay", "--all", "--dry-run")
    assert dry.stdout.splitlines() == [
        "dry run: would replay 3 messages from 2 queues; nothing was moved",
        "  dlq.a  2", "  dlq.b  1"]
    assert replayed == []
    done = run("dlq", "replay", "--all", "--json")
    assert replayed == ["dlq.a", "dlq.b"]
    assert json.loads(done.stdout)["messages"] == 4
    assert run("dlq", "replay", "dlq.a", "--all").exit_code == 2


def test_doctor_lines_name_the_fix_and_fail_on_a_failure(monkeypatch):
    result = {"ok": False, "production": False, "findings": [
        {"group": "auth", "check": "database", "status": "fail", "detail": "refused",
         "fix": "check AUTH_DATABASE_URL"},
        {"group": "auth", "check": "secrets", "status": "warn", "detail": "MAIL_SECRETS_KEY",
         "fix": "set it"},
        {"group": "storage", "check": "object store", "status": "ok", "detail": "fs", "fix": ""}]}
    assert doctor_ops.lines(result) == [
        "FAIL  auth: database — refused", "      fix: check AUTH_DATABASE_URL",
        "WARN  auth: secrets — MAIL_SECRETS_KEY", "      fix: set it",
        "ok    storage: object store — fs", "", "1 problem found, 1 warning"]
    monkeypatch.setattr(cli_module.doctor_ops, "run", lambda config_file, only, progress: result)
    invoked = CliRunner().invoke(cli_module.cli, ["doctor", "--json"])
    assert invoked.exit_code == 1
    assert json.loads(invoked.stdout) == result


def test_doctor_runs_even_when_the_ops_config_is_broken(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(cli_module.doctor_ops, "run",
                        lambda config_file, only, progress: seen.update(file=config_file) or
                        {"ok": True, "production": False, "findings": []})
    missing = str(tmp_path / "nope.yaml")
    result = CliRunner().invoke(cli_module.cli, ["--config", missing, "doctor"])
    assert result.exit_code == 0, result.output
    assert seen == {"file": missing}


def test_doctor_draws_a_bar_over_its_checks_and_none_with_json(tmp_path, monkeypatch):
    monkeypatch.setattr("click._termui_impl.isatty", lambda f: True)  # as on a terminal
    missing = ["--config", str(tmp_path / "nope.yaml")]
    steps = len(doctor_ops.PROCESSES) + 2
    result = CliRunner().invoke(cli_module.cli, [*missing, "doctor", "--only", "ops"])
    assert result.exit_code == 1
    assert "checking" in result.stderr and f"{steps}/{steps}" in result.stderr
    assert result.stdout.startswith("FAIL  ops: config")
    quiet = CliRunner().invoke(cli_module.cli, [*missing, "doctor", "--only", "ops", "--json"])
    assert quiet.exit_code == 1 and quiet.stderr == ""
    assert json.loads(quiet.stdout)["findings"][0]["check"] == "config"


def test_a_failed_probe_is_a_finding_not_a_traceback():
    doc = doctor_ops.Doctor()

    def broken():
        raise OpsError("no route to host")

    assert doc.probe("rabbitmq", "broker", broken, lambda exc: "start it") is False
    assert doc.findings[0].status == "fail"
    assert doc.findings[0].detail == "OpsError: no route to host"
    assert doc.findings[0].fix == "start it"
