"""Typed checks of raw TOML config values, and OpenSSH public key line parsing."""

from __future__ import annotations

import base64
import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sftpd.errors import ConfigError
from sftpd.storage.vpath import normalize

# Public key types accepted for user authentication.
USER_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
# Login names: letters, digits and ``_ . - @ +`` (e-mail style names, as SFTPGo allows),
# never a path or an option: no '/', no "..", no leading '-', '.', '@' or '+', no spaces.
USER_NAME_RE = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,63}")
BCRYPT_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def _refused_key_type(kind: str) -> str | None:
    if kind == "ssh-dss":
        return "ssh-dss (DSA) keys are refused as obsolete; use an ssh-ed25519 key"
    if kind.startswith("sk-"):
        return f"{kind} (FIDO security key) keys are not supported; use an ssh-ed25519 key"
    if "-cert-v01@openssh.com" in kind:
        return f"{kind} certificates are not supported; give the plain public key"
    return None


def parse_authorized_key(line: str) -> bytes:
    """Return the wire blob of an OpenSSH key line ``TYPE BASE64 [COMMENT]``.

    Raises ValueError with a message saying what was wrong and what was expected.
    """
    fields = line.split()
    expected = "expected 'TYPE BASE64 [COMMENT]' with TYPE one of " + ", ".join(USER_KEY_TYPES)
    if not fields:
        raise ValueError(f"empty key line; {expected}")
    kind = fields[0]
    if kind not in USER_KEY_TYPES:
        refused = _refused_key_type(kind)
        if refused:
            raise ValueError(refused)
        if any(f in USER_KEY_TYPES or _refused_key_type(f) for f in fields[1:]):
            raise ValueError(
                "key options are not supported (text before the key type, such as "
                'from="..." or command="..."); give only \'TYPE BASE64 [COMMENT]\''
            )
        shown = kind if len(kind) <= 40 else kind[:37] + "..."
        raise ValueError(f"{shown!r} is not a key type; {expected}")
    if len(fields) < 2:
        raise ValueError(f"{kind} key has no base64 key data; {expected}")
    try:
        blob = base64.b64decode(fields[1], validate=True)
        key = serialization.load_ssh_public_key(f"{kind} {fields[1]}".encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"{kind} key data does not parse ({e}); {expected}") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 1024:
        raise ValueError(f"ssh-rsa key has {key.key_size} bits; expected at least 1024 (2048+)")
    return blob


def read_authorized_keys_lines(text: str) -> list[tuple[int, str]]:
    """Return (1-based line number, line) of the key lines in an authorized_keys text."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string"}
    names.update({list: "array", dict: "table"})
    return names.get(type(value), "date/time")


def got(value: object) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"got {type_name(value)} {shown}"


_SIZE_UNITS = {"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_size(value: object) -> int | None:
    """Bytes from an integer or a "16MiB"-style string; None if it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    unit = text[-3:] if text[-3:] in _SIZE_UNITS else ""
    number = text[: len(text) - len(unit)].strip()
    if not number.isascii() or not number.isdigit():
        return None
    return int(number) * _SIZE_UNITS[unit]


def show_size(n: int) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        if n and n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return str(n)


Check = Callable[[str, Any], Any]
T = TypeVar("T")


