"""The sandboxed rsync daemon's log pipe, sans-IO: per-file transfer lines and the summary."""

from __future__ import annotations

import re
from collections.abc import Callable

from sftpd.apps.rsync.sandbox import TRANSFER_MARK

# A line is kept at most this long while its newline has not come (the rest is dropped).
MAX_LINE = 4096
# The daemon's closing log line: "sent 1,234 bytes  received 56 bytes  total size 7,890"
_SUMMARY = re.compile(rb"sent ([\d,]+) bytes\s+received ([\d,]+) bytes\s+total size ([\d,]+)")

# (op, name, size, count): the recorder's ``rsync_transferred``. op is rsync's %o ("send",
# "recv", "del."), or "summary" with the total size and the bytes sent plus received.
Transferred = Callable[[str, bytes, int, int], None]


class DaemonLog:
    """Splits the log pipe into lines and hands each transfer line to ``transferred``.

    Lines come as rsync's ``TRANSFER_FORMAT`` (``SFTPD|%o|%l|%b|%f``); anything else is
    ignored except the summary line. ``close`` flushes a last line without its newline."""

    def __init__(self, transferred: Transferred) -> None:
        self._transferred = transferred
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data
        *lines, rest = bytes(self._buf).split(b"\n")
        self._buf = bytearray(rest[-MAX_LINE:])
        for line in lines:
            self._line(line)

    def close(self) -> None:
        self.feed(b"\n")

    def _line(self, line: bytes) -> None:
        at = line.find(TRANSFER_MARK)
        if at >= 0:
            parts = line[at + len(TRANSFER_MARK) :].split(b"|", 3)
            if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit():
                op, size, count, name = parts
                self._transferred(op.decode("ascii", "replace"), name, int(size), int(count))
            return
        summary = _SUMMARY.search(line)
        if summary is not None:
            sent, received, total = (int(g.replace(b",", b"")) for g in summary.groups())
            self._transferred("summary", b"", total, sent + received)
