"""Revocation: KRLs made by ssh-keygen -k (each section kind), key lists, re-reading on change."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from sftpd.auth.certs import CertInfo, verify_user_cert
from sftpd.auth.krl import (
    CaRevocations,
    KrlError,
    RevocationFile,
    parse_krl,
    parse_revocations,
)
from sftpd.auth.wire import fingerprint, string, u32
from tests.pki import Pki, pub

NOW = 1_900_000_000.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("krl"))


@pytest.fixture(scope="module")
def ca(pki: Pki) -> Path:
    return pki.key("ed25519", "ca")


def cert(pki: Pki, ca: Path, serial: int, key_id: str = "id") -> tuple[bytes, CertInfo]:
    user = pki.key("ed25519")
    blob = pki.sign(ca, user, "-z", str(serial), key_id=key_id)
    info = verify_user_cert(
        blob, trusted_cas=[pub(ca)], principals=["alice"], client_address="::1", now=NOW
    )
    return pub(user), info


def krl(pki: Pki, spec: str, ca: Path | None = None) -> Path:
    pki.count += 1
    spec_file = pki.root / f"spec{pki.count}"
    spec_file.write_text(spec + "\n")
    out = pki.root / f"krl{pki.count}"
    cmd = ["ssh-keygen", "-q", "-k", "-f", str(out)]
    cmd += ["-s", f"{ca}.pub"] if ca else []
    subprocess.run([*cmd, str(spec_file)], check=True)
    return out


def revoked(path: Path, key: bytes, info: CertInfo | None = None) -> bool:
    return RevocationFile(path).is_revoked(key, info)


def test_serial(pki: Pki, ca: Path) -> None:
    path = krl(pki, "serial: 5", ca)
    assert revoked(path, *cert(pki, ca, 5))
    assert not revoked(path, *cert(pki, ca, 6))
    assert parse_krl(path.read_bytes()).by_ca[pub(ca)].serials == {5}


def test_serial_range(pki: Pki, ca: Path) -> None:
    path = krl(pki, "serial: 10-2000", ca)
    assert parse_krl(path.read_bytes()).by_ca[pub(ca)].ranges == [(10, 2000)]
    assert revoked(path, *cert(pki, ca, 10)) and revoked(path, *cert(pki, ca, 2000))
    assert not revoked(path, *cert(pki, ca, 9)) and not revoked(path, *cert(pki, ca, 2001))


def test_serial_bitmap(pki: Pki, ca: Path) -> None:
    # scattered serials: ssh-keygen packs them as a bitmap
    path = krl(pki, "\n".join(f"serial: {n}" for n in range(100, 300, 2)), ca)
    section = parse_krl(path.read_bytes()).by_ca[pub(ca)]
    assert section.bitmaps and not section.serials
    assert revoked(path, *cert(pki, ca, 100)) and revoked(path, *cert(pki, ca, 298))
    assert not revoked(path, *cert(pki, ca, 101)) and not revoked(path, *cert(pki, ca, 300))


def test_bitmap_and_serial_zero_rules() -> None:
    section = CaRevocations(bitmaps=[(64, 0b101)], serials={0})
    assert [n for n in range(60, 70) if section.serial_revoked(n)] == [64, 66]
    assert not section.serial_revoked(0)  # serial 0 means "none given": never revoked


def test_key_id(pki: Pki, ca: Path) -> None:
    path = krl(pki, "id: stolen laptop", ca)
    assert revoked(path, *cert(pki, ca, 1, key_id="stolen laptop"))
    assert not revoked(path, *cert(pki, ca, 1, key_id="stolen"))


def test_serial_under_another_ca_is_not_revoked(pki: Pki, ca: Path) -> None:
    other = pki.key("ed25519")
    path = krl(pki, "serial: 5", other)
    assert not revoked(path, *cert(pki, ca, 5))


def test_explicit_key_and_the_ca_key(pki: Pki, ca: Path) -> None:
    user = pki.key("ed25519")
    path = krl(pki, "key: " + Path(f"{user}.pub").read_text().strip())
    assert pub(user) in parse_krl(path.read_bytes()).keys
    assert revoked(path, pub(user))
    assert not revoked(path, pub(pki.key("ed25519")))
    # a revoked CA key revokes every certificate it signed
    by_ca = krl(pki, "key: " + Path(f"{ca}.pub").read_text().strip())
    assert revoked(by_ca, *cert(pki, ca, 9))


def test_certified_key_revoked_revokes_its_certificate(pki: Pki, ca: Path) -> None:
    key, info = cert(pki, ca, 3)
    path = pki.root / "list"
    path.write_bytes(b"# revoked\n" + b"ssh-ed25519 " + base64.b64encode(key) + b"\n")
    assert revoked(path, key, info)


def test_sha256_hash(pki: Pki) -> None:
    user = pki.key("ed25519")
    path = krl(pki, "hash: " + fingerprint(pub(user)))
    assert hashlib.sha256(pub(user)).digest() in parse_krl(path.read_bytes()).sha256
    assert revoked(path, pub(user)) and not revoked(path, pub(pki.key("ed25519")))


def test_sha1_hash(pki: Pki) -> None:
    user = pki.key("ed25519")
    path = krl(pki, "sha1: " + Path(f"{user}.pub").read_text().strip())
    assert hashlib.sha1(pub(user)).digest() in parse_krl(path.read_bytes()).sha1
    assert revoked(path, pub(user)) and not revoked(path, pub(pki.key("ed25519")))


def test_krl_from_plain_key_files(pki: Pki) -> None:
    user = pki.key("rsa:2048")
    out = pki.root / "fromkeys"
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(out), f"{user}.pub"], check=True)
    assert revoked(out, pub(user))


def test_plain_key_list_reread_on_change(pki: Pki, tmp_path: Path) -> None:
    a, b = pki.key("ed25519"), pki.key("ed25519")
    path = tmp_path / "revoked"
    path.write_text(Path(f"{a}.pub").read_text())
    revocations = RevocationFile(path)
    assert revocations.is_revoked(pub(a)) and not revocations.is_revoked(pub(b))
    # replaced by rename (new inode), as admins and config management do
    tmp = tmp_path / "revoked.new"
    tmp.write_text(Path(f"{b}.pub").read_text())
    os.replace(tmp, path)
    assert revocations.is_revoked(pub(b)) and not revocations.is_revoked(pub(a))
    # rewritten in place with a different size
    path.write_text(Path(f"{a}.pub").read_text() + Path(f"{b}.pub").read_text())
    assert revocations.is_revoked(pub(a)) and revocations.is_revoked(pub(b))


def test_broken_or_missing_file_revokes_everything(pki: Pki, tmp_path: Path) -> None:
    a = pki.key("ed25519")
    path = tmp_path / "revoked"
    path.write_text("")
    revocations = RevocationFile(path)
    assert not revocations.is_revoked(pub(a)) and revocations.error is None
    path.write_text("not a key\n")
    assert revocations.is_revoked(pub(a))
    assert revocations.error == "line 1: expected a public key 'TYPE BASE64 [COMMENT]'"
    path.unlink()
    assert revocations.is_revoked(pub(a)) and "cannot be read" in str(revocations.error)
    path.write_text("")
    assert not revocations.is_revoked(pub(a)) and revocations.error is None
    with pytest.raises(KrlError, match="cannot be read"):
        RevocationFile(tmp_path / "absent")


HEADER = b"SSHKRL\n\0" + u32(1) + bytes(24) + string(b"") + string(b"")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"SSHKRL\n\0" + u32(2) + bytes(40), "version 2"),
        (HEADER[:-3], "malformed"),
        (HEADER + b"\x09" + string(b""), "section type 9"),
        (HEADER + b"\x05" + string(string(b"short")), "fingerprint of 5 bytes"),
        (HEADER + b"\x01" + string(string(b"") + string(b"") + b"\x30" + string(b"")), "0x30"),
        (HEADER + b"\x01" + string(string(b"") + string(b"") + b"\x21" + string(bytes(8))), "mal"),
        (b"\xff\xfe", "neither"),
    ],
)
def test_malformed_krls(data: bytes, words: str) -> None:
    with pytest.raises(KrlError, match=words):
        parse_revocations(data)


def test_empty_ca_key_means_any_ca(pki: Pki, ca: Path) -> None:
    # ssh-keygen 9.2 refuses 'id:' without -s CA, so this any-CA section is built by hand
    ids = string(b"wild")
    section = string(b"") + string(b"") + b"\x23" + string(ids)
    data = HEADER + b"\x01" + string(section)
    assert parse_revocations(data).is_revoked(*cert(pki, ca, 1, key_id="wild"))
    assert not parse_revocations(data).is_revoked(*cert(pki, ca, 1, key_id="tame"))
