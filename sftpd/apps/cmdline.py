"""Shell-free word splitting of exec command lines: POSIX quoting, no shell features."""

from __future__ import annotations

from sftpd.errors import SftpdError

__all__ = ["CommandRefused", "display", "split_command"]

_BLANKS = frozenset(b" \t")
# Unquoted, a shell would act on these wherever they appear (lists, pipes, redirections,
# subshells, expansions, globs, brace expansion, command separators).
_META_ANYWHERE = frozenset(b";|&<>()$`*?[]{}\n")
# Unquoted, these mean something only at the start of a word (comment, tilde expansion).
_META_WORD_START = frozenset(b"#~")
# Inside double quotes a backslash escapes only these; before anything else it stays.
_DQUOTE_ESCAPABLE = frozenset(b'$`"\\\n')
_BACKSLASH = 0x5C
_SQUOTE = 0x27
_DQUOTE = 0x22
_NEWLINE = 0x0A
_TILDE = 0x7E


class CommandRefused(SftpdError):
    """The command line needs a shell feature (expansion, pipe, list...) that sftpd never runs."""


def display(data: bytes) -> str:
    """Render client-sent bytes for a message: printable text kept, anything else escaped."""
    text = data.decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _refuse_char(byte: int) -> CommandRefused:
    shown = "newline" if byte == _NEWLINE else repr(chr(byte))
    return CommandRefused(f"unquoted {shown} needs a shell, and there is none here")


def split_command(line: bytes) -> list[bytes]:
    """Split ``line`` into words as a POSIX shell would, or raise CommandRefused.

    Single quotes keep everything literally; double quotes let a backslash escape only
    ``$ ` " \\`` and newline; outside quotes a backslash escapes any byte and
    backslash-newline vanishes. Anything the shell would expand, redirect or chain
    (unquoted ``; | & < > ( ) $ ` * ? [ ] { }``, newline, ``#`` or ``~`` at a word start,
    ``~`` after an unquoted ``=`` or ``:``, ``$`` or a backquote inside double quotes)
    is refused, as are NUL bytes and unterminated quotes.
    """
    if b"\x00" in line:
        raise CommandRefused("the command line contains a NUL byte")
    words: list[bytes] = []
    word = bytearray()
    in_word = False
    # The previous byte of the word when it was an unquoted literal (for ``=~``/``:~``).
    last_plain: int | None = None
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if c in _BLANKS:
            if in_word:
                words.append(bytes(word))
                word.clear()
                in_word = False
            last_plain = None
            i += 1
        elif c == _BACKSLASH:
            if i + 1 >= n:
                raise CommandRefused("the command line ends with a lone backslash")
            if line[i + 1] != _NEWLINE:
                word.append(line[i + 1])
                in_word = True
            last_plain = None
            i += 2
        elif c == _SQUOTE:
            end = line.find(b"'", i + 1)
            if end < 0:
                raise CommandRefused("unterminated single quote")
            word += line[i + 1 : end]
            in_word = True
            last_plain = None
            i = end + 1
        elif c == _DQUOTE:
            i = _double_quoted(line, i + 1, word)
            in_word = True
            last_plain = None
        elif c in _META_ANYWHERE:
            raise _refuse_char(c)
        elif c in _META_WORD_START and not in_word:
            raise _refuse_char(c)
        elif c == _TILDE and last_plain in (ord("="), ord(":")):
            raise _refuse_char(c)
        else:
            word.append(c)
            in_word = True
            last_plain = c
            i += 1
    if in_word:
        words.append(bytes(word))
    return words


def _double_quoted(line: bytes, i: int, word: bytearray) -> int:
    """Append the double-quoted text starting at ``i`` to ``word``; return the index after it."""
    n = len(line)
    while i < n:
        c = line[i]
        if c == _DQUOTE:
            return i + 1
        if c == _BACKSLASH and i + 1 < n and line[i + 1] in _DQUOTE_ESCAPABLE:
            if line[i + 1] != _NEWLINE:
                word.append(line[i + 1])
            i += 2
            continue
        if c in b"$`":
            raise CommandRefused(f"{chr(c)!r} inside double quotes needs a shell")
        word.append(c)
        i += 1
    raise CommandRefused("unterminated double quote")
