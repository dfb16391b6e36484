"""The cluster tests (``make test-cluster``; ``make test`` leaves them out):
three clustered RabbitMQ nodes started by :mod:`tests.cluster.harness`.

Without a ``rabbitmq-server`` to start, they skip, or fail under ``CI=true``
(``DARKROOM_TEST_RABBITMQ_SBIN`` names RabbitMQ's ``sbin`` directory when it
is not Debian's ``/usr/lib/rabbitmq/bin``)."""

from __future__ import annotations

import pytest

from tests.cluster.harness import RabbitCluster, find_sbin
from tests.conftest import unavailable


@pytest.fixture(scope="module")
def rabbit_cluster():
    """A fresh three-node cluster for the module, stopped and deleted after it."""
    sbin = find_sbin()
    if sbin is None:
        unavailable("rabbitmq-server (to start three cluster nodes)",
                    "not installed (Debian: apt-get install rabbitmq-server)")
    cluster = RabbitCluster(sbin).start()
    try:
        yield cluster
    finally:
        cluster.close()
