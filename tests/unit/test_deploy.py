"""Static checks of the deployment files (no Docker engine runs in CI).

The compose file must be valid against the Compose Specification, run the same
commands as `make dev` (deploy/Procfile), point at config files and code that
exist, hand each process exactly the variables its config reads, agree with
deploy/.env.example, start things in a sound order with consistent ports and
healthchecks, stay scalable, and build from a Dockerfile whose entrypoints
exist. What these files do at run time (the PostgreSQL init script, the
RabbitMQ definitions, migrations under a lock) is exercised for real in
tests/integration/test_deploy_runtime.py.
"""

from __future__ import annotations

import base64
import importlib
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import jsonschema
import pytest
import yaml

from services.common import secrets
from services.common.messaging import DEAD_LETTER_EXCHANGE, DLQ_PREFIX, RETRY_PREFIX

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_TEXT = (DEPLOY / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
# The cluster variant: an override of the base file (three RabbitMQ nodes, replicas)
CLUSTER_TEXT = (DEPLOY / "docker-compose.cluster.yml").read_text()
CLUSTER = yaml.safe_load(CLUSTER_TEXT)
ENV_EXAMPLE_TEXT = (DEPLOY / ".env.example").read_text()
ENV_EXAMPLE = secrets.env_file_entries(ENV_EXAMPLE_TEXT, include_commented=True)
ENV_REQUIRED = secrets.env_file_entries(ENV_EXAMPLE_TEXT)  # the active lines

# Read by every Darkroom process outside its config file (services/common/secrets.py).
MODE_VARIABLES = {"DARKROOM_ENV"}
# Variables a config file reads that compose deliberately does not pass, and why.
NOT_WIRED = {
    "storage": {"STORAGE_FS_ROOT": "the fs backend's; compose runs the s3 backend"},
    "gateway": {"S3_ENDPOINT": "the console's CSP names S3_PUBLIC_ENDPOINT, which compose sets"},
}
# The vendors' keys generation passes through for a providers file to name as ${NAME}
# (docs/providers.md): no config reads them by name; one a file names but that is unset
# stops generation at start, so they have no default.
PROVIDER_KEYS = {"OPENAI_API_KEY", "ARK_API_KEY", "DASHSCOPE_API_KEY", "DEEPSEEK_API_KEY",
                 "OPENROUTER_API_KEY", "GEMINI_API_KEY", "REPLICATE_API_TOKEN", "FAL_KEY",
                 "VIDEO_API_KEY"}
# An OpenID provider's settings auth reads from the environment by the name
# AUTH_OIDC_PROVIDERS gives it (services/auth/settings.py), not from its config
# file: compose passes Google's; they have no default.
OIDC_PROVIDER_VARIABLES = {f"AUTH_OIDC_GOOGLE_{key}" for key in
                           ("ISSUER", "CLIENT_ID", "CLIENT_SECRET", "SCOPES")}
PROVIDER_FILES = sorted((DEPLOY / "providers").glob("*.yaml"))


def procfile() -> dict[str, list[str]]:
    lines = [line for line in (DEPLOY / "Procfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {name.strip(): shlex.split(cmd)
            for name, _, cmd in (line.partition(":") for line in lines)}


def darkroom_services() -> list[str]:
    """Compose services that run the Darkroom image."""
    return sorted(name for name, svc in SERVICES.items() if svc.get("image") == "darkroom:latest")


def long_running() -> list[str]:
    return sorted(name for name, svc in SERVICES.items() if svc.get("restart") != "no")


def argv_of(name: str) -> list[str]:
    service = SERVICES[name]
    return list(service.get("entrypoint") or []) + list(service.get("command") or [])


# `darkroom-ops backup` reads backup.yaml and every service's config file (the
# databases and the object store are the services'); it needs only these of them.
BACKUP_READS = {"AUTH_DATABASE_URL", "NOTIFICATIONS_DATABASE_URL", "STORAGE_DATABASE_URL",
                "BILLING_DATABASE_URL", "GENERATION_DATABASE_URL", "PRIVACY_DATABASE_URL",
                "STORAGE_BACKEND", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET",
                "S3_REGION", "S3_SECURE", "AUTH_SECRET_KEY", "BILLING_PSEUDONYM_KEY",
                "PRIVACY_PSEUDONYM_KEY", "MAIL_SECRETS_KEY"}
BACKED_UP = ("auth", "notifications", "storage", "billing", "generation", "privacy")
# Long-running but no Procfile process and no metrics port: a loop with a command
# healthcheck (`darkroom-ops backup check`).
SCHEDULED = {"backup"}


def files_read_by(name: str) -> list[Path]:
    """The files whose variables a compose service's process reads."""
    argv = argv_of(name)
    if argv[:2] == ["darkroom-ops", "backup"]:
        return [DEPLOY / "config" / "ops.yaml", DEPLOY / "config" / "backup.yaml",
                *(DEPLOY / "config" / f"{s}.yaml" for s in BACKED_UP)]
    if argv[0] == "darkroom-ops":
        return [DEPLOY / "config" / "ops.yaml"]
    if argv[0] == "python":
        return [REPO / argv[1]]
    files = [REPO / argv[argv.index("--config") + 1]]
    if argv[0] == "gunicorn":  # the app factory reads the gateway's YAML
        files.append(DEPLOY / "config" / "gateway.yaml")
    return files


def variables_in(path: Path) -> set[str]:
    text = "\n".join(line for line in path.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    names = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    names |= set(re.findall(r"environ\.get\(\s*['\"]([A-Z0-9_]+)", text))
    names |= set(re.findall(r"environ\[['\"]([A-Z0-9_]+)", text))
    return names


def not_wired(name: str) -> set[str]:
    """NOT_WIRED's variables of ``name``; for the backup service, every variable of the
    services' config files it does not use."""
    if name == "backup":
        return set().union(*(variables_in(p) for p in files_read_by(name)
                             if p.stem in BACKED_UP)) - BACKUP_READS
    return set(NOT_WIRED.get(name, {}))


def reads(name: str) -> set[str]:
    names: set[str] = set()
    for path in files_read_by(name):
        names |= variables_in(path)
    return names


def config_defaults(name: str) -> dict[str, str]:
    """Variable → its default in the files a process reads."""
    defaults: dict[str, str] = {}
    for path in files_read_by(name):
        text = path.read_text()
        for var, default in re.findall(r"\$\{([A-Z0-9_]+):([^}]*)\}", text):
            defaults.setdefault(var, default)
        for var, default in re.findall(
                r"environ\.get\(\s*['\"]([A-Z0-9_]+)['\"]\s*,\s*['\"]([^'\"]*)['\"]", text):
            defaults.setdefault(var, default)
    return defaults


def environment(name: str) -> dict:
    return SERVICES[name].get("environment") or {}


def interpolated(value) -> set[str]:
    return set(re.findall(r"\$\{([A-Z0-9_]+)", str(value or "")))


def compose_interpolations() -> dict[str, str | None]:
    """Every ${VAR...} of the compose file → its `:-` default (None if it has none)."""
    found: dict[str, str | None] = {}
    for var, op, rest in re.findall(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}",
                                    COMPOSE_TEXT + CLUSTER_TEXT):
        if op.endswith("-"):
            found[var] = rest
        else:
            found.setdefault(var, None)
    return found


def bare_variables() -> set[str]:
    """Variables compose passes through from deploy/.env when set (no value given)."""
    return {var for name in SERVICES for var, value in environment(name).items() if value is None}


# ------------------------------------------------------------------ compose and Procfile


def test_compose_file_matches_the_compose_specification():
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(COMPOSE)


def test_the_cluster_override_matches_the_compose_specification():
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(CLUSTER)


CLUSTER_NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")


def amqp_hosts(uri: str) -> list[str]:
    """The hosts of a failover AMQP_URI (its credentials are ${...} interpolations)."""
    return [re.fullmatch(r"amqp://.+@([a-z0-9-]+):5672/", part).group(1)
            for part in uri.split(";")]


def test_the_cluster_override_runs_three_peer_discovered_nodes_sharing_the_cookie():
    cluster = CLUSTER["services"]
    conf = (DEPLOY / "rabbitmq" / "cluster.conf").read_text()
    assert "cluster_formation.peer_discovery_backend = classic_config" in conf
    named = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ = rabbit@(\S+)$", conf,
                       re.M)
    assert named == list(CLUSTER_NODES)
    for node in CLUSTER_NODES:
        merged = {**SERVICES.get(node, {}), **cluster[node]}
        assert merged["image"] == SERVICES["rabbitmq"]["image"]  # one version everywhere
        # the node name rabbit@<hostname> is what the others look for, and the
        # compose service name is what resolves
        assert merged["hostname"] == node
        env = {**SERVICES.get(node, {}).get("environment", {}), **cluster[node]["environment"]}
        assert env["RABBITMQ_ERLANG_COOKIE"] == (
            "${RABBITMQ_ERLANG_COOKIE:?set RABBITMQ_ERLANG_COOKIE in deploy/.env}")
        assert "./rabbitmq/cluster.conf:/etc/rabbitmq/conf.d/20-cluster.conf:ro" in (
            cluster[node]["volumes"])
        assert merged["healthcheck"]["test"] == SERVICES["rabbitmq"]["healthcheck"]["test"]
    data = set()
    for node in CLUSTER_NODES:
        volumes = SERVICES.get(node, {}).get("volumes", []) + cluster[node]["volumes"]
        data |= {v.split(":")[0] for v in volumes if v.endswith(":/var/lib/rabbitmq")}
    assert len(data) == 3  # each node its own data volume, declared
    assert data <= set(COMPOSE["volumes"]) | set(CLUSTER["volumes"])
    # it amends the base file's services and adds the two nodes, nothing else
    assert set(cluster) - set(SERVICES) == {"rabbitmq-2", "rabbitmq-3"}
    # the queues are declared once every node runs: each gets a member on each node
    assert set(cluster["rabbitmq-init"]["depends_on"]) == {"rabbitmq-2", "rabbitmq-3"}
    assert COMPOSE["x-queue-env"]["AMQP_QUEUE_TYPE"] == "${AMQP_QUEUE_TYPE:-quorum}"


def test_every_process_of_the_cluster_override_names_the_three_nodes():
    cluster = CLUSTER["services"]
    on_broker = [name for name, service in SERVICES.items()
                 if "AMQP_URI" in (service.get("environment") or {})]
    firsts = []
    for name in on_broker:
        uri = cluster[name]["environment"]["AMQP_URI"]
        hosts = amqp_hosts(uri)
        assert sorted(hosts) == sorted(CLUSTER_NODES), name
        # the same credentials as the base file's single broker
        assert uri.split(";")[0].replace(f"@{hosts[0]}:", "@rabbitmq:") == (
            environment(name)["AMQP_URI"]), name
        if name in procfile():
            firsts.append(hosts[0])
    # the services' connections spread: each node is some services' first
    assert set(firsts) == set(CLUSTER_NODES)


def test_the_cluster_override_runs_two_replicas_of_every_nameko_service():
    cluster = CLUSTER["services"]
    nameko = [name for name, argv in procfile().items() if argv[0] == "nameko"]
    assert nameko
    for name in nameko:
        assert cluster[name]["deploy"] == {"replicas": 2}, name
        assert "command" not in cluster[name]  # the base file's Procfile command
    assert "replicas" not in cluster["gateway"].get("deploy", {})  # one published port


def test_every_procfile_process_runs_in_compose_with_the_same_command():
    processes = procfile()
    darkroom = set(darkroom_services()) & set(long_running()) - SCHEDULED
    assert sorted(processes) == sorted(darkroom)
    for name, argv in processes.items():
        assert SERVICES[name]["command"] == argv, name


@pytest.mark.parametrize("name", darkroom_services())
def test_commands_point_at_existing_config_and_code(name):
    argv = argv_of(name)
    for path in files_read_by(name):
        assert path.is_file(), path
    if argv[0] == "python":
        return  # a script: its file exists (above), it runs in tests/integration
    target = argv[-1] if argv[0] != "darkroom-ops" else None
    if target:
        module_name, _, attr = target.partition(":")
        obj = getattr(importlib.import_module(module_name), attr)
        if argv[0] == "nameko":
            assert obj.name == name  # the nameko service name is the process name
            # ...and its config file follows the convention ProductionSecrets relies on
            assert argv[argv.index("--config") + 1] == f"deploy/config/{name}.yaml"


def console_scripts() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")}


@pytest.mark.parametrize("name", darkroom_services())
def test_every_command_is_an_installed_entry_point(name):
    program = argv_of(name)[0]
    if program == "python":
        return
    scripts = console_scripts()
    assert program in scripts, f"{program} is not a console script of any installed package"
    distribution = scripts[program].dist.name.lower()
    assert distribution in ("darkroom", "nameko", "gunicorn"), distribution
    assert callable(scripts[program].load())


# ------------------------------------------------------------------ environment


@pytest.mark.parametrize("name", darkroom_services())
def test_compose_passes_exactly_the_variables_a_process_reads(name):
    read = reads(name)
    given = set(environment(name))
    unread = sorted(given - read - MODE_VARIABLES
                    - (PROVIDER_KEYS if name == "generation" else set())
                    - (OIDC_PROVIDER_VARIABLES if name == "auth" else set()))
    assert not unread, f"{name} sets variables no config reads: {unread}"
    missing = sorted(read - given - not_wired(name))
    assert not missing, f"{name} reads variables compose neither sets nor passes: {missing}"


def test_every_darkroom_process_gets_the_mode():
    for name in darkroom_services():
        if argv_of(name)[0] != "python":
            assert environment(name).get("DARKROOM_ENV") == "${DARKROOM_ENV:-production}", name


def test_env_example_lists_every_variable_compose_takes_from_it():
    listed = set(ENV_EXAMPLE)
    taken = set(compose_interpolations()) | bare_variables()
    assert not sorted(taken - listed), sorted(taken - listed)


def test_every_env_example_variable_is_used():
    taken = set(compose_interpolations()) | bare_variables()
    assert not sorted(set(ENV_EXAMPLE) - taken), sorted(set(ENV_EXAMPLE) - taken)


def test_required_variables_are_active_lines_of_the_example():
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_TEXT + CLUSTER_TEXT))
    assert not sorted(required - set(ENV_REQUIRED)), sorted(required - set(ENV_REQUIRED))
    optional = set(ENV_REQUIRED) - required
    assert optional == {"DARKROOM_ENV"}, "active lines are the required settings"


