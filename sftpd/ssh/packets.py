"""Incoming SSH bytes: the version line, then packets cut from one bytearray with an offset."""

from __future__ import annotations

from sftpd.ssh.ciphers import Opener, PacketError

# Compact the buffer once this much has been consumed (or half of it): amortised O(n).
_COMPACT_AT = 1 << 16


class PacketReader:
    """Sans-IO reader: ``feed`` bytes, then take the version line and (type, body) messages.

    Consumed bytes are skipped with an offset and dropped in bulk, so a stream of n bytes
    costs O(n) copying however it is split into reads and packets. Decryption reads the
    ciphertext through memoryview slices of the buffer, never through copies of it.
    """

    __slots__ = ("_buf", "_need", "_pos", "last_size", "max_wire")

    def __init__(self, max_wire: int = 0) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._need = 0  # wire size of the packet whose head has been read, 0 between packets
        self.last_size = 0  # wire size of the last packet returned
        # Largest wire size accepted on top of the opener's own limit (0: the opener's only).
        self.max_wire = max_wire

    @property
    def pending(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        pos = self._pos
        if pos:
            buf = self._buf
            if pos == len(buf):
                buf.clear()
                self._pos = 0
            elif pos >= _COMPACT_AT or pos * 2 >= len(buf):
                del buf[:pos]
                self._pos = 0
        self._buf += data

    def read_line(self) -> bytes | None:
        """The next line without its CR LF (or LF), or None if no full line has arrived."""
        buf = self._buf
        end = buf.find(b"\n", self._pos)
        if end < 0:
            return None
        line = bytes(buf[self._pos : end])
        self._pos = end + 1
        return line[:-1] if line.endswith(b"\r") else line

    def read_packet(self, opener: Opener, seq: int) -> tuple[int, bytes] | None:
        """The next (message type, body), or None until the whole packet has arrived.

        Raises PacketError (or its subclass MacError) from ``opener`` for a bad packet; the
        reader is then unusable, as the connection must be dropped.
        """
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        need = self._need
        if not need:
            if avail < opener.head_size:
                if not avail and pos:
                    buf.clear()  # all consumed: an idle connection keeps no buffer
                    self._pos = 0
                return None
            need = opener.start(seq, buf, pos)
            if self.max_wire and need > self.max_wire:
                raise PacketError(f"packet of {need} bytes is over the limit of {self.max_wire}")
            self._need = need
        if avail < need:
            return None
        whole = memoryview(buf)
        wire = whole[pos : pos + need]
        try:
            message = opener.finish(seq, wire)
        finally:
            wire.release()
            whole.release()
        self._pos = pos + need
        self._need = 0
        self.last_size = need
        return message
