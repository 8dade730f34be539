"""RFC 6238 TOTP as authenticator apps use it (SHA-1, 30 s, 6 digits), with replay protection."""

from __future__ import annotations

import base64
import hmac
import os
import struct
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

STEP = 30
DIGITS = 6
SKEW_STEPS = 1
SECRET_BYTES = 20


def hotp(key: bytes, counter: int, digits: int = DIGITS, digest: str = "sha1") -> str:
    """RFC 4226 HOTP value of ``counter`` (dynamic truncation), zero-padded to ``digits``."""
    mac = hmac.new(key, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def time_step(now: float, step: int = STEP) -> int:
    """The RFC 6238 counter T for Unix time ``now`` (T0 = 0)."""
    return int(now // step)


def totp(key: bytes, now: float, digits: int = DIGITS, digest: str = "sha1") -> str:
    """The code an authenticator app shows at ``now``."""
    return hotp(key, time_step(now), digits, digest)


def new_secret(randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """A new secret: 20 random bytes (the SHA-1 block RFC 4226 recommends), base32, no padding."""
    return base64.b32encode(randbytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def decode_secret(text: str) -> bytes:
    """The key bytes of a base32 secret (case, spaces and missing padding tolerated)."""
    clean = text.replace(" ", "").upper().rstrip("=")
    try:
        key = base64.b32decode(clean + "=" * (-len(clean) % 8))
    except ValueError:
        raise ValueError("totp_secret is not base32 (letters A-Z and digits 2-7)") from None
    if len(key) < 10:
        raise ValueError(f"totp_secret has {len(key)} bytes; expected at least 10 (20 is usual)")
    return key


def otpauth_url(name: str, secret: str, issuer: str = "sftpd") -> str:
    """The ``otpauth://`` URL an authenticator app imports (often as a QR code)."""
    label = quote(f"{issuer}:{name}", safe=":@")
    return f"otpauth://totp/{label}?secret={secret}&issuer={quote(issuer, safe='')}"


class TotpState(Protocol):
    """Remembers, per user, the last time step whose code was accepted."""

    def claim(self, user: str, step: int) -> bool:
        """Record ``step`` as the user's last accepted one if it is later than the last;
        whether it was (a code works once, and after a later code the earlier ones are
        gone too). Atomic: of two claims of the same step, one wins."""
        ...


class MemoryTotpState:
    """TotpState in memory: one process's view (``auth.totpstate`` shares it between the
    worker processes of a server, and between servers through the user database)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def claim(self, user: str, step: int) -> bool:
        last = self._last.get(user)
        if last is not None and step <= last:
            return False
        self._last[user] = step
        return True


def candidate_steps(key: bytes, code: str, now: float, skew: int = SKEW_STEPS) -> list[int]:
    """The time steps, from up to ``skew`` before to ``skew`` after the current one, whose
    code is ``code`` (earliest first; usually none or one). Every candidate is compared,
    so the timing does not tell which step matched."""
    code = code.replace(" ", "")
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return []
    current = time_step(now)
    steps = range(current - skew, current + skew + 1)
    return [step for step in steps if hmac.compare_digest(hotp(key, step), code)]


def verify(
    key: bytes,
    code: str,
    user: str,
    now: float,
    state: TotpState,
    skew: int = SKEW_STEPS,
) -> bool:
    """Whether ``code`` is valid for ``user`` at ``now``, and record its step if so.

    A code from up to ``skew`` steps before or after the current one is accepted, but
    never one of a step at or before the last step accepted for the user: a code
    works once, and after a later code the earlier ones are gone too.
    """
    return any(state.claim(user, step) for step in candidate_steps(key, code, now, skew))
