"""OpenSSH authorized_keys options (sshd(8) AUTHORIZED_KEYS FILE FORMAT), parsed sans-IO.

The grammar is OpenSSH's (auth-options.c): options are a comma-separated list before the
key type, names are matched case-insensitively, values are double-quoted and a ``\\"``
inside them is a literal quote; the option list ends at the first unquoted space or tab.

Meaning for sftpd, which runs no shell, no forwarding and no user rc:

- ``from="pattern-list"``: the client's IP address must match (see ``matches_source``).
  sftpd does not resolve the client's address to a name, as OpenSSH with its default
  ``UseDNS no``; a pattern that can only match a host name is refused at parse time, so
  an admin does not believe a name restriction is in force.
- ``expiry-time="YYYYMMDD[HHMM[SS]][Z]"``: local (system) time unless suffixed by ``Z``,
  which means UTC (as OpenSSH 8.6+ documents); the key is refused after that instant.
- ``command="internal-sftp [-R]"``: SFTP only (``-R``: read-only);
  ``command="rrsync [-ro|-wo] [-no-del] [-no-overwrite] DIR"``: rsync only, rooted at DIR
  (as the user sees it; auth.forced maps it onto the key's profile); any other command
  is refused.
- ``restrict``, ``no-pty``, ``no-port-forwarding``, ``no-agent-forwarding``,
  ``no-X11-forwarding``, ``no-user-rc`` and their re-enabling forms (``pty``...),
  ``permitopen``, ``permitlisten`` and ``tunnel`` are accepted: sftpd offers none of
  those features, so they restrict nothing further.
- ``principals="..."`` and ``cert-authority``: the key is a CA trusted for this user's
  certificates, for the listed principals.
- ``environment=`` is refused (sftpd runs no user shell to receive it); the FIDO options
  (``no-touch-required``, ``verify-required``) are refused because sftpd refuses FIDO keys.
"""

from __future__ import annotations

import calendar
import datetime
import ipaddress
import posixpath
import re
import shlex
from dataclasses import dataclass, field

from sftpd.config.values import USER_KEY_TYPES, parse_authorized_key
from sftpd.errors import SftpdError

# Key types a line may start with (accepted or refused by parse_authorized_key with a
# message of its own): such a first word means the line has no options.
_KEY_TYPE_RE = re.compile(r"(ssh-|ecdsa-|sk-|rsa-)[A-Za-z0-9@.-]+")


class KeyLineError(SftpdError):
    """An authorized_keys line that cannot be used, naming the file, line and option."""

    def __init__(self, source: str, line: int, option: str, reason: str) -> None:
        self.source = source
        self.line = line
        self.option = option
        self.reason = reason
        where = f"{source}:{line}"
        what = f"option {option!r}: " if option else ""
        super().__init__(f"{where}: {what}{reason}")


