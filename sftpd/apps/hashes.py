"""md5sum, sha1sum, sha224sum, sha256sum, sha384sum, sha512sum and b2sum over the jailed storage."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sftpd.apps.contract import ChannelApp, ChannelIO, SessionContext
from sftpd.storage import vpath
from sftpd.storage.base import Storage
from sftpd.storage.rules import RuleDenied

__all__ = [
    "ALGORITHMS",
    "HashUsageError",
    "escape_name",
    "hash_line",
    "make_hash_app",
    "quote_name",
]

log = Logger(namespace="sftpd.apps.hashes")

# command -> (hashlib name, BSD --tag label)
ALGORITHMS: dict[bytes, tuple[str, str]] = {
    b"md5sum": ("md5", "MD5"),
    b"sha1sum": ("sha1", "SHA1"),
    b"sha224sum": ("sha224", "SHA224"),
    b"sha256sum": ("sha256", "SHA256"),
    b"sha384sum": ("sha384", "SHA384"),
    b"sha512sum": ("sha512", "SHA512"),
    b"b2sum": ("blake2b", "BLAKE2b"),
}
CHUNK = 256 * 1024
_SHELL_SPECIAL = frozenset(" !\"$&'()*;<=>?[\\^`|:")
# Real coreutils options this emulation does not offer (check mode, NUL lines, lengths...).
_UNSUPPORTED_SHORT = frozenset("cwzl")
_UNSUPPORTED_LONG = frozenset(
    {"check", "ignore-missing", "quiet", "status", "strict", "warn", "zero", "length"}
    | {"help", "version"}
)
_NAMED_ESCAPES = {"\a": "a", "\b": "b", "\t": "t", "\n": "n", "\v": "v", "\f": "f", "\r": "r"}


class HashUsageError(Exception):
    """Options coreutils would refuse; the text is what goes to stderr (ending in a newline)."""


def escape_name(name: bytes) -> tuple[bool, bytes]:
    """coreutils' escaping of a name in an output line: (escaped?, name with ``\\\\ \\n \\r``)."""
    if not any(c in name for c in b"\\\n\r"):
        return False, name
    out = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return True, out


def hash_line(hexdigest: str, name: bytes, *, binary: bool = False, tag: str = "") -> bytes:
    """One output line as GNU coreutils prints it (``tag`` set: the BSD ``--tag`` form)."""
    escaped, shown = escape_name(name)
    prefix = b"\\" if escaped else b""
    digest = hexdigest.encode("ascii")
    if tag:
        return prefix + tag.encode("ascii") + b" (" + shown + b") = " + digest + b"\n"
    return prefix + digest + (b" *" if binary else b"  ") + shown + b"\n"


def _is_control(ch: str) -> bool:
    return "\udc80" <= ch <= "\udcff" or not ch.isprintable()


def _octal(ch: str) -> str:
    raw = ch.encode("utf-8", "surrogateescape")
    return "".join(f"\\{b:03o}" for b in raw)


def quote_name(name: bytes) -> bytes:
    """A file name as coreutils quotes it in error messages (shell-escape style, UTF-8 locale)."""
    text = name.decode("utf-8", "surrogateescape")
    if not text:
        return b"''"
    control = any(_is_control(ch) for ch in text)
    special = any(ch in _SHELL_SPECIAL for ch in text) or text[0] in "#~"
    if not control and not special:
        return name
    if not control:
        if "'" in text and not any(ch in text for ch in '"$`\\!'):
            quoted = f'"{text}"'
        else:
            quoted = "'" + text.replace("'", "'\\''") + "'"
    else:
        parts = ["'"]
        last = len(text) - 1
        for i, ch in enumerate(text):
            if ch == "'":
                parts.append("'\\''")
            elif _is_control(ch):
                esc = _NAMED_ESCAPES.get(ch)
                parts.append("'$'" + (f"\\{esc}" if esc else _octal(ch)) + "'")
                if i != last:
                    parts.append("'")  # reopen the single quotes
            else:
                parts.append(ch)
        if not _is_control(text[-1]):
            parts.append("'")
        quoted = "".join(parts)
    return quoted.encode("utf-8", "surrogateescape")


class _Cancelled(Exception):
    pass


def _hash_file(storage: Storage, path: str, algorithm: str, lost: Callable[[], bool]) -> str:
    """Hash one file in chunks (runs in the blocking pool); raises OSError like read(2)."""
    if stat.S_ISDIR(storage.stat(path).st_mode):
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
    file = storage.open(path, os.O_RDONLY, 0)
    try:
        digest = hashlib.new(algorithm, usedforsecurity=False)
        offset = 0
        while chunk := file.pread(CHUNK, offset):
            if lost():
                raise _Cancelled()
            digest.update(chunk)
            offset += len(chunk)
    finally:
        file.close()
    return digest.hexdigest()


