"""Apply deploy/rabbitmq/definitions.json to Darkroom's RabbitMQ vhost.

    RABBIT_MANAGEMENT_URL=http://user:pass@rabbitmq:15672 AMQP_URI=amqp://user:pass@rabbitmq:5672/ \
        python deploy/rabbitmq/apply_definitions.py

docker compose runs it as the one-shot ``rabbitmq-init`` service at every ``up``,
before any Darkroom service starts (they depend on it completing). Importing
definitions is idempotent, so running it again changes nothing.

What the definitions add: the services dead-letter a failed event themselves
(``services/common/messaging.py`` publishes it to ``dlq.<queue>`` on
``darkroom.dead-letter`` with the error in its headers). The dead-letter
policies are the safety net for what RabbitMQ itself would drop from an event
queue (``evt-*``): a message rejected without requeue, or, on quorum queues,
one redelivered more than ``delivery-limit`` times (a message that kills its
consumer every time). Those land in ``dlq.broker`` with RabbitMQ's
``x-death`` headers; ``darkroom-ops dlq list`` shows it and ``dlq replay
dlq.broker`` sends each message back to the queue it died in
(``x-first-death-queue``). Policies, not queue arguments: nameko declares its
queues without a dead-letter exchange, and redeclaring them with other
arguments would fail with PRECONDITION_FAILED. Two of them because a queue
gets one policy, and RabbitMQ does not apply a policy naming
``delivery-limit`` (quorum only) to a classic queue: ``darkroom-dead-letter``
for classic queues, ``darkroom-dead-letter-quorum`` (higher priority) for
quorum queues.

Dead letters expire: the ``darkroom-dead-letter-ttl`` policy gives every
``dlq.*`` queue (the services' ``dlq.<queue>`` and ``dlq.broker``) a message
TTL of ``DEAD_LETTER_TTL_DAYS`` (default 14; a fraction is allowed), written
into the policy from the environment before the import. A policy again, not an
``x-message-ttl`` argument: the services declare their dead-letter queues
without one, and redeclaring an existing queue with another argument fails
with PRECONDITION_FAILED. A policy applies to queues that already exist, so
an upgraded broker needs nothing but this script (compose runs it at every
``up``); changing the days and running it again changes the TTL in place.

Why not RabbitMQ's ``load_definitions`` at boot: a node that imports
definitions at boot does not create its default user, and the broker's
credentials come from deploy/.env (``RABBITMQ_DEFAULT_USER``/``_PASS``).

Only the standard library: the script runs in the Darkroom image but needs
none of its packages. Exit status 0 when applied and verified, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFINITIONS = Path(__file__).with_name("definitions.json")
TTL_POLICY = "darkroom-dead-letter-ttl"
DAY_MS = 86_400_000


def dead_letter_ttl_ms(days: str) -> int:
    """``DEAD_LETTER_TTL_DAYS`` in milliseconds (a positive number of days)."""
    try:
        value = float(days)
    except ValueError:
        raise SystemExit(f"rabbitmq-init: DEAD_LETTER_TTL_DAYS={days!r} is not a number") from None
    if not value > 0 or value * DAY_MS >= 2**32:  # RabbitMQ's largest TTL is 2^32-1 ms
        raise SystemExit(f"rabbitmq-init: DEAD_LETTER_TTL_DAYS={days!r} must be above 0 "
                         "and below 49 days")
    return max(1, round(value * DAY_MS))


def with_dead_letter_ttl(definitions: dict, ttl_ms: int) -> dict:
    """The definitions with the dead-letter TTL policy set to ``ttl_ms``."""
    policies = []
    for policy in definitions.get("policies", []):
        if policy["name"] == TTL_POLICY:
            policy = {**policy, "definition": {**policy["definition"], "message-ttl": ttl_ms}}
        policies.append(policy)
    return {**definitions, "policies": policies}


def vhost_of(amqp_uri: str) -> str:
    """The vhost of an AMQP URI as kombu reads it (an empty path is ``/``)."""
    path = urllib.parse.urlsplit(amqp_uri).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


class Management:
    """The RabbitMQ management API at ``url`` (credentials in the URL)."""

    def __init__(self, url: str, timeout: float = 10):
        parts = urllib.parse.urlsplit(url)
        self.base = urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + (
            f":{parts.port}" if parts.port else ""))).rstrip("/")
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": self.auth, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            payload = response.read()
        return json.loads(payload) if payload else None


def wait_until_up(api: Management, deadline: float) -> None:
    """The broker is healthy before this runs, but its management listener may
    come up a little later."""
    while True:
        try:
            api.request("GET", "/api/overview")
            return
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise SystemExit(f"rabbitmq-init: the management API refused the credentials "
                                 f"({exc.code}); check RABBITMQ_USER/RABBITMQ_PASSWORD") from None
            error = exc
        except OSError as exc:
            error = exc
        if time.monotonic() > deadline:
            raise SystemExit(f"rabbitmq-init: no management API at {api.base}: {error}")
        time.sleep(2)


def apply(api: Management, vhost: str, definitions: dict) -> None:
    quoted = urllib.parse.quote(vhost, safe="")
    api.request("POST", f"/api/definitions/{quoted}", definitions)
    # The import is applied synchronously, but say so only once it can be read back.
    for policy in definitions.get("policies", []):
        name = urllib.parse.quote(policy["name"], safe="")
        found = api.request("GET", f"/api/policies/{quoted}/{name}")
        if found.get("definition") != policy["definition"]:
            raise SystemExit(f"rabbitmq-init: policy {policy['name']!r} reads back as {found}")
    for queue in definitions.get("queues", []):
        api.request("GET", f"/api/queues/{quoted}/{urllib.parse.quote(queue['name'], safe='')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--definitions", type=Path, default=DEFINITIONS)
    parser.add_argument("--wait", type=float, default=120,
                        help="seconds to wait for the management API (default 120)")
    args = parser.parse_args(argv)
    management_url = os.environ.get("RABBIT_MANAGEMENT_URL")
    if not management_url:
        print("rabbitmq-init: RABBIT_MANAGEMENT_URL is not set", file=sys.stderr)
        return 1
    vhost = vhost_of(os.environ.get("AMQP_URI") or "amqp://localhost/")
    definitions = json.loads(args.definitions.read_text())
    api = Management(management_url)
    try:
        ttl_ms = dead_letter_ttl_ms(os.environ.get("DEAD_LETTER_TTL_DAYS", "14") or "14")
        definitions = with_dead_letter_ttl(definitions, ttl_ms)
        wait_until_up(api, time.monotonic() + args.wait)
        apply(api, vhost, definitions)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"rabbitmq-init: applying {args.definitions.name} to vhost {vhost!r} failed: "
              f"{exc}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{len(definitions.get(kind, []))} {kind}"
                       for kind in ("exchanges", "queues", "bindings", "policies"))
    print(f"rabbitmq-init: applied {counts} to vhost {vhost!r} on {api.base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
