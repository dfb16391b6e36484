"""allow_private_network: what a provider's guard lets through with and without it."""

from __future__ import annotations

import pytest

from services.generation.providers.http import ProviderHttp
from services.generation.webhooks import UnsafeUrl


def guard(flag: bool, base_url: str = "http://127.0.0.1:8188"):
    return ProviderHttp("p", base_url, allow_private_network=flag,
                        resolver=lambda host, port: [host]).guard


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "192.168.1.2", "172.16.0.1",
                                     "100.64.1.1", "::1", "fd12::5"])
def test_private_addresses_need_the_flag_even_for_the_providers_own_host(address):
    url = f"http://[{address}]:8188/x" if ":" in address else f"http://{address}:8188/x"
    with pytest.raises(UnsafeUrl):
        guard(False, url).check(url)
    assert guard(True, url).check(url) == [address]


@pytest.mark.parametrize("address", ["169.254.169.254", "169.254.1.1", "100.100.100.200",
                                     "0.0.0.0", "fd00:ec2::254", "fe80::1"])
def test_link_local_and_metadata_addresses_stay_refused_with_the_flag(address):
    url = f"http://[{address}]/x" if ":" in address else f"http://{address}/x"
    with pytest.raises(UnsafeUrl):
        guard(True).check(url)


def test_public_addresses_are_allowed_either_way():
    for flag in (False, True):
        assert guard(flag).check("http://93.184.216.34/x") == ["93.184.216.34"]