def test_commented_defaults_in_the_example_are_the_real_defaults():
    """`# NAME=value` documents the default: it must be what happens without it."""
    compose_defaults = compose_interpolations()
    for var, shown in ENV_EXAMPLE.items():
        if var in ENV_REQUIRED or var in PROVIDER_KEYS or var in OIDC_PROVIDER_VARIABLES:
            continue
        if compose_defaults.get(var) is not None:
            assert shown == compose_defaults[var], var
            continue
        actual = {config_defaults(name).get(var) for name in darkroom_services()
                  if var in environment(name)} - {None}
        assert actual, f"{var}: no default found in the files that read it"
        assert actual == {shown}, f"{var}: the example says {shown!r}, the configs {actual}"


def test_every_config_variable_is_wired_or_deliberately_not():
    """A variable any config file reads reaches its process from deploy/.env, is
    fixed by compose, or is listed in NOT_WIRED with a reason."""
    for path in (DEPLOY / "config").iterdir():
        for var in variables_in(path):
            readers = [n for n in darkroom_services() if path in files_read_by(n)]
            for name in readers:
                assert var in environment(name) or var in not_wired(name), (name, var)


def test_the_bundled_providers_files_variables_reach_generation():
    """Every ${NAME} an example providers file names is passed to generation, and the
    compose file mounts the files where GENERATION_PROVIDERS_FILE finds them."""
    assert any(p.name == "local.yaml" for p in PROVIDER_FILES)
    for path in PROVIDER_FILES:
        for var in variables_in(path):
            assert var in environment("generation"), (path.name, var)
            assert var in ENV_EXAMPLE, (path.name, var)
    assert "./providers:/app/deploy/providers:ro" in SERVICES["generation"]["volumes"]
    assert PROVIDER_KEYS <= set(environment("generation")) & set(ENV_EXAMPLE)


