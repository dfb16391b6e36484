"""Client networks: how Darkroom remembers where a request came from without
keeping the address itself (a /24 for IPv4, a /48 for IPv6)."""

from __future__ import annotations

import functools
import ipaddress

IPV4_PREFIX = 24
IPV6_PREFIX = 48

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(address: str | None) -> IPAddress | None:
    """The IP address in ``address``, or None when missing or malformed.
    IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) count as the IPv4 address."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=4096)  # every request of the gateway asks (access-log facts)
def network_of(address: str | None) -> str | None:
    """``"203.0.113.7"`` → ``"203.0.113.0/24"``; an IPv6 address → its /48."""
    ip = parse_address(address)
    if ip is None:
        return None
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
