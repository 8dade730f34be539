"""TOTP: RFC 6238 appendix B vectors, the skew window, replay refusal, secrets and URLs."""

from __future__ import annotations

import base64

import pytest

from sftpd.auth.totp import (
    MemoryTotpState,
    decode_secret,
    hotp,
    new_secret,
    otpauth_url,
    totp,
    verify,
)

SEED = b"12345678901234567890"


@pytest.mark.parametrize(
    ("t", "code"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_rfc6238_sha1_vectors(t: int, code: str) -> None:
    assert totp(SEED, t, digits=8) == code


def test_rfc6238_sha256_and_sha512_vectors() -> None:
    assert totp(SEED + SEED[:12], 59, 8, "sha256") == "46119246"
    assert totp(SEED * 3 + SEED[:4], 59, 8, "sha512") == "90693936"


def test_rfc4226_hotp_vectors() -> None:
    assert [hotp(SEED, c) for c in range(3)] == ["755224", "287082", "359152"]


def test_six_digit_code_is_the_low_digits() -> None:
    assert totp(SEED, 59) == "287082"


NOW = 1_700_000_000.0  # step 56666666, 20 s into it


@pytest.mark.parametrize(
    ("offset", "ok"), [(-60, False), (-30, True), (0, True), (30, True), (60, False)]
)
def test_one_step_of_skew_either_way(offset: int, ok: bool) -> None:
    code = totp(SEED, NOW + offset)
    assert verify(SEED, code, "alice", NOW, MemoryTotpState()) is ok


def test_a_code_works_once_and_earlier_ones_die_with_it() -> None:
    state = MemoryTotpState()
    code = totp(SEED, NOW)
    assert verify(SEED, code, "alice", NOW, state)
    assert not verify(SEED, code, "alice", NOW, state)
    assert not verify(SEED, code, "alice", NOW + 10, state)
    assert not verify(SEED, totp(SEED, NOW - 30), "alice", NOW, state)
    # another user's state is separate; the next step's code still works
    assert verify(SEED, code, "bob", NOW, state)
    assert verify(SEED, totp(SEED, NOW + 30), "alice", NOW + 30, state)


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦"])
def test_malformed_codes_refused(code: str) -> None:
    assert not verify(SEED, code, "alice", NOW, MemoryTotpState())


def test_code_with_a_space_as_apps_show_it() -> None:
    code = totp(SEED, NOW)
    assert verify(SEED, code[:3] + " " + code[3:], "alice", NOW, MemoryTotpState())


def test_wrong_secret_refused() -> None:
    assert not verify(b"x" * 20, totp(SEED, NOW), "alice", NOW, MemoryTotpState())


def test_new_secret_is_20_bytes_base32_without_padding() -> None:
    secret = new_secret(lambda n: bytes(range(n)))
    assert secret == base64.b32encode(bytes(range(20))).decode()
    assert "=" not in secret and len(secret) == 32
    assert decode_secret(secret) == bytes(range(20))
    assert decode_secret(secret.lower()[:16] + " " + secret.lower()[16:]) == bytes(range(20))
    assert new_secret() != new_secret()


@pytest.mark.parametrize(("text", "words"), [("not base32!", "base32"), ("AAAA", "at least")])
def test_bad_secrets(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        decode_secret(text)


def test_otpauth_url() -> None:
    assert (
        otpauth_url("alice", "JBSWY3DPEHPK3PXP")
        == "otpauth://totp/sftpd:alice?secret=JBSWY3DPEHPK3PXP&issuer=sftpd"
    )
    assert otpauth_url("a b", "X").startswith("otpauth://totp/sftpd:a%20b?")