# ------------------------------------------------------------------ databases


def database_services() -> list[str]:
    return sorted(name for name in darkroom_services()
                  if f"{name.upper()}_DATABASE_URL" in environment(name))


def test_each_service_has_its_own_database_and_role():
    init = SERVICES["postgres-init"]
    assert init["command"][:2] == ["sh", "/init/init-databases.sh"]
    assert sorted(init["command"][2:]) == database_services()
    nameko = sorted(n for n in darkroom_services() if argv_of(n)[0] == "nameko")
    assert database_services() == nameko  # every nameko service has a database
    for name in database_services():
        password = f"{name.upper()}_DB_PASSWORD"
        url = environment(name)[f"{name.upper()}_DATABASE_URL"]
        expected = (f"postgresql://{name}:${{{password}:?set {password} in deploy/.env}}"
                    f"@postgres:5432/{name}")
        assert url == expected, name
        assert init["environment"][password] == f"${{{password}:?set {password} in deploy/.env}}"
    assert init["environment"]["PGHOST"] == "postgres"
    mounted = {v.split(":")[1]: v.split(":")[0] for v in init["volumes"]}
    assert (DEPLOY / mounted["/init/init-databases.sh"]).resolve() == (
        DEPLOY / "postgres" / "init-databases.sh")


def test_the_init_script_revokes_public_access_and_takes_passwords_from_the_environment():
    script = (DEPLOY / "postgres" / "init-databases.sh").read_text()
    assert 'REVOKE CONNECT, TEMPORARY ON DATABASE :"name" FROM PUBLIC' in script
    assert "LOGIN NOCREATEDB NOCREATEROLE" in script
    assert "\\getenv password DARKROOM_DB_PASSWORD" in script  # never on a command line
    assert "${password}" not in script.split("<<'SQL'")[1]  # no splicing into SQL


