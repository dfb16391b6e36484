"""The stack the outage tests run jobs on: real billing, storage (s3
backend), generation and gateway processes (their Procfile commands) on
``amqp_uri``, auth faked (tests/integration/probe_service.py: verified users,
and ``authenticate`` answers the gateway for a bearer ``fake-<user id>``),
one OpenAI-compatible provider for text-to-image.
"""

from __future__ import annotations

from types import SimpleNamespace

from tests.conftest import S3Endpoint, base_env, free_port, providers_file
from tests.integration.probe_service import start_fake_auth, wait_consuming


def start_job_stack(start_process, tmp_path_factory, amqp_uri: str, *, databases: dict[str, str],
                    s3: S3Endpoint, s3_url: str, bucket: str, provider_url: str,
                    services: dict, generation: dict, gateway: dict) -> SimpleNamespace:
    """``databases``: the URL of each of billing, storage and generation;
    ``s3_url``: where storage reaches the store (the endpoint, or a proxy in
    front of it); ``services`` (the three), ``generation``, ``gateway``: more
    of their environment.
    Returns ``procs`` (by name) and ``base`` (the gateway's URL), once every
    process is ready and the job events are consumed."""
    common = dict(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1, **services)
    start_fake_auth(start_process, tmp_path_factory.mktemp("fake-auth"), amqp_uri)
    ports = {name: free_port() for name in ("billing", "storage", "generation", "gateway")}
    procs = {
        "billing": start_process("billing", base_env(
            **common, BILLING_DATABASE_URL=databases["billing"],
            BILLING_METRICS_PORT=ports["billing"])),
        "storage": start_process("storage", base_env(
            **common, STORAGE_DATABASE_URL=databases["storage"],
            STORAGE_METRICS_PORT=ports["storage"], STORAGE_BACKEND="s3", S3_ENDPOINT=s3_url,
            S3_ACCESS_KEY=s3.access_key, S3_SECRET_KEY=s3.secret_key, S3_BUCKET=bucket,
            S3_REGION=s3.region)),
        "generation": start_process("generation", base_env(
            **common, GENERATION_DATABASE_URL=databases["generation"],
            GENERATION_METRICS_PORT=ports["generation"],
            GENERATION_PROVIDERS_FILE=providers_file(
                tmp_path_factory.mktemp("providers"),
                {"openai": {"type": "openai_images", "base_url": provider_url,
                            "timeout_s": 180}},
                {"text-to-image": ["openai"]}, retry={"attempts": 1}),
            **generation)),
    }
    for name, proc in procs.items():
        proc.wait_ready(f"http://127.0.0.1:{ports[name]}/readyz")
    procs["gateway"] = start_process("gateway", base_env(
        AMQP_URI=amqp_uri, GATEWAY_PORT=ports["gateway"], GATEWAY_WORKERS=1,
        RATELIMIT_ENABLED="false", **gateway))
    base = f"http://127.0.0.1:{ports['gateway']}"
    procs["gateway"].wait_ready(f"{base}/healthz")
    wait_consuming(amqp_uri, "evt-billing-credits_reserved--generation.credits_reserved",
                   procs["generation"])
    wait_consuming(amqp_uri, "evt-generation-job_requested--billing.job_requested",
                   procs["billing"])
    return SimpleNamespace(procs=procs, base=base)
