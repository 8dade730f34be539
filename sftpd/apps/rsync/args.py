"""Pure allow-list for ``rsync --server`` command lines and the mapping of their paths."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from sftpd.storage import vpath


class RsyncArgError(Exception):
    """An option (or argument) that the allow-list refuses; ``option`` names it for the client."""

    def __init__(self, option: str) -> None:
        super().__init__(option)
        self.option = option


class RsyncReadOnlyError(RsyncArgError):
    """A read-only account asked to receive files (rsync without ``--sender``)."""


class RsyncRuleError(RsyncArgError):
    """An option the login's rules forbid (``--delete`` without "delete"); ``reason`` says which."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(option)
        self.reason = reason


# rsync options that remove files on the receiver, or the sender's sources.
_DELETING = (b"--del", b"--delete", b"--remove-source-files", b"--remove-sent-files", b"--force")


def restrict(
    args: ServerArgs,
    *,
    delete: bool,
    overwrite: bool,
    symlinks: bool,
    chmod: bool = True,
    chtimes: bool = True,
) -> ServerArgs:
    """``args`` made to obey the rules rsync can express: without ``delete`` every --delete*,
    --remove-source-files and --force is refused; without ``overwrite`` the receiver gets
    --ignore-existing (an existing file is never replaced or written into, --inplace or
    not); without ``symlinks`` it gets --no-links; without ``chmod`` --no-perms (new files
    get their creation mode, as an SFTP OPEN gives them, and nothing that exists changes
    mode: -a would otherwise set the modes of existing directories; rsync has no negation
    of -E, which a client may still send to keep a replaced file's executable bits);
    without ``chtimes`` --no-times (no file or directory gets its times set)."""
    if not delete:
        for option in args.options:
            name = option.split(b"=", 1)[0]
            if name in _DELETING or name.startswith(b"--delete"):
                shown = _show(name)
                raise RsyncRuleError(shown, f'{shown} needs "delete", which is not allowed')
    extra: list[bytes] = []
    if not args.sender:
        if not overwrite:
            extra.append(b"--ignore-existing")
        if not symlinks:
            extra.append(b"--no-links")
        if not chmod:
            extra.append(b"--no-perms")
        if not chtimes:
            extra.append(b"--no-times")
    if not extra:
        return args
    return ServerArgs(sender=args.sender, options=(*args.options, *extra), paths=args.paths)


class _Kind(Enum):
    FLAG = "flag"  # no value
    VALUE = "value"  # free-form value, no path meaning (numbers, names, formats)
    PATH = "path"  # a path; absolute ones are normalised (the sandbox root is the user's root)
    STDIN = "stdin"  # a file-name value, but only "-" (read from the client) is allowed


# Short options without a value that a stock rsync client may put in its flag cluster
# (the same set rsync's rrsync accepts). Letters not listed are refused, among them
# -T (temp-dir), -f (filter), -M (remote-option) and -e followed by anything but rsync's
# own capability string.
_SHORT_FLAGS = frozenset("ACDEHIJKLNORSUWXbcdgklmnopqrstuvxyz")
# In server mode, -e carries the client's capability string (".iLsfxCIvu", optionally after a
# protocol number), never a remote shell.
_CAPABILITY = re.compile(rb"\d*\.[A-Za-z0-9_.]*")
_INTEGER = re.compile(rb"-?\d+")

_FLAGS = (
    "acls append append-verify archive atimes backup checksum compress copy-dirlinks copy-links "
    "copy-unsafe-links crtimes del delay-updates delete delete-after delete-before delete-delay "
    "delete-during delete-excluded delete-missing-args devices dirs dry-run executability "
    "existing fake-super force from0 fsync fuzzy group hard-links i-r ignore-errors "
    "ignore-existing ignore-missing-args ignore-non-existing ignore-times inc-recursive inplace "
    "keep-dirlinks links list-only mkpath msgs2stderr munge-links new-compress no-D no-W "
    "no-devices no-i-r no-implied-dirs no-inc-recursive no-msgs2stderr no-munge-links no-r "
    "no-recursive no-relative no-R no-specials no-super no-whole-file numeric-ids old-compress "
    "omit-dir-times omit-link-times one-file-system open-noatime owner partial perms "
    "preallocate protect-args prune-empty-dirs quiet recursive relative remove-sent-files "
    "remove-source-files safe-links secluded-args sender server size-only sparse specials "
    "stats super times update use-qsort verbose whole-file xattrs"
)
_VALUES = (
    "block-size bwlimit checksum-choice checksum-seed compress-choice compress-level "
    "compress-threads debug groupmap info log-format max-alloc max-delete max-size min-size "
    "modify-window out-format skip-compress stderr suffix timeout usermap"
)
_PATHS = "backup-dir compare-dest copy-dest link-dest partial-dir"
_STDIN_ONLY = "exclude-from files-from include-from"