# ------------------------------------------------------------------ RabbitMQ


def event_queue_names() -> list[str]:
    """The queues nameko declares for every event handler of every service."""
    from nameko.events import EventHandler
    from nameko.extensions import ENTRYPOINT_EXTENSIONS_ATTR

    names = []
    for name in darkroom_services():
        argv = argv_of(name)
        if argv[0] != "nameko":
            continue
        module_name, _, attr = argv[-1].partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        for method_name in dir(cls):
            for entrypoint in getattr(getattr(cls, method_name), ENTRYPOINT_EXTENSIONS_ATTR, ()):
                if isinstance(entrypoint, EventHandler):
                    names.append(f"evt-{entrypoint.source_service}-{entrypoint.event_type}"
                                 f"--{cls.name}.{method_name}")
    return names


def test_the_dead_letter_policy_covers_every_event_queue_and_nothing_else():
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    policies = {p["name"]: p for p in definitions["policies"]}
    # classic queues: the DLX alone (RabbitMQ skips a policy naming delivery-limit
    # for them); quorum queues: a higher-priority one with the delivery limit too
    classic, quorum = policies["darkroom-dead-letter"], policies["darkroom-dead-letter-quorum"]
    assert set(classic["definition"]) == {"dead-letter-exchange"}
    assert quorum["definition"]["delivery-limit"] > 0
    assert quorum["priority"] > classic["priority"]
    assert classic["pattern"] == quorum["pattern"]
    pattern = re.compile(classic["pattern"])
    queues = event_queue_names()
    assert len(queues) >= 3
    for queue in queues:
        assert pattern.search(queue), queue
    for other in ("rpc-auth", "rpc.reply-gateway-1", f"{DLQ_PREFIX}{queues[0]}",
                  f"{RETRY_PREFIX}1000ms", "dlq.broker"):
        assert not pattern.search(other), other
    for policy in policies.values():
        assert policy["apply-to"] == "queues"
    exchange = classic["definition"]["dead-letter-exchange"]
    assert quorum["definition"]["dead-letter-exchange"] == exchange
    assert exchange != DEAD_LETTER_EXCHANGE  # the services declare that one (direct)
    assert exchange in {e["name"] for e in definitions["exchanges"]}
    bound = [b["destination"] for b in definitions["bindings"] if b["source"] == exchange]
    assert bound and all(q.startswith(DLQ_PREFIX) for q in bound)  # `darkroom-ops dlq list`
    assert {q["name"] for q in definitions["queues"]} == set(bound)


