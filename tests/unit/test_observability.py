"""Static checks of the observability, TLS, log-rotation and database-sizing
parts of the deployment (issue 18).

No Docker engine, browser or network runs here, so nothing is started: the
files are checked as files. Where Debian ships the tool's own checker it is
used when installed (`promtool check config/rules` for Prometheus, `caddy
validate` for the Caddyfile); the checks that do not need it always run, so a
machine without the tools still verifies something real: the YAML and JSON
parse, every metric an alert or a dashboard panel names is one the code
defines, every process's metrics port is scraped, and the structure the
services depend on (which upstream each site proxies to, which files compose
mounts) is what the rest of the stack expects.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client import REGISTRY

from services.common import engine, secrets
from tests.conftest import unavailable

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OBS = DEPLOY / "observability"
COMPOSE_TEXT = (DEPLOY / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((OBS / "prometheus.yml").read_text())
ALERTS = yaml.safe_load((OBS / "alerts.yml").read_text())
DASHBOARD_FILES = sorted((OBS / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = yaml.safe_load(
    (OBS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
DASHBOARD_PROVIDERS = yaml.safe_load(
    (OBS / "grafana" / "provisioning" / "dashboards" / "darkroom.yml").read_text())
CADDYFILE = DEPLOY / "caddy" / "Caddyfile"

# PromQL words that look like metric names but are functions, keywords or labels.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "time", "on", "ignoring", "and", "or", "unless", "bool",
    "humanizeDuration", "le", "offset",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside label
    matchers, strings, durations and templates, that are not PromQL words."""
    expr = re.sub(r"\{[^}]*\}", "", expr)          # label matchers
    expr = re.sub(r'"[^"]*"', "", expr)             # strings
    expr = re.sub(r"\[[^\]]*\]", "", expr)          # range durations
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr):
        word = match.group(1)
        start = match.start()
        # grouping labels: `by (a, b)` / `without (instance)`
        before = expr[:start].rstrip()
        if re.search(r"\b(by|without|on|ignoring)\s*\([^()]*$", before):
            continue
        if word not in PROMQL_WORDS:
            names.add(word)
    return names


def defined_names() -> set[str]:
    """Every sample name the code's metrics expose (with their ``_total``,
    ``_bucket``... suffixes): services/common/metrics.py, the workers' and the
    gateway's; importing a module registers its metrics."""
    import gateway.access_log  # noqa: F401
    import gateway.metrics  # noqa: F401
    import gateway.readcache  # noqa: F401
    import services.common.metrics  # noqa: F401
    import services.common.observability  # noqa: F401

    return {name for names in REGISTRY._collector_to_names.values() for name in names}


DEFINED = defined_names() | {"up"}  # `up`: Prometheus's own, for every target


def test_metric_names_reads_only_metrics():
    """The helper the checks below rely on: functions, grouping labels,
    matchers and durations are not taken for metrics."""
    assert metric_names(
        'sum by (service, queue) (rate(darkroom_x_total{a="b"}[5m])) / max(darkroom_y) > 0'
    ) == {"darkroom_x_total", "darkroom_y"}
    assert metric_names("time() - max(darkroom_t) > 2 * 86400") == {"darkroom_t"}


# ------------------------------------------------------------------ metrics in the docs


