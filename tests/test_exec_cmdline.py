"""Tests for the shell-free command line splitter."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftpd.apps.cmdline import CommandRefused, display, split_command

words_st = st.binary(max_size=40).filter(lambda b: b"\x00" not in b)
argv_st = st.lists(words_st, min_size=1, max_size=6)


def quote_shlex(word: bytes) -> bytes:
    return shlex.quote(word.decode("latin-1")).encode("latin-1")


def quote_double(word: bytes) -> bytes:
    """Double quotes, escaping what a shell expands inside them."""
    return b'"' + re.sub(rb'([$`"\\])', rb"\\\1", word) + b'"'


def quote_backslash(word: bytes) -> bytes:
    """Backslash before every byte (newline goes in single quotes: backslash-newline vanishes)."""
    if not word:
        return b"''"
    out = bytearray()
    for byte in word:
        out += b"'\n'" if byte == 0x0A else b"\\" + bytes([byte])
    return bytes(out)


def quote_rclone(word: bytes) -> bytes:
    """rclone's quoting: backslash before every unsafe byte, newlines in single quotes."""
    escaped = re.sub(rb"([^A-Za-z0-9_.,:/@\x80-\xff\n-])", rb"\\\1", word)
    return escaped.replace(b"\n", b"'\n'") if word else b"''"


@settings(max_examples=400)
@given(argv_st)
def test_shlex_quote_round_trip(argv: list[bytes]) -> None:
    assert split_command(b" ".join(quote_shlex(w) for w in argv)) == argv


@given(argv_st)
def test_double_quote_round_trip(argv: list[bytes]) -> None:
    assert split_command(b" ".join(quote_double(w) for w in argv)) == argv


@given(argv_st)
def test_backslash_round_trip(argv: list[bytes]) -> None:
    assert split_command(b"\t ".join(quote_backslash(w) for w in argv)) == argv


@given(argv_st)
def test_rclone_quoting_round_trip(argv: list[bytes]) -> None:
    assert split_command(b" ".join(quote_rclone(w) for w in argv)) == argv


@given(st.binary(max_size=60))
def test_never_crashes(line: bytes) -> None:
    try:
        words = split_command(line)
    except CommandRefused:
        return
    assert all(b"\x00" not in w for w in words)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"", []),
        (b"   \t ", []),
        (b"scp -t /tmp", [b"scp", b"-t", b"/tmp"]),
        (b"  md5sum   a\tb  ", [b"md5sum", b"a", b"b"]),
        (b"md5sum 'a b' \"c d\"", [b"md5sum", b"a b", b"c d"]),
        (b"a''b ''", [b"ab", b""]),
        (b'""', [b""]),
        (b"a\\ b", [b"a b"]),
        (b"a\\\nb", [b"ab"]),
        (b'"a\\\nb"', [b"ab"]),
        (b'"\\a\\$\\`\\"\\\\"', [b'\\a$`"\\']),
        (b"'$HOME; `x` | * ? [ ] { } ~ #'", [b"$HOME; `x` | * ? [ ] { } ~ #"]),
        (b"\\$x \\; \\*", [b"$x", b";", b"*"]),
        (b"a~ a# x%y +,.:/@=^!-", [b"a~", b"a#", b"x%y", b"+,.:/@=^!-"]),
        (b"'~' \\~x ''#", [b"~", b"~x", b"#"]),
        (b"caf\xc3\xa9 \xff\x01", [b"caf\xc3\xa9", b"\xff\x01"]),
        (b"a'\n'b", [b"a\nb"]),
    ],
)
def test_split(line: bytes, words: list[bytes]) -> None:
    assert split_command(line) == words


@pytest.mark.parametrize(
    "line",
    [
        b"ls; rm -rf /",
        b"md5sum $(id)",
        b"md5sum `id`",
        b"a | b",
        b"a && b",
        b"a & ",
        b"cat < /etc/passwd",
        b"echo x > f",
        b"(ls)",
        b"echo $HOME",
        b"echo ${ShellId}%ComSpec%",
        b"ls *",
        b"ls a?",
        b"ls [ab]",
        b"ls a]",
        b"echo {a,b}",
        b"ls\nrm x",
        b"echo ~",
        b"echo ~/x",
        b"echo a=~",
        b"echo PATH=a:~",
        b"echo # comment",
        b'echo "$HOME"',
        b'echo "`id`"',
        b"echo 'open",
        b'echo "open',
        b'echo "open\\"',
        b"echo end\\",
        b"echo a\x00b",
    ],
)
def test_refused(line: bytes) -> None:
    with pytest.raises(CommandRefused):
        split_command(line)


def _bash_words(line: bytes) -> list[bytes]:
    script = b"printf '%s\\0' " + line
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    return out.split(b"\x00")[:-1]


@pytest.mark.parametrize(
    "args",
    [
        b'a \'b c\' "d\\"e" f\\ g',
        b"'it'\\''s' \"x\\y\" \\\\",
        b"a\\\nb \"c\\\nd\" ''",
        b"x%y a~ a# a=b ^ !x",
    ],
)
def test_agrees_with_bash(args: bytes) -> None:
    assert split_command(args) == _bash_words(args)


def test_display_escapes_controls() -> None:
    assert display(b"ok name") == "ok name"
    assert display(b"a\nb\x1b") == "a\\nb\\x1b"
    assert display(b"\xff") == "\\xff"
    assert display("é".encode()) == "é"
