"""authorized_keys options: OpenSSH's grammar, the mapping onto sftpd, and from= matching."""

from __future__ import annotations

import base64
import calendar
import datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sftpd.config.keyopts import (
    ForcedCommand,
    KeyLineError,
    KeyOptions,
    is_expired,
    matches_source,
    parse_authorized_keys,
    parse_key_line,
    split_options,
)

KEY = (
    ed25519.Ed25519PrivateKey.generate()
    .public_key()
    .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    .decode()
)
BLOB = base64.b64decode(KEY.split()[1])


def opts(text: str) -> KeyOptions:
    return parse_key_line(f"{text} {KEY} me@host").options


def error(text: str) -> KeyLineError:
    with pytest.raises(KeyLineError) as info:
        parse_authorized_keys(f"# comment\n\n{text} {KEY}\n", "keys.txt")
    return info.value


def test_plain_line_has_no_options() -> None:
    line = parse_key_line(f"{KEY} comment with spaces")
    assert line.blob == BLOB
    assert line.options == KeyOptions()


def test_split_keeps_quoted_spaces_and_escaped_quotes() -> None:
    text = f'command="rrsync -ro /a\\" b",no-pty {KEY} c'
    head, rest = split_options(text)
    assert head == 'command="rrsync -ro /a\\" b",no-pty'
    assert rest.startswith("ssh-ed25519 ")


def test_escaped_quote_reaches_the_value() -> None:
    o = opts('command="rrsync -ro \'/dir \\"x\\"\'"')
    assert o.command == ForcedCommand(frozenset({"rsync"}), read_only=True, directory='/dir "x"')


def test_names_are_case_insensitive_and_flags_combine() -> None:
    o = opts("RESTRICT,Pty,NO-X11-Forwarding")
    assert o.restricted and o.pty
    assert not o.port_forwarding and not o.agent_forwarding and not o.x11_forwarding
    o = opts("no-pty,no-port-forwarding,no-agent-forwarding,no-user-rc,user-rc")
    assert not o.pty and not o.port_forwarding and not o.agent_forwarding and o.user_rc


def test_meaningless_forwarding_options_are_accepted() -> None:
    o = opts('permitopen="host:22",permitlisten="8080",tunnel="1",no-pty')
    assert not o.pty and o.command is None


def test_commands_map_onto_rules() -> None:
    assert opts('command="internal-sftp"').command == ForcedCommand(frozenset({"sftp"}))
    assert opts('command="internal-sftp -R"').command == ForcedCommand(
        frozenset({"sftp"}), read_only=True
    )
    assert opts('command="/usr/bin/rrsync -wo /backups/"').command == ForcedCommand(
        frozenset({"rsync"}), write_only=True, directory="/backups"
    )
    assert opts('command="rrsync /srv"').command == ForcedCommand(
        frozenset({"rsync"}), directory="/srv"
    )


@pytest.mark.parametrize(
    ("text", "option", "words"),
    [
        ('command="/bin/sh"', "command", "cannot be enforced"),
        ('command="rrsync -munge /x"', "command", "-munge"),
        ('command="rrsync -ro -wo /x"', "command", "allow nothing"),
        ('command="rrsync ../x"', "command", "absolute"),
        ('command="internal-sftp -d /x"', "command", "internal-sftp"),
        ('environment="A=B"', "environment", "no user shell"),
        ("no-touch-required", "no-touch-required", "FIDO"),
        ("frobnicate", "frobnicate", "unknown key option"),
        ('from="10.0.0.0/8', "from", "missing end quote"),
        ("from=10.0.0.1", "from", "missing start quote"),
        ("from", "from", "needs a value"),
        ('from="a.example.com"', "from", "host name"),
        ('from="10.0.0.1/8"', "from", "host bits"),
        ('from="10.0.0.1,,10.0.0.2"', "from", "empty pattern"),
        ('from="10.0.0.1",from="10.0.0.2"', "from", "twice"),
        ("no-pty,", "no-pty", "end of options"),
        ('no-pty"x"', "no-pty", "separated by ','"),
        ('expiry-time="2024"', "expiry-time", "YYYYMMDD"),
        ('expiry-time="20241341"', "expiry-time", "not a valid date"),
        ('principals="alice"', "principals", "cert-authority"),
    ],
)
def test_errors_name_file_line_and_option(text: str, option: str, words: str) -> None:
    e = error(text)
    assert (e.source, e.line, e.option) == ("keys.txt", 3, option)
    assert words in e.reason
    assert str(e).startswith(f"keys.txt:3: option {option!r}: ")


def test_bad_key_after_good_options_names_the_line() -> None:
    with pytest.raises(KeyLineError) as info:
        parse_key_line("no-pty ssh-ed25519 !!!!", "f", 7)
    assert info.value.line == 7 and info.value.option == ""
    assert "does not parse" in info.value.reason


def test_expiry_time_utc_and_local() -> None:
    o = opts('expiry-time="20300102030405Z"')
    assert o.expires_at == calendar.timegm((2030, 1, 2, 3, 4, 5, 0, 0, 0))
    assert not is_expired(o, o.expires_at) and is_expired(o, o.expires_at + 1)
    local = opts('expiry-time="203001020304"').expires_at
    assert local == datetime.datetime(2030, 1, 2, 3, 4).timestamp()
    # several expiry-time options: the earliest counts, as in OpenSSH
    o = opts('expiry-time="20300101Z",expiry-time="20290101Z"')
    assert o.expires_at == calendar.timegm((2029, 1, 1, 0, 0, 0, 0, 0, 0))
    assert not is_expired(KeyOptions(), 1e12)


def test_cert_authority_with_principals() -> None:
    o = opts('cert-authority,principals="alice,backup-team"')
    assert o.cert_authority and o.principals == ("alice", "backup-team")


@pytest.mark.parametrize(
    ("patterns", "address", "ok"),
    [
        ("192.0.2.1", "192.0.2.1", True),
        ("192.0.2.1", "192.0.2.2", False),
        ("192.0.2.0/24", "192.0.2.77", True),
        ("192.0.2.0/24", "198.51.100.1", False),
        ("192.0.2.*", "192.0.2.9", True),
        ("192.0.2.?", "192.0.2.19", False),
        ("!192.0.2.5,192.0.2.0/24", "192.0.2.5", False),
        ("192.0.2.0/24,!192.0.2.5", "192.0.2.5", False),
        ("!192.0.2.5", "192.0.2.6", False),  # a negation alone matches nothing
        ("!192.0.2.5,*", "192.0.2.6", True),
        ("2001:db8::/32", "2001:db8::1", True),
        ("2001:db8::/32", "2001:db9::1", False),
        ("2001:db8::*", "2001:db8::abcd", True),
        ("::1", "::1", True),
        ("127.0.0.1", "::ffff:127.0.0.1", True),  # IPv4-mapped is matched as IPv4
        ("10.0.0.0/8", "::ffff:a00:1", True),
        ("10.0.0.0/8", "not-an-address", False),
        ("0.0.0.0/0", "2001:db8::1", False),
    ],
)
def test_matches_source(patterns: str, address: str, ok: bool) -> None:
    assert matches_source(opts(f'from="{patterns}"'), address) is ok


def test_no_from_matches_everything() -> None:
    assert matches_source(KeyOptions(), "203.0.113.1")