def test_every_darkroom_metric_is_in_the_operations_metrics_table():
    """docs/operations.md names each metric the code defines, once."""
    text = (REPO / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(darkroom_\w+)[{`]", text, flags=re.M))
    families = {n for n in DEFINED if n.startswith("darkroom_")}
    # a counter registers name and name_total/_created; histograms _bucket/_count/_sum
    bases = {re.sub(r"_(total|created|bucket|count|sum)$", "", n) for n in families}
    for base in sorted(bases):
        assert base in documented or f"{base}_total" in documented, base
    for name in documented:
        assert name in families, f"docs/operations.md names {name}, which no code defines"


# ------------------------------------------------------------------ Prometheus


def metrics_ports() -> dict[str, int]:
    """Compose service -> the port its /metrics answers on (the gateway's
    internal port; each nameko service's <SERVICE>_METRICS_PORT)."""
    ports = {}
    for name, service in SERVICES.items():
        env = service.get("environment") or {}
        if name == "gateway":
            ports[name] = int(env["GATEWAY_INTERNAL_PORT"])
            continue
        argv = list(service.get("command") or [])
        if argv[:2] == ["nameko", "run"]:
            config = REPO / argv[argv.index("--config") + 1]
            ports[name] = int(env[secrets.config_variables(config)["METRICS_PORT"]])
    return ports


def test_prometheus_scrapes_every_process_on_its_metrics_port_and_every_replica():
    """Static: each long-running Darkroom process of compose has a scrape job
    that resolves its service name through DNS (every replica) on the port its
    metrics are served on; and the rules file is loaded."""
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    for name, port in metrics_ports().items():
        (sd,) = jobs[name]["dns_sd_configs"]
        assert sd["names"] == [name] and sd["type"] == "A" and sd["port"] == port, name
    assert PROMETHEUS["rule_files"] == ["alerts.yml"]


def needs(tool: str, package: str) -> None:
    """``make test`` installs the tool (deploy/test-tools.sh); without it the
    test skips, or fails with CI=true."""
    if not shutil.which(tool):
        unavailable(tool, f"not installed (apt-get install {package})")


def test_promtool_accepts_the_config_and_the_rules(tmp_path):
    """Prometheus's own checker (Debian's `prometheus` package ships it)."""
    needs("promtool", "prometheus")
    shutil.copy(OBS / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(OBS / "alerts.yml", tmp_path / "alerts.yml")
    for argv in (["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                 ["promtool", "check", "rules", str(tmp_path / "alerts.yml")]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def alert_rules() -> dict[str, dict]:
    return {rule["alert"]: rule for group in ALERTS["groups"] for rule in group["rules"]}


def test_alerts_cover_what_operators_must_hear_about():
    """Static: the rules the issue asks for exist, each reads the metric that
    measures it."""
    rules = alert_rules()
    wanted = {
        "DeadLetters": "darkroom_dead_letters",
        "PrivacyRequestOverdue": "darkroom_privacy_requests",
        "BreachReportOverdue": "darkroom_privacy_breaches_overdue",
        "ProviderCircuitOpen": "darkroom_provider_circuit_open",
        "PurgeBehind": "darkroom_purge_backlog_seconds",
        "LedgerProblems": "darkroom_ledger_verification_problems",
    }
    for alert, metric in wanted.items():
        assert metric in metric_names(rules[alert]["expr"]), alert


def test_every_alert_names_only_defined_metrics_and_a_runbook_that_exists():
    """Static: a typo in a metric name makes an alert that never fires; and
    each runbook link points at a heading of docs/operations.md."""
    headings = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", (REPO / "docs" / "operations.md").read_text(),
                                    flags=re.M)}
    for name, rule in alert_rules().items():
        names = metric_names(rule["expr"])
        assert names, name
        assert names <= DEFINED, (name, names - DEFINED)
        runbook = rule.get("annotations", {}).get("runbook")
        if runbook:
            page, _, anchor = runbook.partition("#")
            assert page == "docs/operations.md" and anchor in headings, (name, runbook)


# ------------------------------------------------------------------ Grafana

# The part of Grafana's dashboard model the provisioned dashboard uses: Grafana
# publishes no standalone JSON schema for it, so the fields it needs are written
# down here (names and types as in Grafana's dashboard JSON model).
DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "time"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "time": {"type": "object", "required": ["from", "to"]},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["id", "title", "type", "gridPos", "targets", "datasource"],
            "properties": {
                "id": {"type": "integer"},
                "type": {"enum": ["timeseries", "stat", "gauge", "table", "bargauge"]},
                "gridPos": {"type": "object", "required": ["h", "w", "x", "y"],
                            "properties": {"w": {"type": "integer", "maximum": 24},
                                           "x": {"type": "integer", "maximum": 23}}},
                "datasource": {"type": "object", "required": ["type", "uid"]},
                "targets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["refId", "expr"],
                    "properties": {"expr": {"type": "string", "minLength": 1}}}},
            },
        }},
    },
}


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboards_are_valid_and_query_defined_metrics(path):
    """Static (no Grafana here): the JSON parses and fits the dashboard model
    above, panel ids and refIds are unique, every panel queries the
    provisioned datasource, and every query names metrics the code defines."""
    dashboard = json.loads(path.read_text())
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    (source,) = DATASOURCES["datasources"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names and names <= DEFINED, (panel["title"], names - DEFINED)


def test_grafana_provisioning_matches_what_compose_mounts():
    """Static: the datasource points at compose's prometheus service, the
    dashboard provider reads the directory compose mounts the dashboards at."""
    (source,) = DATASOURCES["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = DASHBOARD_PROVIDERS["providers"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in SERVICES["grafana"]["volumes"]
                  if v.startswith("./"))
    assert mounts["./observability/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./observability/grafana/provisioning"] == "/etc/grafana/provisioning"


# ------------------------------------------------------------------ compose profiles


def test_observability_and_tls_services_run_only_in_their_profiles():
    """Static: `docker compose up` alone starts neither; their files exist;
    their UIs are published on this machine only (Caddy on 80/443 is the
    one meant for the world)."""
    for name, profile in (("prometheus", "observability"), ("grafana", "observability"),
                          ("caddy", "tls")):
        service = SERVICES[name]
        assert service["profiles"] == [profile], name
        for volume in service.get("volumes", []):
            if volume.startswith("./"):
                assert (DEPLOY / volume.split(":")[0]).exists(), (name, volume)
    for name in ("prometheus", "grafana"):
        for port in SERVICES[name]["ports"]:
            assert port.startswith("127.0.0.1:"), (name, port)
    prom_mounts = {v.split(":")[1] for v in SERVICES["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= prom_mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]


def test_every_container_rotates_its_logs_through_one_anchor():
    """Static: each service (one-shot jobs too) logs through the json-file
    driver with a size cap and a file count, all from the x-logging anchor."""
    anchor = COMPOSE["x-logging"]
    assert anchor["driver"] == "json-file"
    assert re.fullmatch(r"\d+m", anchor["options"]["max-size"])
    assert int(anchor["options"]["max-file"]) >= 1
    for name, service in SERVICES.items():
        assert service.get("logging") == anchor, name
    assert COMPOSE_TEXT.count("x-logging: &logging") == 1
    assert COMPOSE_TEXT.count("max-size") == 1  # no service sets its own


# ------------------------------------------------------------------ TLS


def caddy_sites() -> dict[str, str]:
    """Site address -> the upstream of its reverse_proxy (a parse of the
    Caddyfile's top-level blocks)."""
    sites, depth, current = {}, 0, None
    for raw in CADDYFILE.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if depth == 0 and line.endswith("{"):
            current = line[:-1].strip()
        elif depth == 1 and line.startswith("reverse_proxy"):
            sites[current] = line.split()[1]
        depth += line.count("{") - line.count("}")
        assert depth >= 0, raw
    assert depth == 0
    return sites


def test_caddy_fronts_the_gateway_and_minios_public_endpoint():
    """Static: the API's name proxies to the gateway's public port (never the
    internal one), the files' name to MinIO's S3 port; both names come from
    variables compose passes to the caddy container."""
    gateway_port = SERVICES["gateway"]["environment"]["GATEWAY_PORT"]
    assert caddy_sites() == {"{$DARKROOM_DOMAIN}": f"gateway:{gateway_port}",
                             "{$FILES_DOMAIN}": "minio:9000"}
    env = SERVICES["caddy"]["environment"]
    assert {"DARKROOM_DOMAIN", "FILES_DOMAIN"} <= set(env)
    published = {p.rsplit(":", 1)[1] for p in SERVICES["caddy"]["ports"]}
    assert {"80", "443", "443/udp"} <= published


def test_caddy_validates_the_caddyfile():
    """Caddy's own checker (Debian's `caddy` package): adapts and provisions
    the config without serving it."""
    needs("caddy", "caddy")
    env = {**os.environ, "DARKROOM_DOMAIN": "api.example.com",
           "FILES_DOMAIN": "files.example.com", "HOME": "/tmp",
           "XDG_DATA_HOME": "/tmp/caddy-validate", "XDG_CONFIG_HOME": "/tmp/caddy-validate"}
    done = subprocess.run(["caddy", "validate", "--adapter", "caddyfile", "--config",
                           str(CADDYFILE)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ PostgreSQL connections

# The replicas docs/scaling.md's connection budget plans for, and the other
# connections: the postgres-init job, backups, an operator's psql.
PLANNED_REPLICAS = {"auth": 2, "notifications": 2, "storage": 2, "billing": 2,
                    "generation": 4, "privacy": 2}
OPS_CONNECTIONS = 10
SUPERUSER_RESERVED = 3  # PostgreSQL's superuser_reserved_connections default


def connection_budget() -> int:
    per_process = engine.POOL_SIZE + engine.POOL_OVERFLOW
    return (sum(PLANNED_REPLICAS.values()) * per_process + OPS_CONNECTIONS
            + SUPERUSER_RESERVED)


def test_postgres_max_connections_covers_the_budget_and_the_docs_state_it():
    """Static: every service with a database is in the plan, compose's
    max_connections is at least the budget computed from the pool sizes, and
    docs/scaling.md states both numbers."""
    init = SERVICES["postgres-init"]["command"]
    assert set(PLANNED_REPLICAS) == set(init[2:])  # the databases the init job creates
    command = SERVICES["postgres"]["command"]
    (setting,) = [a for a in command if a.startswith("max_connections=")]
    max_connections = int(setting.split("=")[1])
    assert max_connections >= connection_budget()
    scaling = (REPO / "docs" / "scaling.md").read_text()
    assert f"max_connections={max_connections}" in scaling
    assert f"**{connection_budget()}**" in scaling


def test_a_record_carrying_an_unrecorded_refusal_is_dropped():
    """Someone under the minimum age leaves no log line (nameko logs an expected
    error with exc_info and the error among its arguments)."""
    import logging

    from services.common.errors import DomainError
    from services.common.observability import CorrelationFilter

    under = DomainError("under_minimum_age", "too young", 400)
    other = DomainError("weak_password", "choose another", 400)
    keep = CorrelationFilter("auth")

    def record(exc, args):
        return logging.LogRecord("nameko.containers", logging.WARNING, __file__, 1,
                                 "(expected) error handling worker %s: %s", args,
                                 (type(exc), exc, None))

    assert keep.filter(record(under, ("<worker>", under))) is False
    assert keep.filter(logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (under,),
                                         None)) is False
    assert keep.filter(record(other, ("<worker>", other))) is True
