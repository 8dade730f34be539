#!/usr/bin/env python3
"""A TCP relay on 127.0.0.1 that delays each direction by a fixed one-way time (a long fat pipe).

    python3 benchmarks/delayproxy.py --to-port 2222 --delay-ms 25    # RTT 50 ms
    python3 benchmarks/delayproxy.py --selftest                      # MB/s through it at 0 ms

There is no netem on this kernel, so bench.py's W9 puts this between the `sftp` client
and the server. It listens on 127.0.0.1 and connects only to 127.0.0.1 (the port is the only
thing that can be chosen). Each accepted connection gets two threads, one per direction:
the reader `recv`s up to 1 MiB, stamps the chunk with now + delay and queues it; the writer
sends each chunk, in order, once its time has come. A direction holds at most --buffer-mib
(default 64) in its queue: when that is full the reader stops reading, so TCP flow control
pushes back on the sender, as a full queue in a router would, instead of the proxy buffering
without end. 64 MiB over 50 ms one way still allows 1.3 GB/s, so the buffer is not the limit
in W9; the windows are. Standard library only.
"""

import argparse
import collections
import ctypes
import signal
import socket
import sys
import threading
import time

HOST = "127.0.0.1"  # the only address this proxy listens on or connects to
MiB = 1 << 20
CHUNK = MiB


class Pipe:
    """One direction: src -> dst, every byte delayed by ``delay`` seconds, FIFO."""

    def __init__(self, src, dst, delay, cap, done):
        self.src, self.dst, self.delay, self.cap, self.done = src, dst, delay, cap, done
        self.q = collections.deque()  # (due, bytes); bytes b"" = EOF
        self.held = 0
        self.cv = threading.Condition()
        self.dead = False

    def reader(self):
        try:
            while True:
                with self.cv:
                    while self.held >= self.cap and not self.dead:
                        self.cv.wait()
                    if self.dead:
                        return
                data = self.src.recv(CHUNK)
                with self.cv:
                    self.q.append((time.monotonic() + self.delay, data))
                    self.held += len(data)
                    self.cv.notify_all()
                if not data:
                    return
        except OSError:
            self.kill()

    def writer(self):
        try:
            while True:
                with self.cv:
                    while not self.q and not self.dead:
                        self.cv.wait()
                    if self.dead:
                        return
                    due, data = self.q[0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
                with self.cv:
                    self.q.popleft()
                    self.held -= len(data)
                    self.cv.notify_all()
        except OSError:
            self.kill()
        finally:
            self.done()

    def kill(self):
        with self.cv:
            self.dead = True
            self.cv.notify_all()
        for s in (self.src, self.dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay(client, to_port, delay, cap):
    try:
        server = socket.create_connection((HOST, to_port))
    except OSError:
        client.close()
        return
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    left = [2]
    lock = threading.Lock()

    def done():
        with lock:
            left[0] -= 1
            if left[0]:
                return
        client.close()
        server.close()

    pipes = [Pipe(client, server, delay, cap, done), Pipe(server, client, delay, cap, done)]
    for p in pipes:
        for fn in (p.reader, p.writer):
            threading.Thread(target=fn, daemon=True).start()


def serve(listener, to_port, delay, cap):
    while True:
        conn, _ = listener.accept()
        relay(conn, to_port, delay, cap)


def listen(port=0):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, port))
    s.listen(64)
    return s


def selftest(mib, delay, cap, direct=False):
    """MB/s of one bulk transfer sink <- proxy <- sender (sink <- sender if ``direct``)."""
    sink = listen()
    proxy = sink if direct else listen()
    if not direct:
        args = (proxy, sink.getsockname()[1], delay, cap)
        threading.Thread(target=serve, args=args, daemon=True).start()
    got = [0]

    def drain():
        c, _ = sink.accept()
        buf = bytearray(CHUNK)
        while n := c.recv_into(buf):
            got[0] += n
        c.close()

    t = threading.Thread(target=drain)
    t.start()
    out = socket.create_connection(proxy.getsockname())
    block, t0 = b"\0" * CHUNK, time.monotonic()
    for _ in range(mib):
        out.sendall(block)
    out.shutdown(socket.SHUT_WR)
    t.join()
    wall = time.monotonic() - t0
    out.close()
    if got[0] != mib * MiB:
        raise SystemExit(f"selftest: {got[0]} of {mib * MiB} bytes arrived")
    return mib * MiB / wall / 1e6


def die_with_parent():
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, default=0, help="listen port (default: any free one)")
    ap.add_argument("--to-port", type=int, help="relay to 127.0.0.1:PORT")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay (RTT = 2 x this)")
    ap.add_argument("--buffer-mib", type=float, default=64, help="queue cap per direction")
    ap.add_argument("--selftest", action="store_true", help="bulk transfer through it, print MB/s")
    ap.add_argument("--selftest-mib", type=int, default=2048, help="selftest size (default 2048)")
    a = ap.parse_args()
    delay, cap = a.delay_ms / 1000, int(a.buffer_mib * MiB)
    if a.selftest:
        direct = selftest(a.selftest_mib, delay, cap, direct=True)
        rate = selftest(a.selftest_mib, delay, cap)
        print(
            f"{a.selftest_mib} MiB in 1 MiB sends: {direct:.0f} MB/s direct, "
            f"{rate:.0f} MB/s through the proxy at {a.delay_ms:g} ms one way"
        )
        return
    if a.to_port is None:
        ap.error("--to-port is required (or --selftest)")
    die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    s = listen(a.port)
    print(f"delayproxy: listening on {HOST}:{s.getsockname()[1]}", flush=True)
    serve(s, a.to_port, delay, cap)


if __name__ == "__main__":
    main()
