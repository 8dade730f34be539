"""User certificates made by ssh-keygen -s: every refusal reason, and what a good one gives."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from sftpd.auth.certs import (
    CERT_SIGNATURE_ALGORITHMS,
    CertError,
    CertInfo,
    is_certificate,
    verify_user_cert,
)
from sftpd.auth.wire import Reader, fingerprint, string
from sftpd.config.keyopts import ForcedCommand
from tests.pki import Pki, blob


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def ca(pki: Pki) -> Path:
    return pki.key("ed25519", "ca")


NOW = 1_900_000_000.0


def check(cert: bytes, ca: Path, *, address: str = "192.0.2.10", now: float = NOW) -> CertInfo:
    return verify_user_cert(
        cert,
        trusted_cas=[blob(Path(f"{ca}.pub"))],
        principals=["alice", "backup-team"],
        client_address=address,
        now=now,
    )


def refused(cert: bytes, ca: Path, words: str, **kw: object) -> None:
    with pytest.raises(CertError) as info:
        check(cert, ca, **kw)  # type: ignore[arg-type]
    assert words in info.value.reason


def test_good_certificate(pki: Pki, ca: Path) -> None:
    user = pki.key("ed25519")
    cert = pki.sign(ca, user, "-z", "77", principals="bob,alice")
    assert is_certificate(cert) and not is_certificate(blob(Path(f"{user}.pub")))
    info = check(cert, ca)
    assert info.key_blob == blob(Path(f"{user}.pub"))
    assert (info.key_id, info.serial, info.principals) == ("key-id-1", 77, ("bob", "alice"))
    assert info.force_command is None and info.source_address is None
    assert info.ca_fingerprint == fingerprint(blob(Path(f"{ca}.pub")))
    out = subprocess.run(["ssh-keygen", "-lf", f"{ca}.pub"], capture_output=True, text=True)
    assert info.ca_fingerprint in out.stdout  # the same SHA256: text as OpenSSH prints
    assert info.describe() == f"cert_id='key-id-1' serial=77 ca={info.ca_fingerprint}"


@pytest.mark.parametrize(
    ("ca_kind", "user_kind", "args"),
    [
        ("ed25519", "ecdsa:384", ()),
        ("ecdsa:256", "ecdsa:521", ()),
        ("rsa:2048", "rsa:2048", ()),  # ssh-keygen's default for an RSA CA: rsa-sha2-512
        ("rsa:2048", "ed25519", ("-t", "rsa-sha2-256")),
        ("ecdsa:384", "rsa:2048", ()),
    ],
)
def test_key_and_ca_types(pki: Pki, ca_kind: str, user_kind: str, args: tuple[str, ...]) -> None:
    other_ca = pki.key(ca_kind)
    user = pki.key(user_kind)
    info = check(pki.sign(other_ca, user, *args), other_ca)
    assert info.key_blob == blob(Path(f"{user}.pub"))


def test_sha1_rsa_ca_signature_refused(pki: Pki) -> None:
    rsa_ca = pki.key("rsa:2048")
    cert = pki.sign(rsa_ca, pki.key("ed25519"), "-t", "ssh-rsa")
    refused(cert, rsa_ca, "SHA-1")


def test_wrong_ca_refused(pki: Pki, ca: Path) -> None:
    other = pki.key("ed25519")
    refused(pki.sign(other, pki.key("ed25519")), ca, "untrusted CA")


def test_tampered_certificate_refused(pki: Pki, ca: Path) -> None:
    cert = bytearray(pki.sign(ca, pki.key("ed25519"), "-z", "5"))
    r = Reader(bytes(cert))
    for _ in range(3):  # type, nonce, public key
        r.string()
    cert[r.offset + 7] ^= 1  # serial 5 -> 4, CA signature no longer matches
    refused(bytes(cert), ca, "bad CA signature")


def test_validity_window_with_skew(pki: Pki, ca: Path) -> None:
    cert = pki.sign(ca, pki.key("ed25519"), "-V", "20300101000000Z:20300102000000Z")
    after, before = 1893456000, 1893542400
    assert check(cert, ca, now=after - 30).valid_after == after  # within the skew
    refused(cert, ca, "not yet valid", now=after - 61)
    check(cert, ca, now=before + 59)
    refused(cert, ca, "expired", now=before + 60)


def test_expired_and_not_yet_valid_relative(pki: Pki, ca: Path) -> None:
    now = time.time()
    refused(pki.sign(ca, pki.key("ed25519"), "-V", "-2d:-1d"), ca, "expired", now=now)
    refused(pki.sign(ca, pki.key("ed25519"), "-V", "+1d:+2d"), ca, "not yet valid", now=now)
    check(pki.sign(ca, pki.key("ed25519"), "-V", "-5m:+1h"), ca, now=now)


def test_wrong_principal_refused(pki: Pki, ca: Path) -> None:
    refused(pki.sign(ca, pki.key("ed25519"), principals="mallory"), ca, "principal")
    check(pki.sign(ca, pki.key("ed25519"), principals="backup-team"), ca)


def test_certificate_without_principals_refused(pki: Pki, ca: Path) -> None:
    user = pki.key("ed25519")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "x", f"{user}.pub"], check=True)
    refused(blob(Path(f"{user}-cert.pub")), ca, "no principals")


def test_host_certificate_refused(pki: Pki, ca: Path) -> None:
    refused(pki.sign(ca, pki.key("ed25519"), "-h"), ca, "host certificate")


def test_source_address(pki: Pki, ca: Path) -> None:
    cert = pki.sign(ca, pki.key("ed25519"), "-O", "source-address=192.0.2.0/24,2001:db8::1")
    assert check(cert, ca, address="192.0.2.99").source_address == ("192.0.2.0/24", "2001:db8::1")
    check(cert, ca, address="2001:db8::1")
    check(cert, ca, address="::ffff:192.0.2.1")
    refused(cert, ca, "source-address", address="198.51.100.1")
    refused(cert, ca, "source-address", address="2001:db8::2")


def test_force_command_mapped_or_refused(pki: Pki, ca: Path) -> None:
    good = pki.sign(ca, pki.key("ed25519"), "-O", "force-command=rrsync -ro /backups")
    assert check(good, ca).force_command == ForcedCommand(
        frozenset({"rsync"}), read_only=True, directory="/backups"
    )
    sftp = pki.sign(ca, pki.key("ed25519"), "-O", "force-command=internal-sftp")
    assert check(sftp, ca).force_command == ForcedCommand(frozenset({"sftp"}))
    bad = pki.sign(ca, pki.key("ed25519"), "-O", "force-command=/bin/bash")
    refused(bad, ca, "cannot be enforced")


def test_unknown_critical_option_refused(pki: Pki, ca: Path) -> None:
    # ssh-keygen (8.2+) writes arbitrary critical options with -O critical:NAME=VALUE
    cert = pki.sign(ca, pki.key("ed25519"), "-O", "critical:frob@example.com=1")
    refused(cert, ca, "unknown critical option 'frob@example.com'")


def test_garbage_refused(ca: Path) -> None:
    refused(b"", ca, "does not decode")
    refused(string(b"ssh-dss-cert-v01@openssh.com") + b"x" * 40, ca, "not accepted")
    refused(string(b"ssh-ed25519-cert-v01@openssh.com") + string(b"n"), ca, "does not decode")


def test_cert_algorithms_name_the_plain_signature() -> None:
    assert CERT_SIGNATURE_ALGORITHMS[b"rsa-sha2-256-cert-v01@openssh.com"] == b"rsa-sha2-256"
    assert b"ssh-rsa-cert-v01@openssh.com" not in CERT_SIGNATURE_ALGORITHMS
