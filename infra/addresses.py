"""Client addresses and allowlists of them: the one matcher for every allowlist.

A partner's allowlist (`Partner.allowed_ips`) and METRICS_ALLOWED_IPS are read and
matched here, so both accept the same entries and compare addresses the same way.
"""

import ipaddress
import re
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks_parse(entries: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """The networks of an allowlist: IPs or CIDR ranges (IPv4 or IPv6), comma or line separated.

    Raises ValueError naming the first entry that is not an address or a range.
    """
    text = entries if isinstance(entries, str) else ",".join(entries)
    networks = []
    for entry in re.split(r"[\s,]+", text or ""):
        if not entry:
            continue
        try:
            # strict=False: 10.0.0.1/8 means the range 10.0.0.0/8, as people usually mean it.
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"'{entry}' is not an IP address or CIDR range (e.g. 203.0.113.7, 10.0.0.0/8, 2001:db8::/32)."
            ) from exc
    return tuple(networks)


def address_parse(value: str | None) -> IPAddress | None:
    """The address in `value` (a zone suffix dropped, an IPv4-mapped IPv6 address unwrapped), or None."""
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack socket arrives as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_allowed(address: str | None, networks: Iterable[IPNetwork]) -> bool:
    """Whether the client address `address` is in one of `networks` (an unreadable address never is)."""
    parsed = address_parse(address)
    return parsed is not None and any(parsed in network for network in networks if network.version == parsed.version)
