"""Micro-benchmark of the SSH packet path: sftpd's ServerTransport per cipher vs stock Conch.

Measures, in one process and without sockets, how many packets per second the transport
can send (``sendPacket``: frame, pad, encrypt, MAC, hand to the TCP transport) and receive
(``dataReceived`` with 64 KiB reads: buffer, decrypt, verify, dispatch to the service) for
each cipher, next to stock Twisted Conch 26.10 with aes128-ctr + hmac-sha2-256.

    python3 benchmarks/transport_micro.py                 # 32 KiB + 9 B and 100 B payloads
    python3 benchmarks/transport_micro.py --sizes 32777 --seconds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.conch.ssh.transport import SSHCiphers, SSHServerTransport

from sftpd.ssh.ciphers import make_opener, make_sealer
from sftpd.ssh.packets import PacketReader
from sftpd.ssh.transport import ServerTransport

SUITES: list[tuple[str, str | None]] = [
    ("chacha20-poly1305@openssh.com", None),
    ("aes128-gcm@openssh.com", None),
    ("aes256-gcm@openssh.com", None),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256"),
    ("aes256-ctr", "hmac-sha2-512-etm@openssh.com"),
]
READ_SIZE = 65536  # what Twisted's TCP transport hands dataReceived at most


class NullTCP:
    """Swallows writes (counting bytes), as a TCP transport with an infinitely fast peer."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        for chunk in seq:
            self.bytes += len(chunk)

    def loseConnection(self) -> None:
        raise SystemExit("the transport disconnected: benchmark set-up is wrong")


class NullService:
    """Counts the messages the transport dispatches."""

    def __init__(self) -> None:
        self.count = 0

    def packetReceived(self, msg: int, payload: bytes) -> None:
        self.count += 1

    def serviceStopped(self) -> None:
        pass


KEY, IV, MAC_KEY = os.urandom(128), os.urandom(16), os.urandom(64)


def ours(cipher: str, mac: str | None) -> tuple[ServerTransport, NullTCP, NullService]:
    t = ServerTransport()
    tcp, svc = NullTCP(), NullService()
    t.transport = t._tcp = tcp
    t._reader = PacketReader()
    c, m = cipher.encode(), mac.encode() if mac else None
    t._sealer = make_sealer(c, m, KEY, IV, MAC_KEY)
    t._opener = make_opener(c, m, KEY, IV, MAC_KEY)
    t.gotVersion = True
    t._initial_done = True
    t.service = svc
    return t, tcp, svc


def ours_stream(cipher: str, mac: str | None, payload: bytes, n: int) -> bytes:
    c, m = cipher.encode(), mac.encode() if mac else None
    sealer = make_sealer(c, m, KEY, IV, MAC_KEY)
    return b"".join(b"".join(sealer.seal(i, payload[0], payload[1:])) for i in range(n))


def stock() -> tuple[SSHServerTransport, NullTCP, NullService]:
    t = SSHServerTransport()
    tcp, svc = NullTCP(), NullService()
    t.transport = tcp
    t.currentEncryptions = SSHCiphers(
        b"aes128-ctr", b"aes128-ctr", b"hmac-sha2-256", b"hmac-sha2-256"
    )
    t.currentEncryptions.setKeys(IV, KEY, IV, KEY, MAC_KEY, MAC_KEY)
    t.gotVersion = True
    t.service = svc
    return t, tcp, svc


def stock_stream(payload: bytes, n: int) -> bytes:
    peer = stock()[0]
    out = NullCollect()
    peer.transport = out
    for _ in range(n):
        peer.sendPacket(payload[0], payload[1:])
    return b"".join(out.chunks)


class NullCollect(NullTCP):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


def timed(fn: Callable[[], int], seconds: float, rounds: int = 5) -> float:
    """Packets per second: the best of ``rounds`` runs of ``fn`` (which returns packets moved).

    Best-of, because on a shared machine other processes only ever make a run slower.
    """
    fn()  # warm up
    best = 0.0
    for _ in range(rounds):
        packets, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / rounds:
            packets += fn()
        best = max(best, packets / elapsed)
    return best


def bench_send(t: Any, payload: bytes, batch: int) -> Callable[[], int]:
    msg, body = payload[0], payload[1:]
    send = t.sendPacket

    def run() -> int:
        for _ in range(batch):
            send(msg, body)
        return batch

    return run


def bench_recv(make: Callable[[], Any], stream: bytes, n: int) -> Callable[[], int]:
    chunks = [stream[i : i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]

    def run() -> int:
        t, _, svc = make()
        for chunk in chunks:
            t.dataReceived(chunk)
        if svc.count != n:
            raise SystemExit(f"received {svc.count} of {n} packets")
        return n

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="32777,100", help="payload sizes in bytes (comma list)")
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = ap.parse_args(argv)
    print(f"python {sys.version.split()[0]}, per-core figures; MB/s counts payload bytes")
    print(
        f"{'size':>6} {'suite':<46} {'send pkt/s':>11} {'MB/s':>7} {'x':>5}"
        f" {'recv pkt/s':>11} {'MB/s':>7} {'x':>5}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        payload = bytes([94]) + os.urandom(size - 1)
        n = max(8, (4 << 20) // size)  # packets per receive round: about 4 MiB
        base_send = timed(bench_send(stock()[0], payload, 256), args.seconds)
        base_recv = timed(bench_recv(stock, stock_stream(payload, n), n), args.seconds)
        rows = [("stock Conch aes128-ctr+hmac-sha2-256", base_send, base_recv)]
        for cipher, mac in SUITES:
            send = timed(bench_send(ours(cipher, mac)[0], payload, 256), args.seconds)
            stream = ours_stream(cipher, mac, payload, n)
            recv = timed(bench_recv(lambda c=cipher, m=mac: ours(c, m), stream, n), args.seconds)
            rows.append((f"sftpd {cipher}+{mac or 'aead'}", send, recv))
        for name, send, recv in rows:
            print(
                f"{size:>6} {name:<46} {send:>11,.0f} {send * size / 1e6:>7,.0f}"
                f" {send / base_send:>5.2f} {recv:>11,.0f} {recv * size / 1e6:>7,.0f}"
                f" {recv / base_recv:>5.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