class OptionError(ValueError):
    """One option that cannot be used (KeyLineError adds where it was)."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(reason)
        self.option = option
        self.reason = reason


@dataclass(frozen=True)
class ForcedCommand:
    """What a ``command=`` (or a certificate's ``force-command``) allows, in sftpd's terms."""

    protocols: frozenset[str]  # of "sftp", "rsync"
    read_only: bool = False
    write_only: bool = False
    directory: str | None = None  # a virtual path the protocol is rooted at
    no_delete: bool = False  # rrsync -no-del
    no_overwrite: bool = False  # rrsync -no-overwrite


@dataclass(frozen=True)
class KeyOptions:
    """The options of one authorized_keys line."""

    from_patterns: tuple[str, ...] | None = None
    expires_at: float | None = None  # seconds since the epoch
    command: ForcedCommand | None = None
    cert_authority: bool = False
    principals: tuple[str, ...] | None = None
    restricted: bool = False
    pty: bool = True
    port_forwarding: bool = True
    agent_forwarding: bool = True
    x11_forwarding: bool = True
    user_rc: bool = True


@dataclass(frozen=True)
class KeyLine:
    """A parsed authorized_keys line: the public key blob and its options."""

    blob: bytes
    options: KeyOptions = field(default_factory=KeyOptions)


# ---------------------------------------------------------------------------- grammar


def split_options(line: str) -> tuple[str, str]:
    """Split a key line into (options text, rest starting at the key type).

    As OpenSSH: a line whose first word is a key type has no options; otherwise the
    options run to the first space or tab outside double quotes.
    """
    line = line.strip(" \t")
    first = re.split(r"[ \t]", line, maxsplit=1)[0]
    if first in USER_KEY_TYPES or _KEY_TYPE_RE.fullmatch(first):
        return "", line
    quoted = False
    i = 0
    while i < len(line) and (quoted or line[i] not in " \t"):
        if line[i] == "\\" and line[i + 1 : i + 2] == '"':
            i += 1
        elif line[i] == '"':
            quoted = not quoted
        i += 1
    return line[:i], line[i:].lstrip(" \t")


def _dequote(text: str, pos: int, option: str) -> tuple[str, int]:
    """Read a double-quoted value at ``pos``; return it and the position after it."""
    if text[pos : pos + 1] != '"':
        raise OptionError(option, "missing start quote: the value must be in double quotes")
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\" and text[i + 1 : i + 2] == '"':
            i += 1
            c = '"'
        out.append(c)
        i += 1
    raise OptionError(option, "missing end quote")


_FLAGS = ("pty", "port-forwarding", "agent-forwarding", "x11-forwarding", "user-rc")
_VALUED = (
    "command",
    "from",
    "expiry-time",
    "principals",
    "environment",
    "permitopen",
    "permitlisten",
    "tunnel",
)


def parse_options(text: str) -> KeyOptions:
    """Parse an option list (the text before the key type). Raises OptionError."""
    flags = dict.fromkeys(_FLAGS, True)
    values: dict[str, object] = {}
    restricted = False
    cert_authority = False
    pos = 0
    while pos < len(text):
        rest = text[pos:]
        low = rest.lower()
        name_m = re.match(r"[a-z0-9-]+", low)
        name = name_m.group(0) if name_m else rest[:1]
        if name == "restrict":
            restricted = True
            flags = dict.fromkeys(_FLAGS, False)
            pos += len(name)
        elif name == "cert-authority":
            cert_authority = True
            pos += len(name)
        elif name in _FLAGS or (name.startswith("no-") and name[3:] in _FLAGS):
            flags[name.removeprefix("no-")] = not name.startswith("no-")
            pos += len(name)
        elif name in ("no-touch-required", "verify-required", "touch-required"):
            raise OptionError(name, "is for FIDO security keys, which sftpd does not accept")
        elif name in _VALUED and low[len(name) : len(name) + 1] == "=":
            value, end = _dequote(text, pos + len(name) + 1, name)
            pos = end
            _take_value(values, name, value)
        elif name in _VALUED:
            raise OptionError(name, 'needs a value: NAME="VALUE"')
        else:
            raise OptionError(name, "unknown key option")
        if pos >= len(text):
            break
        if text[pos] != ",":
            raise OptionError(
                name, "unexpected text after the option (options are separated by ',')"
            )
        pos += 1
        if pos >= len(text):
            raise OptionError(name, "unexpected end of options after ','")
    principals = values.get("principals")
    if principals is not None and not cert_authority:
        raise OptionError("principals", "is only meaningful together with cert-authority")
    return KeyOptions(
        from_patterns=values.get("from"),  # type: ignore[arg-type]
        expires_at=values.get("expiry-time"),  # type: ignore[arg-type]
        command=values.get("command"),  # type: ignore[arg-type]
        cert_authority=cert_authority,
        principals=principals,  # type: ignore[arg-type]
        restricted=restricted,
        pty=flags["pty"],
        port_forwarding=flags["port-forwarding"],
        agent_forwarding=flags["agent-forwarding"],
        x11_forwarding=flags["x11-forwarding"],
        user_rc=flags["user-rc"],
    )


def _take_value(values: dict[str, object], name: str, value: str) -> None:
    if name == "environment":
        raise OptionError(
            name, "is refused: sftpd runs no user shell, so there is nothing to set it for"
        )
    if name in ("permitopen", "permitlisten", "tunnel"):
        return  # sftpd forwards nothing: accepted, without effect
    if name in values and name != "expiry-time":
        raise OptionError(name, f'appears twice; give one {name}="..."')
    if name == "from":
        values[name] = parse_from(value)
    elif name == "expiry-time":
        when = parse_expiry_time(value)
        old = values.get(name)
        # OpenSSH keeps the earliest of several expiry-time options
        values[name] = when if not isinstance(old, float) else min(old, when)
    elif name == "command":
        values[name] = parse_command(value, name)
    elif name == "principals":
        names = tuple(p for p in value.split(","))
        if not names or any(not p for p in names):
            raise OptionError(name, "expected a comma-separated list of principal names")
        values[name] = names


# ------------------------------------------------------------------------ the values


_EXPIRY_RE = re.compile(r"(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2})?)?([zZ]?)")


def parse_expiry_time(value: str) -> float:
    """``YYYYMMDD[HHMM[SS]][Z]`` as seconds since the epoch: local time, or UTC with Z."""
    m = _EXPIRY_RE.fullmatch(value)
    if m is None:
        raise OptionError(
            "expiry-time", f"{value!r} is not a time; expected YYYYMMDD[HHMM[SS]] (Z for UTC)"
        )
    y, mo, d, h, mi, s, z = m.groups()
    try:
        when = datetime.datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0))
    except ValueError as e:
        raise OptionError("expiry-time", f"{value!r} is not a valid date ({e})") from None
    if z:
        return float(calendar.timegm(when.timetuple()))
    return when.timestamp()  # a naive datetime is read in the system time zone


def parse_command(value: str, option: str = "command") -> ForcedCommand:
    """Map an OpenSSH forced command onto what sftpd can enforce; refuse anything else."""
    try:
        words = shlex.split(value)
    except ValueError as e:
        raise OptionError(option, f"{value!r} does not parse as a command line ({e})") from None
    prog = posixpath.basename(words[0]) if words else ""
    if prog == "internal-sftp" and words[0] == "internal-sftp":
        args = words[1:]
        if args in ([], ["-R"]):
            return ForcedCommand(frozenset({"sftp"}), read_only=bool(args))
        raise OptionError(
            option, f"internal-sftp {' '.join(args)!r}: only 'internal-sftp' or 'internal-sftp -R'"
        )
    if prog == "rrsync":
        return _rrsync(words[1:], option)
    shown = value if len(value) <= 60 else value[:57] + "..."
    raise OptionError(
        option,
        f"{shown!r} cannot be enforced: sftpd runs no shell; use "
        "'internal-sftp', 'internal-sftp -R' or 'rrsync [-ro|-wo] DIR'",
    )


# rrsync's options (rsync 3.2's rrsync) and what sftpd makes of them; -no-lock (rrsync's
# lock for -ro) is accepted without effect: sftpd runs one rsync per session anyway.
_RRSYNC_FLAGS = ("-ro", "-wo", "-no-del", "-no-overwrite", "-no-lock")


def _rrsync(args: list[str], option: str) -> ForcedCommand:
    """``rrsync [-ro|-wo] [-no-del] [-no-overwrite] DIR``: rsync only, rooted at DIR."""
    flags: set[str] = set()
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag not in _RRSYNC_FLAGS:
            raise OptionError(
                option,
                f"rrsync option {flag!r} is not supported ({', '.join(_RRSYNC_FLAGS)})",
            )
        flags.add(flag)
    if {"-ro", "-wo"} <= flags:
        raise OptionError(option, "rrsync -ro and -wo together allow nothing")
    if len(args) != 1:
        raise OptionError(option, "expected 'rrsync [-ro|-wo] [-no-del] DIR' with one directory")
    directory = args[0]
    if not directory.startswith("/") or ".." in directory.split("/"):
        raise OptionError(
            option, f"rrsync directory {directory!r} must be absolute (as the user sees it)"
        )
    return ForcedCommand(
        frozenset({"rsync"}),
        read_only="-ro" in flags,
        write_only="-wo" in flags,
        directory=posixpath.normpath(directory).replace("//", "/"),
        no_delete="-no-del" in flags,
        no_overwrite="-no-overwrite" in flags,
    )


_ADDR_WILDCARD_RE = re.compile(r"[0-9A-Fa-f.:*?]+")


def parse_from(value: str) -> tuple[str, ...]:
    """Check a from= pattern-list; every entry must be able to match an IP address."""
    patterns = tuple(value.split(","))
    for raw in patterns:
        pat = raw.removeprefix("!")
        if not pat:
            raise OptionError("from", f"empty pattern in {value!r}")
        if "/" in pat:
            try:
                ipaddress.ip_network(pat, strict=True)
            except ValueError as e:
                raise OptionError(
                    "from", f"{pat!r} is not a network (ADDRESS/BITS, host bits zero): {e}"
                ) from None
            continue
        if _parse_ip(pat) is not None:
            continue
        if any(c in pat for c in "*?") and _ADDR_WILDCARD_RE.fullmatch(pat):
            continue
        raise OptionError(
            "from",
            f"{pat!r} looks like a host name; sftpd matches from= against the client's "
            "IP address only (it does not resolve names, as OpenSSH with UseDNS no): "
            "use addresses, ADDRESS/BITS or address wildcards such as 192.0.2.*",
        )
    return patterns


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _glob(pattern: str, text: str) -> bool:
    """OpenSSH match_pattern: ``*`` and ``?`` only, everything else literal."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, text, re.DOTALL) is not None


def matches_source(options: KeyOptions, address: str) -> bool:
    """Whether the client address satisfies the key's from= (True when there is none).

    As OpenSSH's match_host_and_ip with the host name being the address text (UseDNS no):
    a matching ``!`` entry refuses whatever else matches; otherwise one positive match
    (address, network, or wildcard on the address text) is needed. IPv4-mapped IPv6
    addresses are matched as IPv4.
    """
    if options.from_patterns is None:
        return True
    addr = _parse_ip(address.split("%", 1)[0])
    if addr is None:
        return False
    text = str(addr)
    positive = False
    for raw in options.from_patterns:
        neg = raw.startswith("!")
        pat = raw.removeprefix("!")
        if "/" in pat or _parse_ip(pat) is not None:
            net = ipaddress.ip_network(pat, strict=False)
            hit = net.version == addr.version and addr in net
        else:
            hit = _glob(pat.lower(), text)
        if hit and neg:
            return False
        positive = positive or hit
    return positive


def is_expired(options: KeyOptions, now: float) -> bool:
    """Whether the key's expiry-time has passed at ``now`` (seconds since the epoch)."""
    return options.expires_at is not None and now > options.expires_at


# ---------------------------------------------------------------------------- lines


def parse_key_line(line: str, source: str = "<config>", number: int = 1) -> KeyLine:
    """Parse one authorized_keys line; raise KeyLineError naming file, line and option."""
    opts_text, key_text = split_options(line)
    words = key_text.split()
    if opts_text and words and not _KEY_TYPE_RE.fullmatch(words[0]):
        # no key type after what would be the options: a bad key line, not bad options
        try:
            parse_authorized_key(line)
        except ValueError as e:
            raise KeyLineError(source, number, "", str(e)) from None
    try:
        options = parse_options(opts_text) if opts_text else KeyOptions()
    except OptionError as e:
        raise KeyLineError(source, number, e.option, e.reason) from None
    if not key_text:
        raise KeyLineError(source, number, "", "no key after the options")
    try:
        blob = parse_authorized_key(key_text)
    except ValueError as e:
        raise KeyLineError(source, number, "", str(e)) from None
    return KeyLine(blob, options)


def parse_authorized_keys(text: str, source: str) -> tuple[KeyLine, ...]:
    """Parse an authorized_keys text (comments and blank lines skipped)."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(parse_key_line(line, source, number))
    return tuple(out)
