"""The small HTTP server of a nameko service: /healthz, /readyz, /metrics.

It runs on eventlet's WSGI server in a thread managed by the service container;
this is one of the few places that knows about eventlet (see docs/nameko-notes.md).
"""

from __future__ import annotations

import json
import logging

import eventlet
from eventlet import wsgi
from prometheus_client import make_wsgi_app

log = logging.getLogger(__name__)


def health_app(ready_checks):
    metrics = make_wsgi_app()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            status, body = "200 OK", {"status": "ok"}
        elif path == "/readyz":
            checks = ready_checks()
            ok = all(v == "ok" for v in checks.values())
            status = "200 OK" if ok else "503 Service Unavailable"
            body = {"status": "ok" if ok else "unavailable", "checks": checks}
        else:
            status, body = "404 Not Found", {"error": {"code": "not_found", "message": "no such path"}}
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return app


def serve(container, port: int, ready_checks):
    sock = eventlet.listen(("0.0.0.0", port))
    null_log = logging.getLogger("darkroom.health.access")
    null_log.setLevel(logging.WARNING)
    return container.spawn_managed_thread(
        lambda: wsgi.server(sock, health_app(ready_checks), log=null_log, log_output=False),
        identifier="health-server",
    )
