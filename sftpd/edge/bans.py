"""What a ban is: the record every ban store keeps, and the source an admin names (no Twisted)."""

from __future__ import annotations

from dataclasses import dataclass

from sftpd.edge.networks import parse_address, source_key

MINUTE = 60.0
MAX_MINUTES = 525600  # a year: the longest ban an admin may set


@dataclass(frozen=True)
class Ban:
    """One ban: ``source`` is a source key (IPv4 address or IPv6 /64); ``until`` wall-clock."""

    source: str
    until: float
    count: int = 1  # 1 for a first ban, 2 for the next one while the first is remembered...
    reason: str = "score"  # "score" or "manual"


def ban_key(text: str) -> str:
    """The source key for an address (or an IPv6 /64 written as a network) an admin gives."""
    if parse_address(text) is not None:
        return source_key(text)
    if "/" in text:
        host, _, bits = text.partition("/")
        addr = parse_address(host)
        if addr is not None and bits == ("32" if addr.version == 4 else "64"):
            return source_key(str(addr))
    raise ValueError(
        f"{text!r} is not a source; expected an IP address (IPv6 counts per /64, e.g. "
        '"2001:db8::/64"); for whole networks use [defender] block_list'
    )


def check_minutes(minutes: float) -> float:
    """``minutes`` for an admin's ban, or ValueError saying what is allowed."""
    if not 0 < minutes <= MAX_MINUTES:
        raise ValueError(f"{minutes!r} minutes; expected more than 0, up to {MAX_MINUTES} (a year)")
    return minutes


def repeat_minutes(count: int, ban_time: float, ban_time_max: float) -> float:
    """How long the ``count``-th ban in a row lasts: ban_time doubled per repeat, capped."""
    return float(min(ban_time * 2 ** min(count - 1, 62), ban_time_max))


def remembered(before: Ban | None, now: float, ban_time_max: float) -> bool:
    """Whether ``before`` still counts for doubling: active, or ended less than
    ``ban_time_max`` minutes ago."""
    return before is not None and before.until > now - ban_time_max * MINUTE
