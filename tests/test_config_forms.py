"""Config value forms: umask literals, e-mail style names, log level aliases, algorithm presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftpd.config.loader import load_config
from tests.test_config import HASH, load_error, user, write


@pytest.mark.parametrize(
    "name", ["Alice", "1abc", "john.doe@example.com", "Ann+sftp@Example.org", "a" * 64, "a.b-c_d"]
)
def test_email_style_user_names(tmp_path: Path, name: str) -> None:
    cfg = write(tmp_path, user(f'password_hash = "{HASH}"', name=name))
    assert load_config(cfg).users[0].name == name


def test_log_level_warning_is_warn(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[server]\nlog_level = "warning"\n' + user(f'password_hash = "{HASH}"'))
    assert load_config(cfg).server.log_level == "warn"


UMASK_FORMS = 'write it as a string "022" or as a TOML octal integer 0o022'


@pytest.mark.parametrize(
    ("text", "value"),
    [("0o022", 0o22), ("0o0_77", 0o77), ("0", 0), ("7", 7), ('"22"', 0o22), ('"0o27"', 0o27)],
)
def test_umask_octal_integers_and_strings(tmp_path: Path, text: str, value: int) -> None:
    cfg = write(
        tmp_path,
        f"[sftp] # the mode\numask = {text}  # 0o022\n" + user(f'password_hash = "{HASH}"'),
    )
    assert load_config(cfg).sftp.umask == value


@pytest.mark.parametrize(
    ("body", "shown", "value"),
    [
        ("[sftp]\numask = 22\n", "22", 22),
        ("[sftp]\numask=18 # 0o022\n", "18", 18),
        ("sftp = { max_handles = 9, umask = 63 }\n", "63", 63),
        ("sftp.umask = +22\n", "+22", 22),
        ("[sftp]\numask = 0x12\n", "0x12", 18),
        ("[sftp]\n'umask' = 0b10010\n", "0b10010", 18),
    ],
)
def test_umask_decimal_integer_refused(tmp_path: Path, body: str, shown: str, value: int) -> None:
    path, e = load_error(tmp_path, body + user(f'password_hash = "{HASH}"'))
    assert str(e) == (
        f"{path}: sftp.umask: the integer {shown} is read as decimal {value} "
        f"(octal {value:o}), not as an octal mode; {UMASK_FORMS}"
    )


def test_algorithm_presets(tmp_path: Path) -> None:
    from sftpd.config import model as cfgmod

    creds = user(f'password_hash = "{HASH}"')
    modern = load_config(write(tmp_path, creds)).server
    assert modern.algorithms == "modern"
    offered = modern.kex_algorithms + modern.macs + modern.host_key_algorithms
    assert not [n for n in offered if "nistp" in n or n in ("hmac-sha2-256", "hmac-sha2-512")]
    assert modern.macs == ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
    compat = load_config(write(tmp_path, '[server]\nalgorithms = "compat"\n' + creds)).server
    assert compat.kex_algorithms == cfgmod.COMPAT_KEX
    assert compat.macs == cfgmod.COMPAT_MACS
    assert compat.host_key_algorithms == cfgmod.COMPAT_HOST_KEY_ALGORITHMS
    assert "ecdh-sha2-nistp256" in compat.kex_algorithms
    # an explicit list wins over either preset; the others still follow the preset
    body = '[server]\nalgorithms = "compat"\nmacs = ["hmac-sha2-512"]\n' + creds
    mixed = load_config(write(tmp_path, body)).server
    assert (mixed.macs, mixed.kex_algorithms) == (("hmac-sha2-512",), cfgmod.COMPAT_KEX)
    body = '[server]\nkex_algorithms = ["ecdh-sha2-nistp256"]\n' + creds
    assert load_config(write(tmp_path, body)).server.kex_algorithms == ("ecdh-sha2-nistp256",)
    path, e = load_error(tmp_path, '[server]\nalgorithms = "fips"\n' + creds)
    assert str(e) == (
        f'{path}: server.algorithms: expected "modern" or "compat", got string \'fips\''
    )