def _usage(command: str, problem: str) -> HashUsageError:
    return HashUsageError(f"{command}: {problem}\nTry '{command} --help' for more information.\n")


def _unsupported(command: str, option: str) -> HashUsageError:
    return HashUsageError(f"{command}: option '{option}' is not supported by this server\n")


def _parse(command: str, args: list[bytes]) -> tuple[list[bytes], bool, bool]:
    """(files, binary, tag) from GNU-style options, which may follow file names."""
    files: list[bytes] = []
    binary = tag = False
    words = iter(args)
    for word in words:
        if word == b"--":
            files.extend(words)
            break
        if word == b"-" or not word.startswith(b"-"):
            files.append(word)
        elif word.startswith(b"--"):
            option = word[2:].decode("utf-8", "replace")
            long = option.partition("=")[0]
            if option in ("binary", "text"):
                binary = option == "binary"
            elif option == "tag":
                tag = True
            elif long in _UNSUPPORTED_LONG:
                raise _unsupported(command, f"--{long}")
            else:
                raise _usage(command, f"unrecognized option '--{option}'")
        else:
            for letter in word[1:].decode("utf-8", "replace"):
                if letter in _UNSUPPORTED_SHORT:
                    raise _unsupported(command, f"-{letter}")
                if letter not in "bt":
                    raise _usage(command, f"invalid option -- '{letter}'")
                binary = letter == "b"
    return files or [b"-"], binary, tag


def make_hash_app(argv: list[bytes], ctx: SessionContext, io: ChannelIO) -> ChannelApp:
    """Start ``md5sum [OPTIONS] [--] [FILE]...`` and friends; raises HashUsageError up front."""
    command = argv[0].decode("ascii")
    algorithm, label = ALGORITHMS[argv[0]]
    files, binary, tag = _parse(command, argv[1:])
    app = _HashApp(ctx, io, command, algorithm, files, binary, label if tag else "")
    Deferred.fromCoroutine(app.run())
    return app


class _HashApp:
    """Hashes each named file (``-``: stdin until EOF) and prints coreutils' lines."""

    def __init__(
        self,
        ctx: SessionContext,
        io: ChannelIO,
        command: str,
        algorithm: str,
        files: list[bytes],
        binary: bool,
        tag: str,
    ) -> None:
        self._ctx = ctx
        self._io = io
        self._command = command
        self._algorithm = algorithm
        self._files = files
        self._binary = binary
        self._tag = tag
        self._lost = False
        self._stdin = hashlib.new(algorithm, usedforsecurity=False)
        self._stdin_eof = False
        self._stdin_waiter: Deferred[None] | None = None

    # ---- ChannelApp ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self._stdin_eof:
            self._stdin.update(data)

    def eof_received(self) -> None:
        self._stdin_eof = True
        self._wake()

    def output_drained(self) -> None:
        pass

    def connection_lost(self) -> None:
        self._lost = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._stdin_waiter = self._stdin_waiter, None
        if waiter is not None:
            waiter.callback(None)

    # ---- the command -----------------------------------------------------------------
    async def run(self) -> None:
        status = 0
        try:
            for name in self._files:
                if name == b"-":
                    digest = await self._stdin_digest()
                else:
                    try:
                        digest = await self._file_digest(name)
                    except OSError as exc:
                        if self._lost:
                            return
                        status = 1
                        self._error(name, exc)
                        continue
                if self._lost:
                    return
                self._io.write(hash_line(digest, name, binary=self._binary, tag=self._tag))
        except _Cancelled:
            return
        except Exception:
            log.failure(
                "{command} failed for {user}", command=self._command, user=self._ctx.username
            )
            self._io.write_stderr(f"{self._command}: internal server error\n".encode())
            status = 1
        if not self._lost:
            self._io.exit(status)

    async def _stdin_digest(self) -> str:
        while not self._stdin_eof and not self._lost:
            waiter: Deferred[None] = Deferred()
            self._stdin_waiter = waiter
            await waiter
        digest = self._stdin.hexdigest()
        self._stdin = hashlib.new(self._algorithm, usedforsecurity=False)  # '-' again: empty
        return digest

    async def _file_digest(self, name: bytes) -> str:
        if not name:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        path = vpath.normalize(os.fsdecode(name), self._ctx.home)
        return await self._ctx.blocking.run(
            _hash_file, self._ctx.storage, path, self._algorithm, lambda: self._lost
        )

    def _error(self, name: bytes, exc: OSError) -> None:
        reason = os.strerror(exc.errno) if exc.errno else "Input/output error"
        if isinstance(exc, RuleDenied):
            reason = exc.reason  # names the rule, as SFTP and scp do
        line = self._command.encode() + b": " + quote_name(name) + b": " + reason.encode() + b"\n"
        self._io.write_stderr(line)
