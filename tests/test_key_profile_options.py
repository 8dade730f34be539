"""OpenSSH key options in [[users.keys]]: the TOML shape, its errors, the checker obeying them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin

from sftpd.auth.checkers import PublicKeyChecker
from sftpd.auth.users import TomlUserStore
from sftpd.config.loader import load_config
from sftpd.errors import ConfigError

PRIV = ed25519.Ed25519PrivateKey.generate()
KEY = (
    PRIV.public_key()
    .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    .decode()
    + " backup@nas"
)
HASH = '"$2b$04$' + "a" * 53 + '"'


def write(tmp_path: Path, keys_table: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[[users]]\nname = "alice"\nroot = "{tmp_path}"\npassword_hash = {HASH}\n'
        f"[[users.keys]]\n{keys_table}\n"
    )
    return path


def toml(text: str) -> str:
    return "'" + text + "'"  # a TOML literal string: the double quotes stay as written


def test_options_as_one_openssh_option_string(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            f'key = "{KEY}"\noptions = ' + toml('from="10.0.0.0/8,!10.0.0.9",restrict') + "\n"
            'permissions = ["list"]',
        )
    )
    (k,) = cfg.users[0].keys
    assert k.options.from_patterns == ("10.0.0.0/8", "!10.0.0.9")
    assert k.options.restricted and k.permissions == ("list",) and k.comment == "backup@nas"


def test_options_written_before_the_key_as_in_authorized_keys(tmp_path: Path) -> None:
    line = 'expiry-time="20991231",no-pty ' + KEY
    (k,) = load_config(write(tmp_path, "key = " + toml(line))).users[0].keys
    assert k.options.expires_at is not None and not k.options.pty
    assert k.comment == "backup@nas"


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        (
            "options = " + toml('from="example.com"'),
            "users[0].keys[0].options",
            "option 'from': 'example.com' looks like a host name",
        ),
        (
            "options = " + toml('environment="A=b"'),
            "users[0].keys[0].options",
            "option 'environment': is refused",
        ),
        (
            "options = " + toml("no-pty,frobnicate"),
            "users[0].keys[0].options",
            "option 'frobnicate': unknown key option",
        ),
        (
            "options = " + toml('command="/bin/sh"'),
            "users[0].keys[0].options",
            "option 'command': '/bin/sh' cannot be enforced",
        ),
        (
            "options = " + toml('from="10.0.0.1" ssh-ed25519 AAAA'),
            "users[0].keys[0].options",
            "unexpected text after the options",
        ),
        ('options = ""', "users[0].keys[0].options", "expected a non-empty string"),
        ("options = 3", "users[0].keys[0].options", "expected a non-empty string, got integer 3"),
        (
            "options = " + toml("cert-authority"),
            "users[0].keys[0].options",
            "option 'cert-authority': a CA's certificates do not get a [[users.keys]] profile",
        ),
        (
            "key = " + toml('from="10.0.0.1",no-pty,bogus ' + KEY),
            "users[0].keys[0].key",
            "option 'bogus': unknown key option",
        ),
        (
            "key = " + toml("no-pty " + KEY) + "\noptions = " + toml("restrict"),
            "users[0].keys[0].options",
            "the key line has options of its own; give them in one place",
        ),
    ],
)
def test_option_errors_name_file_key_and_option(
    tmp_path: Path, table: str, key: str, message: str
) -> None:
    if not table.startswith("key ="):
        table = f'key = "{KEY}"\n' + table
    path = write(tmp_path, table)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: {key}: "), text
    assert message in text, text


def _creds(peer: str) -> Any:
    key = keys.Key(PRIV)
    data = b"session-data"
    sig = key.sign(data, signatureType=b"ssh-ed25519")
    creds = credentials.SSHPrivateKey(b"alice", b"ssh-ed25519", key.public().blob(), data, sig)
    creds.peer = peer
    return creds


def test_the_checker_obeys_a_profile_keys_from(tmp_path: Path) -> None:
    table = f'key = "{KEY}"\noptions = ' + toml('from="127.0.0.2"')
    cfg = load_config(write(tmp_path, table))
    chk = PublicKeyChecker(TomlUserStore.from_config(cfg.users))

    def outcome(peer: str) -> Any:
        out: list[Any] = []
        chk.requestAvatarId(_creds(peer)).addBoth(out.append)
        return out[0]

    assert outcome("127.0.0.2") == b"alice"
    failure = outcome("127.0.0.1")
    assert failure.check(UnauthorizedLogin) and "from=" in failure.getErrorMessage()
