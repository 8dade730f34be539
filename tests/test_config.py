"""load_config and embedded_default: the accepted shapes and every error message."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sftpd.config.keyopts import KeyLine
from sftpd.config.loader import ConfigErrors, embedded_default, load_config
from sftpd.config.model import (
    DEFAULT_CIPHERS,
    Config,
    ExecConfig,
    ServerConfig,
    SftpConfig,
    UserConfig,
)
from sftpd.config.values import parse_authorized_key
from sftpd.edge.config import SERVER_KEYS as EDGE_SERVER_KEYS
from sftpd.edge.config import USER_KEYS, DefenderConfig
from sftpd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
# A fixed salt keeps test ids identical across pytest-xdist workers.
HASH = bcrypt.hashpw(b"secret", b"$2b$04$abcdefghijklmnopqrstuu").decode()


def key_line(kind: str = "ed25519", comment: str = "alice@laptop", seed: int = 0) -> str:
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519" and seed:
        # deterministic: the line appears in test ids, which must match across xdist workers
        key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    elif kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP384R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{line.decode()} {comment}".strip()


def blob(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


KEY = key_line(seed=1)


def write(tmp_path: Path, text: str, name: str = "sftpd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def user(extra: str = "", *, name: str = "alice", root: str = "data/alice") -> str:
    return f'[[users]]\nname = "{name}"\nroot = "{root}"\n{extra}\n'


def load_error(tmp_path: Path, text: str) -> tuple[Path, ConfigError]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return path, info.value


# --------------------------------------------------------------------------- accepted


def test_minimal_shape_from_the_issue(tmp_path: Path) -> None:
    (tmp_path / "alice.pub").write_text(f"# comment\n\n{KEY}\n  \n")
    other = key_line("ecdsa")
    cfg = write(
        tmp_path,
        f"""
[server]
listen = ["127.0.0.1:2222", "[::1]:2222", "0.0.0.0:22"]
host_keys_dir = "keys"

[[users]]
name = "alice"
root = "srv/alice"
password_hash = "{HASH}"
authorized_keys = ["{other}"]
authorized_keys_file = "alice.pub"
""",
    )
    config = load_config(cfg)
    assert config.source == cfg
    assert config.server.listen == (("127.0.0.1", 2222), ("::1", 2222), ("0.0.0.0", 22))
    assert config.server.host_keys_dir == tmp_path / "keys"
    (alice,) = config.users
    assert alice == UserConfig(
        name="alice",
        root=tmp_path / "srv" / "alice",
        password_hash=HASH.encode(),
        authorized_keys=(blob(other), blob(KEY)),
        key_lines=(KeyLine(blob(other)), KeyLine(blob(KEY))),
    )
    assert not alice.root.exists()  # loading creates nothing (sftpd.preflight does)
    assert config.server.kex_algorithms == ServerConfig().kex_algorithms


def test_every_key(tmp_path: Path) -> None:
    (tmp_path / "moduli").write_text("")
    alice_toml = user(
        'home = "/in/../up"\nread_only = true\nallow_rsync = false\nallow_exec = true\n'
        f'authorized_keys = ["{KEY}"]'
    )
    cfg = write(
        tmp_path,
        f"""
