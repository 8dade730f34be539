"""Source addresses as the edge counts them (IPv6 per /64) and lists of networks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# One IPv6 customer usually gets a whole /64 (SLAAC, privacy addresses): counting each
# address apart would give one client 2**64 fresh identities.
IPV6_GROUP = 64


def parse_address(host: str) -> Address | None:
    """The IP address in ``host`` (IPv4-mapped IPv6 becomes IPv4), or None if it is not one."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def source_key(host: str) -> str:
    """The name a source is counted and banned under: the IPv4 address or the IPv6 /64.

    Anything that is not an IP address (a UNIX socket path, say) is its own key.
    """
    addr = parse_address(host)
    if addr is None:
        return host
    if isinstance(addr, ipaddress.IPv4Address):
        return str(addr)
    return str(ipaddress.IPv6Network((addr, IPV6_GROUP), strict=False))


def parse_network(text: str) -> Network:
    """``"10.0.0.0/8"``, ``"192.0.2.7"`` or ``"2001:db8::/32"``; ValueError says what is wrong."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"{text!r} is not an address or network; expected like "
                '"192.0.2.7", "10.0.0.0/8" or "2001:db8::/32"'
            ) from None
        hint = f"did you mean {str(loose)!r}?"
        raise ValueError(f"{text!r} has host bits set ({e}); {hint}") from None


class Networks:
    """A fixed set of networks; ``contains`` takes a host text as a transport reports it."""

    __slots__ = ("_nets",)

    def __init__(self, networks: Iterable[Network | str] = ()) -> None:
        nets = [n if not isinstance(n, str) else parse_network(n) for n in networks]
        self._nets: tuple[Network, ...] = tuple(nets)

    def __bool__(self) -> bool:
        return bool(self._nets)

    def __iter__(self) -> Iterator[Network]:
        return iter(self._nets)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Networks) and self._nets == other._nets

    def __hash__(self) -> int:
        return hash(self._nets)

    def __repr__(self) -> str:
        return f"Networks({[str(n) for n in self._nets]!r})"

    def contains(self, host: str) -> bool:
        addr = parse_address(host)
        if addr is None:
            return False
        return any(addr.version == n.version and addr in n for n in self._nets)
