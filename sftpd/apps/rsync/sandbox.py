"""The rsync sandbox: bubblewrap command line, daemon config and runtime discovery.

Sandbox design (why it is built this way)
-----------------------------------------
Absolute symlink targets must resolve inside the user's root, so rsync's ``/`` must be the
user's root. But a dynamically linked rsync started with the user's root as ``/`` would let
the user steer the loader and libc with files they upload (``/etc/ld.so.preload``,
``/etc/nsswitch.conf`` plus a ``libnss_*.so``, gconv modules), and its binary and libraries
would need a mount point inside the user's tree. So rsync is loaded in a throw-away
bubblewrap root and moves into the user's root *after* loading:

1. bwrap builds a fresh tmpfs root (read-only once built) holding only: the rsync binary,
   the exact shared objects ``ldd`` lists for it (plus ``/etc/ld.so.cache``), a minimal
   ``/dev``, a generated ``/etc/rsyncd.conf``, and the user's root bind-mounted at
   ``/jail`` (read-only for read-only accounts). New user (non-root uid), PID, IPC, UTS,
   network and cgroup namespaces; no further user namespaces; every capability dropped
   except CAP_SYS_CHROOT; empty environment (``TZ=UTC0`` so no zone file is ever read).
   One exception, for ownership: under a server running as root, a *sender* (a download)
   gets no user namespace and runs as the real root, so it sees and sends the files' real
   owners, as rsync under OpenSSH does (in a user namespace every owner but the mapped
   one reads as 65534, and root's files as the mapped uid); its capabilities are
   CAP_SYS_CHROOT, CAP_SETGID (the daemon's setgroups) and CAP_DAC_OVERRIDE (root reads
   files of every owner and mode, as over SFTP). A receiver keeps the user namespace: it
   never chowns, so uploads belong to the server's user as over SFTP.
2. rsync runs as a single-use daemon over stdio (``rsync --server --daemon``), whose module
   has ``use chroot = yes``: it chroots into ``/jail`` before it reads a single argument
   from the client. From then on the only files it can name are the user's own; ``numeric
   ids = yes`` keeps it from loading NSS files or libraries from the user's tree, and
   ``--iconv`` is refused for the same reason (gconv modules).
3. The client speaks the remote-shell flavour of the protocol, which differs from the daemon
   flavour only in its opening: the bridge (exec/rsync.py) answers the client's 4-byte version
   itself, performs the daemon's text greeting on the client's behalf, and hands over the
   client's arguments -- re-serialised from the validated allow-list (see rsync_args), never
   the client's raw words. After ``@RSYNCD: OK`` bytes pass through untouched.

What remains visible: nothing of the host after the chroot. Before it (while the daemon
reads our config), the tmpfs above; the client's bytes never reach rsync before the chroot.
Residual exposure: code execution inside rsync (a memory-safety bug) plus CAP_SYS_CHROOT
would allow leaving the chroot into that tmpfs -- the rsync binary and its public libraries,
read-only -- never the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

MODULE = b"sftpd"
JAIL = "/jail"
RSYNC = "/usr/bin/rsync"
CONFIG = "/etc/rsyncd.conf"
CONFIG_FD = 3
# The daemon's transfer log (one line per file, see TRANSFER_FORMAT) goes to this pipe,
# opened by rsync through /proc before it chroots into the jail.
LOG_FD = 4
# rrsync DIR: the directory the jail resolved, passed as an fd for bwrap to bind at JAIL.
ROOT_FD = 5
TRANSFER_MARK = b"SFTPD|"
TRANSFER_FORMAT = "SFTPD|%o|%l|%b|%f"
# A receiver under a root server runs as this uid inside its user namespace (mapped to root
# outside): as uid 0 it would chown to the client's ids and need capabilities to do so.
_ID_WHEN_ROOT = 1000
_NAMESPACES_BUT_USER = (
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup-try",
)
# A sender under a root server: chroot, the daemon's setgroups() to root's own group (its
# setgid/setuid to 0 need nothing), and reading what root may read (files of every owner
# and mode, as root does over SFTP).
_ROOT_SENDER_CAPS: tuple[str, ...] = ("CAP_SYS_CHROOT", "CAP_SETGID", "CAP_DAC_OVERRIDE")

# Defence in depth: the allow-list already refuses these before rsync sees anything.
_REFUSE = (
    "daemon config dparam write-batch read-batch only-write-batch log-file log-file-format "
    "temp-dir iconv copy-devices write-devices rsync-path remote-option copy-as"
)


def daemon_config(
    read_only: bool, *, as_root: bool = False, incoming_chmod: str = "", transfer_log: bool = False
) -> bytes:
    """The rsyncd.conf given to the sandboxed single-use daemon.

    ``incoming_chmod`` (the rules' :func:`~sftpd.storage.rules.incoming_chmod`) is applied by
    the daemon to every file and directory it receives, after rsync's own mode handling
    (``-p`` or not): the umask and the setuid/setgid/sticky drop that SFTP and scp get from
    the storage's rules. ``transfer_log``: one line per file transferred (and the
    session's summary) to :data:`LOG_FD` (the sandbox then needs ``proc=True``)."""
    logging = (
        f"log file = /proc/self/fd/{LOG_FD}\ntransfer logging = yes\n"
        f"log format = {TRANSFER_FORMAT}\n"
        if transfer_log
        else "log file = /dev/null\ntransfer logging = no\n"
    )
    # A daemon started as root switches to "nobody" unless told otherwise: stay root.
    ids = "uid = 0\ngid = 0\n" if as_root else ""
    return (
        ids + "use chroot = yes\n"
        "numeric ids = yes\n"
        "munge symlinks = no\n"
        "reverse lookup = no\n" + logging + f"[{MODULE.decode()}]\n"
        f"path = {JAIL}\n"
        f"read only = {'yes' if read_only else 'no'}\n"
        "list = no\n"
        f"refuse options = {_REFUSE}\n"
        + (f"incoming chmod = {incoming_chmod}\n" if incoming_chmod else "")
    ).encode()


@dataclass(frozen=True)
class Runtime:
    """Host files the sandbox needs before the chroot, and what this bwrap supports."""

    files: tuple[str, ...]
    disable_userns: bool


def probe_runtime(bwrap: str, rsync: str) -> Runtime:
    """List rsync's shared objects (``ldd``) and bwrap's features. Blocking."""
    real = os.path.realpath(rsync)
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    ldd = shutil.which("ldd", path=env["PATH"])
    if ldd is None:
        raise RuntimeError("ldd not found")
    out = subprocess.run([ldd, real], capture_output=True, env=env, timeout=60, check=False)
    files = parse_ldd(out.stdout.decode("utf-8", "replace"))
    if os.path.exists("/etc/ld.so.cache"):
        files = (*files, "/etc/ld.so.cache")
    usage = subprocess.run([bwrap, "--help"], capture_output=True, env=env, timeout=60)
    return Runtime(files=files, disable_userns=b"--disable-userns" in usage.stdout)


class RuntimeCache:
    """:func:`probe_runtime` results, kept until the rsync binary changes (inode or mtime).

    One per server, handed to each rsync session; ``probe`` is blocking (run it in the
    worker pool) and safe to call from several threads (a race only probes twice).
    """

    def __init__(self, probe: Callable[[str, str], Runtime] = probe_runtime) -> None:
        self._probe = probe
        self._known: dict[tuple[str, str, int, int], Runtime] = {}

    def probe(self, bwrap: str, rsync: str) -> Runtime:
        real = os.path.realpath(rsync)
        st = os.stat(real)
        key = (bwrap, real, st.st_ino, st.st_mtime_ns)
        cached = self._known.get(key)
        if cached is None:
            cached = self._known[key] = self._probe(bwrap, rsync)
        return cached


def parse_ldd(text: str) -> tuple[str, ...]:
    """Absolute paths of the shared objects in ``ldd`` output; RuntimeError if one is missing."""
    files: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if "=> not found" in line:
            raise RuntimeError(f"ldd: {line}")
        name, arrow, rest = line.partition("=>")
        candidate = (rest if arrow else name).strip().split(" (", 1)[0].strip()
        if candidate.startswith("/") and candidate not in files:
            files.append(candidate)
    return tuple(files)


def runs_as_root(sender: bool) -> bool:
    """Whether this transfer's rsync runs as the real root: only a sender, only under root."""
    return sender and os.getuid() == 0


def sandbox_argv(
    bwrap: str,
    rsync: str,
    runtime: Runtime,
    host_root: bytes,
    read_only: bool,
    *,
    as_root: bool = False,
    proc: bool = False,
    root_fd: int | None = None,
) -> list[bytes]:
    """The bwrap command line that starts the single-use rsync daemon (see module docstring).

    ``root_fd``: the child's fd of the directory to bind at JAIL instead of ``host_root``
    (an rrsync key's DIR, opened by the jail: no host path is followed again)."""
    if as_root:
        argv = [bwrap, *_NAMESPACES_BUT_USER]
        caps = _ROOT_SENDER_CAPS
    else:
        uid = os.getuid() or _ID_WHEN_ROOT
        gid = os.getgid() or _ID_WHEN_ROOT
        argv = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(uid), "--gid", str(gid)]
        if runtime.disable_userns:
            argv.append("--disable-userns")
        caps = ("CAP_SYS_CHROOT",)
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for cap in caps:
        argv += ["--cap-add", cap]
    argv += ["--clearenv", "--setenv", "TZ", "UTC0"]
    argv += ["--dev", "/dev"]
    if proc:  # the transfer log's /proc/self/fd/N (the jail, after chroot, has no /proc)
        argv += ["--proc", "/proc"]
    for path in runtime.files:
        argv += ["--ro-bind", path, path]
    argv += ["--ro-bind", rsync, RSYNC, "--ro-bind-data", str(CONFIG_FD), CONFIG]
    encoded = [os.fsencode(a) for a in argv]
    if root_fd is not None:
        bind = b"--ro-bind-fd" if read_only else b"--bind-fd"
        encoded += [bind, str(root_fd).encode(), JAIL.encode()]
    else:
        encoded += [b"--ro-bind" if read_only else b"--bind", host_root, JAIL.encode()]
    tail = ["--remount-ro", "/", "--chdir", "/", "--", RSYNC, "--server", "--daemon"]
    tail += [f"--config={CONFIG}", "."]
    return encoded + [a.encode() for a in tail]