def load_apply_definitions():
    spec = importlib.util.spec_from_file_location(
        "apply_definitions", DEPLOY / "rabbitmq" / "apply_definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dead_letters_expire_by_a_policy_on_every_dead_letter_queue_only():
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    apply = load_apply_definitions()
    (ttl,) = [p for p in definitions["policies"] if p["name"] == apply.TTL_POLICY]
    assert ttl["definition"] == {"message-ttl": 14 * 86_400_000}  # the documented default
    assert ttl["apply-to"] == "queues"
    pattern = re.compile(ttl["pattern"])
    queues = event_queue_names()
    for dlq in [f"{DLQ_PREFIX}{q}" for q in queues] + ["dlq.broker"]:
        assert pattern.search(dlq), dlq
        # the only policy a dead-letter queue matches (a queue gets one policy)
        others = [p["name"] for p in definitions["policies"]
                  if p is not ttl and re.search(p["pattern"], dlq)]
        assert others == [], (dlq, others)
    for other in [*queues, "rpc-auth", f"{RETRY_PREFIX}1000ms"]:
        assert not pattern.search(other), other


def test_the_dead_letter_ttl_comes_from_the_setting():
    apply = load_apply_definitions()
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    assert apply.dead_letter_ttl_ms("14") == 14 * 86_400_000
    assert apply.dead_letter_ttl_ms("0.5") == 43_200_000
    for bad in ("0", "-1", "x", "nan", "50"):  # RabbitMQ's TTL timer ends at 2^32-1 ms
        with pytest.raises(SystemExit):
            apply.dead_letter_ttl_ms(bad)
    changed = apply.with_dead_letter_ttl(definitions, 1234)
    (ttl,) = [p for p in changed["policies"] if p["name"] == apply.TTL_POLICY]
    assert ttl["definition"]["message-ttl"] == 1234
    assert [p for p in changed["policies"] if p["name"] != apply.TTL_POLICY] == [
        p for p in definitions["policies"] if p["name"] != apply.TTL_POLICY]
    assert SERVICES["rabbitmq-init"]["environment"]["DEAD_LETTER_TTL_DAYS"] is None


def test_services_start_after_the_broker_and_database_init_jobs():
    for name in database_services():
        depends = SERVICES[name]["depends_on"]
        assert depends["rabbitmq-init"] == {"condition": "service_completed_successfully"}
        assert depends["postgres-init"] == {"condition": "service_completed_successfully"}
    init = SERVICES["rabbitmq-init"]
    assert init["command"] == ["python", "deploy/rabbitmq/apply_definitions.py"]
    assert init["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
    assert SERVICES["rabbitmq"]["hostname"] == "rabbitmq"  # the data dir follows the node name
    assert SERVICES["rabbitmq"]["image"].endswith("-management")


def test_minio_bucket_is_created_by_the_storage_service():
    from services.storage.backends.s3 import S3Backend

    assert "make_bucket" in Path(importlib.import_module(S3Backend.__module__).__file__).read_text()
    assert SERVICES["storage"]["depends_on"]["minio"] == {"condition": "service_healthy"}


# ------------------------------------------------------------------ order, health, ports


def test_depends_on_waits_for_health_or_completion():
    for name, service in SERVICES.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            condition = spec["condition"]
            target = SERVICES[dependency]
            if condition == "service_healthy":
                assert "test" in target.get("healthcheck", {}), (name, dependency)
            else:
                assert condition == "service_completed_successfully", (name, dependency)
                assert target.get("restart") == "no", (name, dependency)


@pytest.mark.parametrize("name", long_running())
def test_long_running_services_restart_are_bounded_and_checked(name):
    service = SERVICES[name]
    assert service["restart"] == "unless-stopped"
    limits = service["deploy"]["resources"]["limits"]
    assert limits["memory"] and limits["cpus"]
    assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")


def test_the_scheduled_services_check_their_own_work():
    for name in SCHEDULED:
        assert SERVICES[name]["healthcheck"]["test"][:3] == ["CMD", "darkroom-ops", name]


def healthcheck_url(name: str) -> urllib.parse.SplitResult:
    test = SERVICES[name]["healthcheck"]["test"]
    (url,) = re.findall(r"http://[^'\"]+", " ".join(test))
    return urllib.parse.urlsplit(url)


@pytest.mark.parametrize("name", sorted(set(darkroom_services()) & set(long_running()) - SCHEDULED))
def test_healthchecks_target_the_port_the_process_listens_on(name):
    url = healthcheck_url(name)
    argv = argv_of(name)
    env = environment(name)
    assert url.hostname == "127.0.0.1"
    if argv[0] == "gunicorn":
        # the internal listener: /metrics and /readyz live there, never on the public port
        assert url.port == int(env["GATEWAY_INTERNAL_PORT"])
        assert env["GATEWAY_INTERNAL_PORT"] != env["GATEWAY_PORT"]
        assert env["GATEWAY_HOST"] == "0.0.0.0"
        assert url.path == "/healthz"
        published = [p.rsplit(":", 1)[1] for p in SERVICES[name].get("ports", [])]
        assert published == [env["GATEWAY_PORT"]]  # the internal port is not published
    else:
        (config,) = files_read_by(name)
        variable = secrets.config_variables(config)["METRICS_PORT"]
        assert url.port == int(env[variable]), (variable, env.get(variable))
        assert url.path == "/readyz"  # healthy = migrated, connected and consuming


def test_healthcheck_ports_are_distinct_per_service():
    ports = [healthcheck_url(n).port for n in darkroom_services()
             if n in long_running() and n not in SCHEDULED]
    assert len(ports) == len(set(ports))


def test_the_stack_scales_with_compose_up_scale():
    """No container_name anywhere; no Darkroom service but the gateway publishes a
    port (metrics stay inside the network), so `--scale <service>=N` works."""
    for name, service in SERVICES.items():
        assert "container_name" not in service, name
        for port in service.get("ports", []):
            host = str(port).rsplit(":", 1)[0]
            assert "${" in host, f"{name} publishes a fixed host port: {port}"
    for name in darkroom_services():
        if name != "gateway":
            assert not SERVICES[name].get("ports"), name


def test_mailpit_is_only_in_the_dev_and_mail_profiles():
    assert set(SERVICES["mailpit"]["profiles"]) == {"dev", "mail"}
    for name, service in SERVICES.items():
        assert "mailpit" not in (service.get("depends_on") or {}), name


# ------------------------------------------------------------------ Dockerfile


def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            stages.append([])
        if stages and line and not line.startswith("#"):
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_non_root_without_build_tools_and_healthchecked():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert not any(re.search(r"build-essential|gcc", line) for line in final)
    # the one package the runtime installs: the PostgreSQL client, for backups
    installs = [line for line in final if "apt-get install" in line]
    assert all("postgresql-client-16" in line for line in installs), installs
    assert any("build-essential" in line for line in stages[0])
    assert any(line.startswith("HEALTHCHECK ") for line in final)


def test_dockerfile_copies_only_paths_that_exist_and_everything_compose_runs():
    copied = []
    for stage in dockerfile_stages():
        for line in stage:
            if line.startswith("COPY ") and "--from=" not in line:
                sources = line.split()[1:-1]
                for source in sources:
                    assert (REPO / source).exists(), source
                    copied.append(source)
    for name in darkroom_services():
        for path in files_read_by(name):
            relative = path.relative_to(REPO).as_posix()
            assert any(relative == c or relative.startswith(c.rstrip("/") + "/")
                       for c in copied), f"{relative} is not in the image"
    assert "deploy/.env.example" in copied  # the production check compares against it


def test_the_services_resolve_names_without_eventlets_green_dns_wherever_they_run():
    """The image, `make dev` and the tests' processes set EVENTLET_NO_GREENDNS;
    every service then sends its lookups to the thread pool
    (services/common/resolver.py, tests/unit/common/test_resolver.py)."""
    from services.common.resolver import NameLookups
    from services.common.service import DarkroomService
    from tests.conftest import base_env

    runtime_env = " ".join(line for line in dockerfile_stages()[-1] if line.startswith("ENV "))
    assert "EVENTLET_NO_GREENDNS=yes" in runtime_env.split()
    assert re.search(r"^export EVENTLET_NO_GREENDNS := yes$", (REPO / "Makefile").read_text(),
                     re.MULTILINE)
    assert base_env()["EVENTLET_NO_GREENDNS"] == "yes"
    assert isinstance(DarkroomService.name_lookups, NameLookups)


def test_dockerfile_default_command_is_the_gateway_and_exists():
    (cmd,) = [line for line in dockerfile_stages()[-1] if line.startswith("CMD ")]
    argv = json.loads(cmd[len("CMD "):])
    assert argv == procfile()["gateway"]
    assert argv[0] in console_scripts()
    module_name, _, attr = argv[-1].partition(":")
    assert callable(getattr(importlib.import_module(module_name), attr))


def test_dockerignore_keeps_secrets_out_of_the_build_context():
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in ("deploy/.env", ".git", ".venv", "var"):
        assert path in ignored, path


# ------------------------------------------------------------------ secrets end to end


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (what this file uses)."""
    def replace(match):
        var, op, rest = match.group(1), match.group(2), match.group(3)
        current = env.get(var, "")
        if op == ":?" and not current:
            raise KeyError(f"{var}: {rest}")
        if op == ":-" and not current:
            return rest
        return current
    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:[-?])([^}]*))?\}", replace, value)


def container_env(name: str, dotenv: dict[str, str]) -> dict[str, str]:
    env = {}
    for var, value in environment(name).items():
        if value is None:
            if var in dotenv:
                env[var] = dotenv[var]
        else:
            env[var] = interpolate(str(value), dotenv)
    return env


def start_check(name: str, env: dict[str, str], monkeypatch) -> None:
    """What the process's start path does with that environment, up to the check."""
    for var in {v for n in darkroom_services() for v in reads(n)} | MODE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    argv = argv_of(name)
    if argv[0] == "nameko":
        from nameko.containers import ServiceContainer

        from services.common.config import load_config

        module_name, _, attr = argv[-1].partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        ServiceContainer(cls, load_config(REPO / argv[argv.index("--config") + 1]))
    elif argv[0] == "gunicorn":
        from gateway.app import create_app

        create_app(rpc=object())
    elif argv[0] == "darkroom-ops":
        from ops.config import load_ops_config

        config = load_ops_config()
        if argv[1] == "backup":
            from ops.backup import _settings

            _settings(config)


CHECKED = [n for n in darkroom_services() if argv_of(n)[0] != "python"]


@pytest.fixture(scope="module")
def generated_env(tmp_path_factory) -> Path:
    """deploy/.env as `make up` creates it, made by the real Makefile rule."""
    if shutil.which("make") is None:
        pytest.fail("make is needed to run the Makefile's deploy/.env rule")
    root = tmp_path_factory.mktemp("make-env")
    (root / "deploy").mkdir()
    shutil.copy(DEPLOY / ".env.example", root / "deploy" / ".env.example")
    subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "-C", str(root), "deploy/.env"],
                   check=True, capture_output=True)
    return root / "deploy" / ".env"