_LONG: dict[bytes, _Kind] = {
    name.encode(): kind
    for names, kind in (
        (_FLAGS, _Kind.FLAG),
        (_VALUES, _Kind.VALUE),
        (_PATHS, _Kind.PATH),
        (_STDIN_ONLY, _Kind.STDIN),
    )
    for name in names.split()
}

# Options that delete or move files away on the server: refused for read-only accounts.
_WRITING_FLAGS = frozenset({b"remove-source-files", b"remove-sent-files"})

# Everything else is refused, notably: --rsh/-e VALUE, --rsync-path, --daemon, --config,
# --dparam, --write-batch, --read-batch, --only-write-batch, --log-file, --temp-dir/-T,
# --iconv (would load gconv modules from the user's tree), --copy-devices, --write-devices,
# --remote-option/-M, --copy-as, --files-from=PATH.


@dataclass(frozen=True)
class ServerArgs:
    """A validated ``rsync --server`` invocation.

    ``options`` are the option words to hand to the sandboxed rsync, in order, without
    ``--server``/``--sender`` and without the protect-args flag (the arguments are passed
    inline instead); ``paths`` are normalised absolute virtual paths, trailing ``/`` or
    ``/.`` kept (rsync gives them meaning).
    """

    sender: bool
    options: tuple[bytes, ...]
    paths: tuple[bytes, ...]


@dataclass(frozen=True)
class CommandLine:
    """The exec command line, checked: either complete, or awaiting protected args on stdin."""

    protect_args: bool
    words: tuple[bytes, ...]  # everything after ``rsync``


def parse_command(argv: Sequence[bytes]) -> CommandLine:
    """Check the exec command line's shape; the full check is :func:`validate`.

    With ``-s`` (protect-args) the client sends the remaining words on stdin, NUL-separated,
    before the protocol starts; they are appended to ``words`` before validation.
    """
    if argv and argv[0].rpartition(b"/")[2] != b"rsync":
        raise RsyncArgError("--rsync-path")  # never executed, but only rsync is served here
    if len(argv) < 2 or argv[1] != b"--server":
        raise RsyncArgError(_show(argv[1]) if len(argv) >= 2 else "(server mode required)")
    words = tuple(argv[1:])
    protect = False
    for word in words:
        if word == b".":
            break
        if word in (b"--protect-args", b"--secluded-args"):
            protect = True
        elif word.startswith(b"-") and not word.startswith(b"--"):
            head = word[1:].split(b"e", 1)[0]
            protect = protect or b"s" in head
    return CommandLine(protect_args=protect, words=words)


def validate(words: Sequence[bytes], *, home: str, read_only: bool) -> ServerArgs:
    """Validate the words after ``rsync`` (``--server`` first) and map the path arguments.

    Raises :class:`RsyncArgError` naming the first refused option.
    """
    if not words or words[0] != b"--server":
        raise RsyncArgError("(server mode required)")
    for word in words:
        if b"\x00" in word or b"\n" in word:
            raise RsyncArgError(_show(word))
    sender = False
    options: list[bytes] = []
    index = 1
    while index < len(words):
        word = words[index]
        index += 1
        if word == b".":
            break
        if word == b"--sender":
            sender = True
        elif word.startswith(b"--"):
            index = _long_option(word, words, index, options, read_only)
        elif word.startswith(b"-") and len(word) > 1:
            index = _short_cluster(word, words, index, options)
        else:
            raise RsyncArgError(_show(word))
    else:
        raise RsyncArgError("(missing '.' argument)")
    if read_only and not sender:
        raise RsyncReadOnlyError("--server without --sender")
    raw_paths = list(words[index:]) or [b"."]
    paths = tuple(map_path(p, home) for p in raw_paths)
    return ServerArgs(sender=sender, options=tuple(options), paths=paths)