class Values:
    """Checks raw TOML values; ``table`` collects every problem instead of stopping at one."""

    def __init__(self, source: str, base: Path, text: str = "") -> None:
        self.source = source
        self.base = base
        self.text = text  # the TOML source, for checks that need how a value was written
        self.errors: list[ConfigError] = []

    def err(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.source, key, message)

    def table(self, data: dict[str, Any], prefix: str, checks: dict[str, Check]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            where = f"{prefix}.{key}" if prefix else key
            check = checks.get(key)
            if check is None:
                close = difflib.get_close_matches(key, list(checks), n=1, cutoff=0.6)
                hint = f'did you mean "{close[0]}"? ' if close else ""
                known = ", ".join(checks)
                self.errors.append(self.err(where, f"unknown key; {hint}expected one of: {known}"))
                continue
            try:
                out[key] = check(where, value)
            except ConfigError as e:
                self.errors.append(e)
        return out

    # Value checks: each returns a function (key path, raw TOML value) -> converted value.

    def boolean(self, where: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.err(where, f"expected a boolean (true or false), {got(value)}")
        return value

    def optional_boolean(self, where: str, value: Any) -> bool | None:
        return self.boolean(where, value)

    def integer(self, lo: int, hi: int) -> Check:
        def check(where: str, value: Any) -> int:
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise self.err(where, f"expected an integer from {lo} to {hi}, {got(value)}")
            return value

        return check

    def number(self, lo: float, hi: float) -> Check:
        def check(where: str, value: Any) -> float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not lo <= value <= hi:
                raise self.err(
                    where, f"expected a number of seconds from {lo} to {hi}, {got(value)}"
                )
            return float(value)

        return check

    def size(self, lo: int, hi: int) -> Check:
        """A size in bytes: an integer, or a string such as "512KiB", "16MiB", "1GiB"."""

        def check(where: str, value: Any) -> int:
            n = parse_size(value)
            if n is None or not lo <= n <= hi:
                raise self.err(
                    where,
                    f'expected a size from {show_size(lo)} to {show_size(hi)} ("16MiB": a '
                    f"number with KiB, MiB or GiB, or an integer of bytes), {got(value)}",
                )
            return n

        return check

    def string(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not value or "\x00" in value:
            raise self.err(where, f"expected a non-empty string, {got(value)}")
        return value

    def choice(self, choices: tuple[str, ...], aliases: dict[str, str] | None = None) -> Check:
        """One of ``choices``; ``aliases`` maps other accepted spellings to a choice."""
        aliases = aliases or {}

        def check(where: str, value: Any) -> str:
            if isinstance(value, str) and value in aliases:
                return aliases[value]
            if value not in choices:
                wanted = " or ".join(f'"{c}"' for c in choices)
                raise self.err(where, f"expected {wanted}, {got(value)}")
            return str(value)

        return check

    def path(self, where: str, value: Any) -> Path:
        return Path(os.path.abspath(self.base / self.string(where, value)))

    def strings(self, where: str, value: Any, what: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.err(where, f"expected an array of strings ({what}), {got(value)}")
        return value

    def each(self, where: str, value: Any, what: str, parse: Callable[[str], T]) -> list[T]:
        """An array of strings (``what`` they are), each through ``parse``; its ValueError
        becomes the error of that item (``where[i]``)."""
        out: list[T] = []
        for i, item in enumerate(self.strings(where, value, what)):
            try:
                out.append(parse(item))
            except ValueError as e:
                raise self.err(f"{where}[{i}]", str(e)) from None
        return out

    def banner(self, where: str, value: Any) -> str:
        text = self.string(where, value)
        if not all(" " <= c <= "~" for c in text) or "-" in text.split(" ")[0] or len(text) > 200:
            raise self.err(
                where,
                f"expected printable ASCII without '-' before the first space "
                f"(it follows 'SSH-2.0-'), {got(value)}",
            )
        return text

    def algorithms(self, defaults: tuple[str, ...], legacy: tuple[str, ...]) -> Check:
        known = defaults + legacy

        def check(where: str, value: Any) -> tuple[str, ...]:
            names = self.strings(where, value, "algorithm names")
            for i, name in enumerate(names):
                if name not in known:
                    close = difflib.get_close_matches(name, known, n=1)
                    hint = f'did you mean "{close[0]}"? ' if close else ""
                    raise self.err(
                        f"{where}[{i}]",
                        f"unknown algorithm {name!r}; {hint}expected one of: {', '.join(known)}",
                    )
                if name in names[:i]:
                    raise self.err(f"{where}[{i}]", f"{name!r} is listed twice; list it once")
            if not names:
                raise self.err(where, "empty list; expected at least one algorithm name")
            return tuple(names)

        return check

    def listen(self, where: str, value: Any) -> tuple[tuple[str, int], ...]:
        items = self.strings(where, value, 'addresses like "127.0.0.1:2222" or "[::1]:2222"')
        if not items:
            raise self.err(where, 'empty list; expected at least one address like "127.0.0.1:2222"')
        out: list[tuple[str, int]] = []
        for i, item in enumerate(items):
            addr = self.listen_one(f"{where}[{i}]", item)
            if addr in out:
                raise self.err(f"{where}[{i}]", f"{item!r} is listed twice; list it once")
            out.append(addr)
        return tuple(out)

    def listen_one(self, where: str, text: str) -> tuple[str, int]:
        expected = 'expected "IPV4:PORT" (like "0.0.0.0:22") or "[IPV6]:PORT" (like "[::1]:2222")'
        m = re.fullmatch(r"\[([^\[\]]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", text)
        if m is None:
            raise self.err(where, f"cannot parse {text!r} as an address; {expected}")
        host, port = (m[1], m[2]) if m[1] is not None else (m[3], m[4])
        try:
            if m[1] is not None:
                ipaddress.IPv6Address(host)
            else:
                ipaddress.IPv4Address(host)
        except ValueError:
            raise self.err(where, f"{host!r} is not an IP address; {expected}") from None
        if not 0 <= int(port) <= 65535:
            raise self.err(where, f"port {port} is out of range; expected 1 to 65535 (0: any free)")
        return host, int(port)

    def umask(self, where: str, value: Any) -> int:
        """A mode as a string ("022", "0o022") or a TOML octal integer (0o022).

        tomllib gives the same int for ``0o022`` and ``18``, so an integer is accepted only
        when the file writes it with the ``0o`` prefix (or as one digit 0-7, the same in
        either base): ``umask = 22`` would silently mean 0o026, and is refused.
        """
        forms = 'write it as a string "022" or as a TOML octal integer 0o022'
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            literal = self._literal(where.rsplit(".", 1)[-1])
            if literal is None or not re.fullmatch(r"0o[0-7_]+|[0-7]", literal):
                shown = literal if literal is not None else str(value)
                raise self.err(
                    where,
                    f"the integer {shown} is read as decimal {value} (octal "
                    f"{value:o}), not as an octal mode; {forms}",
                )
            number = value
        elif isinstance(value, str) and re.fullmatch(r"(0o)?[0-7]{1,4}", value):
            number = int(value.removeprefix("0o"), 8)
        if number is None or not 0 <= number <= 0o777:
            raise self.err(where, f"expected an octal mode from 000 to 777; {forms}, {got(value)}")
        return number

    def _literal(self, key: str) -> str | None:
        """How ``key = VALUE`` writes its value in the file (comments skipped), or None."""
        pattern = rf"""(?:^|[{{,.\s])["']?{re.escape(key)}["']?\s*=\s*([^\s,}}#]+)"""
        for line in self.text.splitlines():
            code = line.split("#", 1)[0]
            m = re.search(pattern, code)
            if m:
                return m[1]
        return None

    def moduli(self, where: str, value: Any) -> Path:
        path = self.path(where, value)
        if not path.is_file() or not os.access(path, os.R_OK):
            raise self.err(where, f"{path} is not a readable file; expected an OpenSSH moduli file")
        return path

    def home(self, where: str, value: Any) -> str:
        text = self.string(where, value)
        if not text.startswith("/"):
            raise self.err(
                where,
                f'{text!r} is not absolute; expected a path inside the root like "/" or "/in"',
            )
        return normalize(text)

    def user_name(self, where: str, value: Any) -> str:
        text = self.string(where, value)
        if not USER_NAME_RE.fullmatch(text):
            raise self.err(
                where,
                f"invalid user name {text!r}; expected 1 to 64 characters of A-Z, a-z, 0-9, "
                "'_', '.', '-', '@', '+', starting with a letter, digit or '_', without '..'",
            )
        return text

    def password_hash(self, where: str, value: Any) -> bytes:
        text = self.string(where, value)
        if not BCRYPT_RE.fullmatch(text):
            raise self.err(
                where,
                "not a bcrypt hash; expected $2b$ (or $2a$/$2y$) followed by the cost and 53 "
                "characters, as printed by `sftpd hash-password`",
            )
        return text.encode("ascii")

    def keys(self, where: str, value: Any) -> tuple[bytes, ...]:
        return self.key_blobs(where, value, "OpenSSH public key lines")

    def keys_file(self, where: str, value: Any) -> tuple[bytes, ...]:
        return self.key_blobs_file(where, value, "a readable authorized_keys file")

    def key_blobs(self, where: str, value: Any, what: str) -> tuple[bytes, ...]:
        """A list of OpenSSH public key lines (``what`` they are) as wire blobs."""
        return tuple(self.each(where, value, what, parse_authorized_key))

    def key_blobs_file(self, where: str, value: Any, what: str) -> tuple[bytes, ...]:
        """The public keys in the file named by ``value`` (``what`` it should be)."""
        path = self.path(where, value)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise self.err(where, f"cannot read {path}: {e.strerror}; expected {what}") from None
        out: list[bytes] = []
        for number, line in read_authorized_keys_lines(text):
            try:
                out.append(parse_authorized_key(line))
            except ValueError as e:
                raise self.err(where, f"{path} line {number}: {e}") from None
        return tuple(out)
