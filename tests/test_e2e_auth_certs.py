"""End-to-end: OpenSSH user certificates (ssh-keygen -s) against a real sftpd with a user CA."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.pki import Pki
from tests.support import Env, User, have, toml_str

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have("sftp"), reason="no OpenSSH sftp")]


def _sftp(env: Env, key: Path, batch: str, user: str = "carol") -> subprocess.CompletedProcess[str]:
    cmd = [
        "sftp",
        *env.ssh_opts(key=False),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(key),
        "-b",
        "-",
        f"{user}@127.0.0.1",
    ]
    return subprocess.run(cmd, input=batch, capture_output=True, text=True, timeout=60, cwd=env.tmp)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    return Pki(d)


def _start(
    make_server: Callable[..., Env], tmp_path: Path, pki: Pki, ca: Path, revoked: Path | None = None
) -> Env:
    server = f"trusted_user_ca_keys_file = {toml_str(f'{ca}.pub')}"
    if revoked is not None:
        server += f"\nrevoked_keys_file = {toml_str(str(revoked))}"
    carol = User("carol", tmp_path / "carol-root", extra='principals = ["carol", "ops"]')
    return make_server(users=[carol], server_extra=server)


def test_certificate_logs_in_and_bad_ones_are_refused(
    make_server: Callable[..., Env], tmp_path: Path, pki: Pki
) -> None:
    ca = pki.key("ed25519", "ca")
    other_ca = pki.key("ed25519", "other-ca")
    good = pki.key("ed25519", "good")
    pki.sign(ca, good, "-V", "-5m:+1h", "-z", "41", principals="ops", key_id="carol@laptop")
    rsa = pki.key("rsa:2048", "rsa")
    pki.sign(ca, rsa, "-V", "-5m:+1h", principals="carol")
    ecdsa = pki.key("ecdsa:384", "ecdsa")
    pki.sign(ca, ecdsa, "-V", "-5m:+1h", principals="carol")
    forced = pki.key("ed25519", "forced")
    pki.sign(ca, forced, "-O", "force-command=internal-sftp -R", principals="carol")
    cases: dict[str, Path] = {}
    for name, args, principals, signer in (
        ("expired", ["-V", "20200101:20200102"], "carol", ca),
        ("not-yet-valid", ["-V", "+52w:+53w"], "carol", ca),
        ("wrong-principal", ["-V", "-5m:+1h"], "bob", ca),
        ("revoked", ["-V", "-5m:+1h", "-z", "7"], "carol", ca),
        ("wrong-ca", ["-V", "-5m:+1h"], "carol", other_ca),
        ("source-outside", ["-V", "-5m:+1h", "-O", "source-address=192.0.2.0/24"], "carol", ca),
        ("unknown-critical", ["-O", "verify-required"], "carol", ca),
    ):
        key = pki.key("ed25519", name)
        pki.sign(signer, key, *args, principals=principals)
        cases[name] = key
    # a KRL revoking serial 7, made by ssh-keygen -k
    spec = tmp_path / "krl-spec"
    spec.write_text("serial: 7\n")
    krl = tmp_path / "revoked.krl"
    subprocess.run(
        ["ssh-keygen", "-q", "-k", "-f", str(krl), "-s", f"{ca}.pub", str(spec)], check=True
    )
    env = _start(make_server, tmp_path, pki, ca, krl)
    (tmp_path / "up.bin").write_bytes(b"certified bytes\n" * 100)

    res = _sftp(env, good, "put up.bin from-cert.bin\n")
    assert res.returncode == 0, res.stderr + env.server.log_text()[-2000:]
    assert (tmp_path / "carol-root" / "from-cert.bin").read_bytes() == b"certified bytes\n" * 100
    log = env.server.log_text()
    assert "cert_id='carol@laptop' serial=41 ca=SHA256:" in log
    for key in (rsa, ecdsa):
        res = _sftp(env, key, "ls\n")
        assert res.returncode == 0, res.stderr + env.server.log_text()[-2000:]
    # force-command=internal-sftp -R: SFTP reads only, no exec commands
    res = _sftp(env, forced, "get from-cert.bin back.bin\n")
    assert (
        res.returncode == 0 and (tmp_path / "back.bin").read_bytes() == b"certified bytes\n" * 100
    )
    res = _sftp(env, forced, "put up.bin forced.bin\n")
    assert res.returncode != 0 and not (tmp_path / "carol-root" / "forced.bin").exists()
    ssh = subprocess.run(
        [
            *("ssh", *env.ssh_opts(port_flag="-p", key=False), "-o", "BatchMode=yes"),
            *(
                "-o",
                "IdentitiesOnly=yes",
                "-i",
                str(forced),
                "carol@127.0.0.1",
                "md5sum from-cert.bin",
            ),
        ],
        capture_output=True,
        timeout=60,
    )
    assert ssh.returncode != 0 and b"from-cert.bin" not in ssh.stdout

    for name, key in cases.items():
        res = _sftp(env, key, "ls\n")
        assert res.returncode != 0, f"{name} logged in"
    log = env.server.log_text()
    for words in (
        "certificate expired",
        "certificate not yet valid",
        "no certificate principal is allowed",
        "certificate revoked",
        "untrusted CA",
        "source-address",
        "unknown critical option 'verify-required'",
    ):
        assert words in log, words
    assert not (tmp_path / "carol-root" / "x").exists()


def test_cert_authority_line_trusts_a_ca_for_one_user(
    make_server: Callable[..., Env], tmp_path: Path, pki: Pki
) -> None:
    ca = pki.key("ed25519", "dan-ca")
    line = f'cert-authority,principals="deploy" {Path(f"{ca}.pub").read_text().strip()}'
    dan = User("dan", tmp_path / "dan-root", extra=f"authorized_keys = [{toml_str(line)}]")
    env = make_server(users=[dan])
    good = pki.key("ed25519", "deploy")
    pki.sign(ca, good, "-V", "-5m:+1h", principals="deploy")
    named = pki.key("ed25519", "named")
    pki.sign(ca, named, "-V", "-5m:+1h", principals="dan")  # not in the line's principals
    (tmp_path / "up.bin").write_bytes(b"deployed\n")
    res = _sftp(env, good, "put up.bin d.bin\n", user="dan")
    assert res.returncode == 0, res.stderr + env.server.log_text()[-2000:]
    assert (tmp_path / "dan-root" / "d.bin").read_bytes() == b"deployed\n"
    assert _sftp(env, named, "ls\n", user="dan").returncode != 0
    # the CA key itself is no login key, and the CA is trusted for dan only
    assert _sftp(env, ca, "ls\n", user="dan").returncode != 0
    assert _sftp(env, good, "ls\n", user="alice").returncode != 0