def _long_option(
    word: bytes, words: Sequence[bytes], index: int, out: list[bytes], read_only: bool
) -> int:
    name, eq, value = word[2:].partition(b"=")
    kind = _LONG.get(name)
    if kind is None or (read_only and name in _WRITING_FLAGS):
        raise RsyncArgError("--" + _show(name))
    if name in (b"protect-args", b"secluded-args", b"server"):
        if eq:
            raise RsyncArgError(_show(word))
        return index  # arguments are passed inline to the sandboxed rsync
    if kind is _Kind.FLAG:
        if eq:
            raise RsyncArgError(_show(word))
        out.append(word)
        return index
    if not eq:
        if index >= len(words):
            raise RsyncArgError("--" + _show(name))
        value = words[index]
        index += 1
    if kind is _Kind.STDIN and value != b"-":
        raise RsyncArgError(f"--{_show(name)}={_show(value)}")
    if kind is _Kind.PATH:
        value = _path_value(name, value)
    out.append(b"--" + name + b"=" + value)
    return index


def _path_value(name: bytes, value: bytes) -> bytes:
    """Absolute values are normalised inside the user's root; relative ones are kept as is.

    Relative values are resolved by rsync against the destination directory (for example
    ``--link-dest=../previous``); the sandbox's root is the user's root, so neither form can
    reach anything outside it.
    """
    if not value:
        raise RsyncArgError(f"--{_show(name)}=")
    if value.startswith(b"/"):
        return os.fsencode(vpath.normalize(os.fsdecode(value)))
    return value


def _short_cluster(word: bytes, words: Sequence[bytes], index: int, out: list[bytes]) -> int:
    kept = bytearray(b"-")
    position = 1
    while position < len(word):
        letter = word[position : position + 1]
        position += 1
        if letter in (b"B", b"@"):
            value = word[position:]
            if not value:
                if index >= len(words):
                    raise RsyncArgError("-" + _show(letter))
                value = words[index]
                index += 1
            if not _INTEGER.fullmatch(value):
                raise RsyncArgError(f"-{_show(letter)}{_show(value)}")
            out.append(b"-" + letter + value)
            break
        if letter == b"e":
            value = word[position:]
            if not _CAPABILITY.fullmatch(value):
                raise RsyncArgError("-e" + _show(value) if value else "-e")
            kept += b"e" + value
            break
        if letter == b"s":
            continue  # protect-args: handled by the caller, never passed on
        if chr(letter[0]) not in _SHORT_FLAGS:
            raise RsyncArgError("-" + _show(letter))
        kept += letter
    if len(kept) > 1:
        out.append(bytes(kept))
    return index


def map_path(arg: bytes, home: str) -> bytes:
    """Map a path argument to a normalised absolute virtual path, keeping ``/`` and ``/.``.

    Relative paths start at ``home``, ``~`` and ``~/...`` mean ``home`` (as a shell would),
    absolute ones at the user's root; ``..`` never climbs above ``/``.
    """
    text = os.fsdecode(arg)
    if text == "~" or text.startswith("~/"):
        text = home + text[1:]
    if text == "." or text.endswith("/."):
        suffix = "/."
    elif text.endswith("/"):
        suffix = "/"
    else:
        suffix = ""
    path = vpath.normalize(text, home)
    if path == "/":
        return b"/." if suffix == "/." else b"/"
    return os.fsencode(path + suffix)


def read_protected_args(buffer: bytes | bytearray) -> tuple[list[bytes], int] | None:
    """Split rsync's protect-args preamble: NUL-terminated words ending with an empty one.

    Returns (words, bytes consumed), or None if the preamble is not complete yet. The first
    word is the program name the client would have run (``rsync``).
    """
    words: list[bytes] = []
    start = 0
    while True:
        end = buffer.find(b"\x00", start)
        if end < 0:
            return None
        if end == start:
            return words, end + 1
        words.append(bytes(buffer[start:end]))
        start = end + 1


def _show(word: bytes) -> str:
    """A client-supplied word, printable and bounded, for an error message."""
    text = word.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= 200 else text[:200] + "..."