def test_make_up_creates_env_with_fresh_random_secrets(generated_env):
    assert generated_env.stat().st_mode & 0o777 == 0o600
    made = secrets.env_file_entries(generated_env.read_text())
    placeholders = {k for k, v in ENV_REQUIRED.items() if v.startswith("change-me")}
    assert placeholders
    for var in placeholders:
        if ENV_REQUIRED[var].startswith("change-me-key-ring-"):  # a key ring of one 256-bit key
            key_id, _, key = made[var].partition(":")
            assert key_id == ENV_REQUIRED[var].removeprefix("change-me-key-ring-") + "-1", var
            assert len(base64.b64decode(key, validate=True)) == 32, var
        else:
            assert re.fullmatch(r"[0-9a-f]{48}", made[var]), var
    assert len({made[v] for v in placeholders}) == len(placeholders)  # all different
    assert {k: v for k, v in made.items() if k not in placeholders} == {
        k: v for k, v in ENV_REQUIRED.items() if k not in placeholders}
    before = generated_env.read_text()  # never overwritten once made
    subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "-C",
                    str(generated_env.parent.parent), "deploy/.env"], check=True)
    assert generated_env.read_text() == before


@pytest.mark.parametrize("name", CHECKED)
def test_every_process_starts_in_production_with_the_generated_env(name, generated_env,
                                                                   monkeypatch):
    dotenv = secrets.env_file_entries(generated_env.read_text())
    start_check(name, container_env(name, dotenv), monkeypatch)  # raises if refused


