"""gunicorn settings for the gateway (compose and `make dev` use this file).

Every value can be set from the environment; deploy/.env.example lists them."""

import os

bind = [f"{os.environ.get('GATEWAY_HOST', '127.0.0.1')}:{os.environ.get('GATEWAY_PORT', '8000')}"]
# /metrics and /readyz only here when set (gateway.yaml's INTERNAL_PORT reads the same variable)
if os.environ.get("GATEWAY_INTERNAL_PORT", ""):
    if os.environ["GATEWAY_INTERNAL_PORT"] == os.environ.get("GATEWAY_PORT", "8000"):
        # the API would answer 404 to everything but the health paths
        raise SystemExit("GATEWAY_INTERNAL_PORT must differ from GATEWAY_PORT")
    bind.append(f"{os.environ.get('GATEWAY_INTERNAL_HOST', '127.0.0.1')}:"
                f"{os.environ['GATEWAY_INTERNAL_PORT']}")
workers = int(os.environ.get("GATEWAY_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GATEWAY_THREADS", "8"))
timeout = int(os.environ.get("GATEWAY_WORKER_TIMEOUT", "60"))
# Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
# connections over them by address. On one shared socket a burst of keep-alive
# connections (wrk's 16, a proxy's pool) could all land on the worker that woke first,
# which then served them on one core while the other idled: a quarter of the bench's
# measurements at 16 connections (docs/scaling.md "The read path"). The catch: a second
# gunicorn of the same user started on the same port shares it instead of failing.
reuse_port = os.environ.get("GATEWAY_REUSE_PORT", "true").strip().lower() in ("1", "true", "yes", "on")
graceful_timeout = 20
# gunicorn's longest request line (its default is 4094 bytes): a query of several
# fields each at its documented maximum length, in multi-byte characters, fits and
# gets the API's own 400 rather than gunicorn's HTML 414
limit_request_line = 8190
accesslog = None  # the app logs each request as JSON
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# No control socket: nothing uses it, its default path ($HOME/.gunicorn) is shared by
# every gateway on a machine and read-only in the container image.
control_socket_disable = True


# Prometheus multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set, every worker
# writes its samples there and the gateway's /metrics adds them all up.
# And the read cache's write stamps, shared by the workers.
def on_starting(server):
    # the read cache's write stamps: shared memory made here, in the master, so that
    # every worker forked from it shares them (gateway/readcache.py)
    from gateway.readcache import host_stamps

    host_stamps()
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):  # samples of a previous run
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