[server]
listen = ["127.0.0.1:0"]
host_keys_dir = "/etc/sftpd/keys"
banner = "corp_1.0 hello"
login_grace_time = 30
max_auth_tries = 3
auth_failure_delay = 0.5
max_sessions = 2
moduli_file = "moduli"
kex_algorithms = ["curve25519-sha256", "diffie-hellman-group14-sha1"]
ciphers = ["aes256-ctr", "aes128-cbc", "3des-cbc"]
macs = ["hmac-sha2-512", "hmac-sha1", "hmac-md5"]
host_key_algorithms = ["ssh-ed25519", "ssh-rsa", "ssh-dss"]
rekey_bytes = 1048576
rekey_seconds = 600
workers = 4
busy_poll_us = 0
log_format = "json"
log_level = "debug"
[sftp]
umask = "0o027"
max_handles = 16
[exec]
allow_scp = false
allow_hashes = false
allow_rsync = false
rsync_path = "/usr/bin/rsync"
bwrap_path = "/usr/bin/bwrap"
{alice_toml}
""",
    )
    config = load_config(cfg)
    assert config.server == ServerConfig(
        listen=(("127.0.0.1", 0),),
        host_keys_dir=Path("/etc/sftpd/keys"),
        banner="corp_1.0 hello",
        login_grace_time=30.0,
        max_auth_tries=3,
        auth_failure_delay=0.5,
        max_sessions=2,
        moduli_file=tmp_path / "moduli",
        kex_algorithms=("curve25519-sha256", "diffie-hellman-group14-sha1"),
        ciphers=("aes256-ctr", "aes128-cbc", "3des-cbc"),
        macs=("hmac-sha2-512", "hmac-sha1", "hmac-md5"),
        host_key_algorithms=("ssh-ed25519", "ssh-rsa", "ssh-dss"),
        rekey_bytes=1 << 20,
        rekey_seconds=600.0,
        workers=4,
        busy_poll_us=0,
        log_format="json",
        log_level="debug",
    )
    assert config.sftp == SftpConfig(umask=0o027, max_handles=16)
    assert config.exec == ExecConfig(False, False, False, "/usr/bin/rsync", "/usr/bin/bwrap")
    (alice,) = config.users
    assert (alice.home, alice.read_only, alice.allow_rsync, alice.allow_exec) == (
        "/up",
        True,
        False,
        True,
    )


@pytest.mark.parametrize(("text", "value"), [('"022"', 0o22), ('"0o077"', 0o77), ("0o002", 2)])
def test_umask_forms(tmp_path: Path, text: str, value: int) -> None:
    cfg = write(tmp_path, f"[sftp]\numask = {text}\n" + user(f'password_hash = "{HASH}"'))
    assert load_config(cfg).sftp.umask == value


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_key_types_accepted(tmp_path: Path, kind: str) -> None:
    line = key_line(kind)
    cfg = write(tmp_path, user(f'authorized_keys = ["{line}"]'))
    assert load_config(cfg).users[0].authorized_keys == (blob(line),)


def test_relative_paths_follow_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = write(conf_dir, '[server]\nhost_keys_dir = "k"\n' + user(f'password_hash = "{HASH}"'))
    config = load_config(cfg)
    assert config.users[0].root == conf_dir / "data" / "alice"
    assert config.server.host_keys_dir == conf_dir / "k"
    assert not (conf_dir / "data").exists() and not (elsewhere / "data").exists()


def test_example_config_as_shipped_grants_no_login(tmp_path: Path) -> None:
    """Copied as it is, the example has no credential: loading it refuses alice."""
    path = tmp_path / "config.example.toml"
    shutil.copy(REPO / "config.example.toml", path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: users[0]: user 'alice' has no way to log in; expected password_hash, "
        "authorized_keys or authorized_keys_file"
    )
    assert not isinstance(info.value, ConfigErrors)


def test_example_config_placeholders_are_not_credentials(tmp_path: Path) -> None:
    """Uncommented as they are, the placeholder hash and key line still do not parse."""
    text = (REPO / "config.example.toml").read_text()
    for key in ("password_hash", "authorized_keys"):
        assert f"\n# {key} = " in text
        text = text.replace(f"\n# {key} = ", f"\n{key} = ")
    path, e = load_error(tmp_path, text)
    assert isinstance(e, ConfigErrors)
    assert [x.key for x in e.errors] == ["users[0].password_hash", "users[0].authorized_keys[0]"]


def test_example_config_loads_and_shows_the_defaults(tmp_path: Path) -> None:
    text = (REPO / "config.example.toml").read_text()
    text = text.replace("\n# password_hash = ", f'\npassword_hash = "{HASH}"\n# ')
    config = load_config(write(tmp_path, text))
    assert config.server == ServerConfig(host_keys_dir=tmp_path / "keys")
    assert config.sftp == SftpConfig()
    assert config.exec == ExecConfig()
    assert [u.name for u in config.users] == ["alice"]


def test_example_config_documents_every_key() -> None:
    text = (REPO / "config.example.toml").read_text()
    fields = [
        *ServerConfig.__dataclass_fields__,
        *SftpConfig.__dataclass_fields__,
        *ExecConfig.__dataclass_fields__,
        *(f for f in UserConfig.__dataclass_fields__ if f not in ("key_lines", "edge")),
        "authorized_keys_file",
        "trusted_user_ca_keys_file",
        *EDGE_SERVER_KEYS,
        *USER_KEYS,
        *DefenderConfig.__dataclass_fields__,
    ]
    missing = [f for f in fields if f"\n{f} = " not in text and f"\n# {f} = " not in text]
    missing = [f for f in missing if f"# [[users.{f}]]" not in text]  # arrays of tables
    assert missing == []


# --------------------------------------------------------------------------- errors


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path, e = load_error(tmp_path, '[server]\nlisten = ["127.0.0.1:2222",,]\n')
    assert str(e) == f"{path}: line 2, column 28: invalid TOML: Invalid value"
    path, e = load_error(tmp_path, '[server]\nlisten = ["127.0.0.1:2222"\n')
    assert str(e) == f"{path}: end of document: invalid TOML: Unclosed array"


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    expected = f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory; expected a"
    assert str(info.value) == expected + " TOML file"


LISTEN_EXPECTED = 'expected "IPV4:PORT" (like "0.0.0.0:22") or "[IPV6]:PORT" (like "[::1]:2222")'


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ("[srever]\n", "srever", 'unknown key; did you mean "server"? expected one of: '),
        ("[server]\nlistn = []\n", "server.listn", 'unknown key; did you mean "listen"?'),
        ("[sftp]\nmask = 1\n", "sftp.mask", 'unknown key; did you mean "umask"?'),
        ("[exec]\nallow_sc = 1\n", "exec.allow_sc", 'unknown key; did you mean "allow_scp"?'),
        ("server = 1\n", "server", "expected a table ([server]), got integer 1"),
        (
            '[server]\nmax_auth_tries = "6"\n',
            "server.max_auth_tries",
            "expected an integer from 1 to 100, got string '6'",
        ),
        (
            "[server]\nmax_sessions = true\n",
            "server.max_sessions",
            "expected an integer from 1 to 1000, got boolean True",
        ),
        (
            "[server]\nbusy_poll_us = 20000\n",
            "server.busy_poll_us",
            "expected an integer from 0 to 10000, got integer 20000",
        ),
        (
            "[server]\nlogin_grace_time = 0\n",
            "server.login_grace_time",
            "expected a number of seconds from 1 to 86400, got integer 0",
        ),
        (
            '[exec]\nallow_scp = "yes"\n',
            "exec.allow_scp",
            "expected a boolean (true or false), got string 'yes'",
        ),
        (
            '[server]\nlisten = "127.0.0.1:22"\n',
            "server.listen",
            'expected an array of strings (addresses like "127.0.0.1:2222" or "[::1]:2222"), '
            "got string '127.0.0.1:22'",
        ),
        (
            "[server]\nlisten = []\n",
            "server.listen",
            'empty list; expected at least one address like "127.0.0.1:2222"',
        ),
        (
            '[server]\nlisten = ["localhost:22"]\n',
            "server.listen[0]",
            f"cannot parse 'localhost:22' as an address; {LISTEN_EXPECTED}",
        ),
        (
            '[server]\nlisten = ["127.0.0.1:22", "::1:22"]\n',
            "server.listen[1]",
            f"cannot parse '::1:22' as an address; {LISTEN_EXPECTED}",
        ),
        (
            '[server]\nlisten = ["127.0.0.1"]\n',
            "server.listen[0]",
            f"cannot parse '127.0.0.1' as an address; {LISTEN_EXPECTED}",
        ),
        (
            '[server]\nlisten = ["300.0.0.1:22"]\n',
            "server.listen[0]",
            f"'300.0.0.1' is not an IP address; {LISTEN_EXPECTED}",
        ),
        (
            '[server]\nlisten = ["[::1]:70000"]\n',
            "server.listen[0]",
            "port 70000 is out of range; expected 1 to 65535 (0: any free)",
        ),
        (
            '[server]\nlisten = ["[::1]:22", "[::1]:22"]\n',
            "server.listen[1]",
            "'[::1]:22' is listed twice; list it once",
        ),
        (
            '[server]\nciphers = ["aes128-ctr", "aes129-ctr"]\n',
            "server.ciphers[1]",
            "unknown algorithm 'aes129-ctr'; did you mean \"aes192-ctr\"? expected one of: "
            + ", ".join(DEFAULT_CIPHERS),
        ),
        (
            '[server]\nmacs = ["hmac-sha2-256", "hmac-sha2-256"]\n',
            "server.macs[1]",
            "'hmac-sha2-256' is listed twice; list it once",
        ),
        (
            "[server]\nkex_algorithms = []\n",
            "server.kex_algorithms",
            "empty list; expected at least one algorithm name",
        ),
        (
            '[server]\nhost_key_algorithms = ["ssh-ed448"]\n',
            "server.host_key_algorithms[0]",
            "unknown algorithm 'ssh-ed448'; did you mean",
        ),
        (
            '[server]\nlog_format = "xml"\n',
            "server.log_format",
            'expected "text" or "json", got string \'xml\'',
        ),
        (
            '[server]\nlog_level = "verbose"\n',
            "server.log_level",
            'expected "debug" or "info" or "warn" or "error" or "critical"',
        ),
        (
            '[server]\nbanner = "my-server"\n',
            "server.banner",
            "expected printable ASCII without '-' before the first space",
        ),
        (
            '[server]\nmoduli_file = "nope"\n',
            "server.moduli_file",
            "{tmp}/nope is not a readable file; expected an OpenSSH moduli file",
        ),
        (
            '[sftp]\numask = "9"\n',
            "sftp.umask",
            'expected an octal mode from 000 to 777; write it as a string "022" or as a TOML '
            "octal integer 0o022, got string '9'",
        ),
        ("[sftp]\numask = 0o1000\n", "sftp.umask", "expected an octal mode from 000 to 777"),
    ],
)
def test_server_section_errors(tmp_path: Path, body: str, key: str, message: str) -> None:
    path, e = load_error(tmp_path, body + user(f'password_hash = "{HASH}"'))
    assert e.key == key
    assert str(e).startswith(f"{path}: {key}: {message}".replace("{tmp}", str(tmp_path)))


NAME_EXPECTED = (
    "expected 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-', '@', '+', starting with a "
    "letter, digit or '_', without '..'"
)


@pytest.mark.parametrize(
    "name",
    [
        "a" * 65,
        "al ice",
        "al/ice",
        "..",
        "a..b",
        "-alice",
        ".alice",
        "@x",
        "+x",
        "al\tice",
        "a\x01",
    ],
)
def test_invalid_user_names(tmp_path: Path, name: str) -> None:
    text = user(f'password_hash = "{HASH}"').replace('"alice"', json.dumps(name))
    path, e = load_error(tmp_path, text)
    assert str(e) == f"{path}: users[0].name: invalid user name {name!r}; {NAME_EXPECTED}"


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        (
            f'passwrd_hash = "{HASH}"',
            "users[0].passwrd_hash",
            'unknown key; did you mean "password_hash"? expected one of: name, root, home, ',
        ),
        (
            'password_hash = "$6$salt$abcdefgh"',
            "users[0].password_hash",
            "not a bcrypt hash; expected $2b$ (or $2a$/$2y$) followed by the cost and 53 "
            "characters, as printed by `sftpd hash-password`",
        ),
        (
            f'password_hash = "{HASH}"\nhome = "in"',
            "users[0].home",
            '\'in\' is not absolute; expected a path inside the root like "/" or "/in"',
        ),
        (
            f'password_hash = "{HASH}"\nread_only = 1',
            "users[0].read_only",
            "expected a boolean (true or false), got integer 1",
        ),
        (
            'authorized_keys = "ssh-ed25519 AAAA"',
            "users[0].authorized_keys",
            "expected an array of strings (OpenSSH public key lines, options allowed), got string",
        ),
        (
            'authorized_keys = ["ssh-ed25519 not*base64"]',
            "users[0].authorized_keys[0]",
            "ssh-ed25519 key data does not parse (",
        ),
        (
            f'authorized_keys = ["{KEY}", "from=\\"host.example\\" {KEY}"]',
            "users[0].authorized_keys[1]",
            "option 'from': 'host.example' looks like a host name",
        ),
        (
            'authorized_keys = ["ssh-dss AAAAB3NzaC1kc3MAAACBAP"]',
            "users[0].authorized_keys[0]",
            "ssh-dss (DSA) keys are refused as obsolete; use an ssh-ed25519 key",
        ),
        (
            'authorized_keys = ["hello world"]',
            "users[0].authorized_keys[0]",
            "'hello' is not a key type; expected 'TYPE BASE64 [COMMENT]' with TYPE one of "
            "ssh-ed25519, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, ssh-rsa",
        ),
        (
            f'authorized_keys = ["ssh-rsa {KEY.split()[1]}"]',
            "users[0].authorized_keys[0]",
            "ssh-rsa key data does not parse (",
        ),
        ("", "users[0]", "user 'alice' has no way to log in; expected password_hash, "),
    ],
)
def test_user_errors(tmp_path: Path, extra: str, key: str, message: str) -> None:
    path, e = load_error(tmp_path, user(extra))
    assert e.key == key
    assert str(e).startswith(f"{path}: {key}: {message}")


def test_authorized_keys_file_bad_line_names_file_and_line(tmp_path: Path) -> None:
    keys = tmp_path / "alice.pub"
    keys.write_text(f'# alice\n{KEY}\n\ncommand="ls" {KEY}\n')
    path, e = load_error(tmp_path, user('authorized_keys_file = "alice.pub"'))
    assert str(e) == (
        f"{path}: users[0].authorized_keys_file: {keys}:4: option 'command': 'ls' cannot be "
        "enforced: sftpd runs no shell; use 'internal-sftp', 'internal-sftp -R' or "
        "'rrsync [-ro|-wo] DIR'"
    )


def test_unreadable_authorized_keys_file(tmp_path: Path) -> None:
    path, e = load_error(tmp_path, user('authorized_keys_file = "missing.pub"'))
    assert str(e) == (
        f"{path}: users[0].authorized_keys_file: cannot read {tmp_path / 'missing.pub'}: "
        "No such file or directory; expected a readable authorized_keys file"
    )


def test_authorized_keys_file_without_keys_is_no_way_to_log_in(tmp_path: Path) -> None:
    (tmp_path / "alice.pub").write_text("# nothing yet\n")
    path, e = load_error(tmp_path, user('authorized_keys_file = "alice.pub"'))
    assert str(e) == (
        f"{path}: users[0]: user 'alice' has no way to log in (authorized_keys_file has no key "
        "lines); expected password_hash, authorized_keys or authorized_keys_file"
    )


def test_duplicate_user_names(tmp_path: Path) -> None:
    pw = f'password_hash = "{HASH}"'
    path, e = load_error(tmp_path, user(pw) + user(pw, root="data/other"))
    assert str(e) == (
        f"{path}: users[1].name: duplicate user name 'alice' (already used by users[0]); "
        "expected each name once"
    )


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ("[server]\n", "users", "missing; expected at least one [[users]] entry"),
        ("users = []\n", "users", "empty; expected at least one [[users]] entry"),
        (
            '[users]\nname = "alice"\n',
            "users",
            "expected an array of tables ([[users]]), got table",
        ),
        (
            f'[[users]]\nname = "alice"\npassword_hash = "{HASH}"\n',
            "users[0].root",
            "missing; expected the directory the user sees as /",
        ),
        (
            f'[[users]]\nroot = "x"\npassword_hash = "{HASH}"\n',
            "users[0].name",
            "missing; expected the login name",
        ),
    ],
)
def test_users_table_errors(tmp_path: Path, body: str, key: str, message: str) -> None:
    path, e = load_error(tmp_path, body)
    assert str(e).startswith(f"{path}: {key}: {message}")


def test_several_problems_are_reported_together_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    body = "[server]\nworkers = 0\n[sftp]\nmax_handle = 5\n" + user('password_hash = "x"')
    path, e = load_error(tmp_path, body)
    assert isinstance(e, ConfigErrors)
    assert [x.key for x in e.errors] == [
        "server.workers",
        "sftp.max_handle",
        "users[0].password_hash",
    ]
    lines = str(e).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert (e.key, e.source) == ("server.workers", str(path))
    assert not (tmp_path / "data").exists()


def test_parse_authorized_key_refuses_small_rsa() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    line = small.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert parse_authorized_key(line.decode())  # 1024 is the floor, like OpenSSH
    with pytest.raises(ValueError, match="certificates are not supported"):
        parse_authorized_key("ssh-ed25519-cert-v01@openssh.com AAAA")
    with pytest.raises(ValueError, match="FIDO security key"):
        parse_authorized_key("sk-ssh-ed25519@openssh.com AAAA")


# --------------------------------------------------------------------------- embedded default


def test_embedded_default_uses_home_keys_and_a_random_password(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "work"
    ssh = home / ".ssh"
    ssh.mkdir(parents=True)
    cwd.mkdir()
    k1, k2, k3 = key_line(), key_line("ecdsa"), key_line()
    (ssh / "authorized_keys").write_text(
        f'# my keys\n{k1}\n\nfrom="10.0.0.1" {k3}\ngarbage line\nssh-ed25519 !!!\n'
    )
    (ssh / "id_ecdsa.pub").write_text(k2 + "\n")
    (ssh / "id_ed25519.pub").write_text(k1 + "\n")  # duplicate: kept once
    (ssh / "id_broken.pub").mkdir()  # unreadable: skipped quietly
    (ssh / "known_hosts").write_text(k3 + "\n")  # not a key source

    config, password = embedded_default(cwd, home, "alice")
    assert isinstance(config, Config)
    assert config.source is None
    assert config.server.listen == (("127.0.0.1", 2222),)
    assert config.server.host_keys_dir == cwd / "keys"
    (alice,) = config.users
    assert (alice.name, alice.root, alice.home) == ("alice", cwd / "data", "/")
    assert not (cwd / "data").exists()  # created by sftpd.preflight.prepare when serving
    assert alice.authorized_keys == (blob(k1), blob(k2))
    assert alice.password_hash is not None
    assert bcrypt.checkpw(password.encode(), alice.password_hash)
    assert len(password) >= 16
    _, other = embedded_default(cwd, home, "alice")
    assert other != password


def test_embedded_default_without_ssh_dir(tmp_path: Path) -> None:
    config, password = embedded_default(tmp_path, tmp_path / "nohome", "bob")
    assert config.users[0].authorized_keys == ()
    assert password


def test_config_modules_do_not_import_twisted() -> None:
    code = (
        "import sys, sftpd.config.model, sftpd.config.loader, sftpd.config.values\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