@pytest.mark.parametrize("name", CHECKED)
def test_every_process_refuses_the_example_env_naming_its_secrets(name, monkeypatch):
    env = container_env(name, ENV_REQUIRED)
    assert env["DARKROOM_ENV"] == "production"
    expected = {var for var, value in environment(name).items()
                if value is not None and any(ENV_REQUIRED.get(v, "").startswith("change-me")
                                             for v in interpolated(value))}
    if name == "backup":  # darkroom-ops checks ops.yaml's and backup.yaml's, not the services'
        expected &= {"AMQP_URI", "RABBIT_MANAGEMENT_URL"}  # backup.yaml: test_backup_sets.py
    assert expected
    from ops.errors import OpsError

    with pytest.raises((secrets.ConfigurationRefused, OpsError)) as caught:
        start_check(name, env, monkeypatch)
    message = str(caught.value)
    assert "refuses to start with DARKROOM_ENV=production" in message
    for var in expected:
        assert var in message, (var, message)
    for value in ENV_REQUIRED.values():
        if value.startswith("change-me"):
            assert value not in message


def _gunicorn_binds(monkeypatch, **env) -> list[str]:
    import runpy

    for name in ("GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_INTERNAL_HOST", "GATEWAY_INTERNAL_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(DEPLOY / "config" / "gunicorn.conf.py"))["bind"]


def test_gunicorn_binds_the_internal_port_only_when_set_and_never_onto_the_api(monkeypatch):
    assert _gunicorn_binds(monkeypatch, GATEWAY_PORT="8000") == ["127.0.0.1:8000"]
    assert _gunicorn_binds(monkeypatch, GATEWAY_PORT="8000", GATEWAY_INTERNAL_HOST="0.0.0.0",
                           GATEWAY_INTERNAL_PORT="9100") == ["127.0.0.1:8000", "0.0.0.0:9100"]
    with pytest.raises(SystemExit, match="must differ from GATEWAY_PORT"):
        _gunicorn_binds(monkeypatch, GATEWAY_PORT="8000", GATEWAY_INTERNAL_PORT="8000")
