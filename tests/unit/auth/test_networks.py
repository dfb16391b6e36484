from __future__ import annotations

import pytest

from services.auth.networks import network_digest
from services.common.networks import network_of


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("203.0.113.7", "203.0.113.0/24"),
        ("203.0.113.255", "203.0.113.0/24"),
        (" 10.1.2.3 ", "10.1.2.0/24"),
        ("2001:db8:abcd:12:1::5", "2001:db8:abcd::/48"),
        ("2001:DB8:ABCD:ffff::1", "2001:db8:abcd::/48"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),
    ],
)
def test_addresses_are_truncated_to_their_network(address, network):
    assert network_of(address) == network


@pytest.mark.parametrize("address", [None, "", "localhost", "300.1.1.1", "1.2.3.4/24"])
def test_missing_or_malformed_addresses_have_no_network(address):
    assert network_of(address) is None


def test_neighbouring_networks_differ():
    assert network_of("203.0.113.7") != network_of("203.0.114.7")
    assert network_of("2001:db8:abcd::1") != network_of("2001:db8:abce::1")


def test_network_digest_is_keyed_and_hides_the_network():
    digest = network_digest(b"key", "203.0.113.0/24")
    assert digest == network_digest(b"key", "203.0.113.0/24")
    assert digest != network_digest(b"other", "203.0.113.0/24")
    assert "203.0.113" not in digest
