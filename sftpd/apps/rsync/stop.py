"""Ending an rsync sandbox whose client has gone: as OpenSSH does, then TERM, KILL and cleanup.

When the SSH connection drops, OpenSSH's server just closes rsync's pipes: rsync sees end of
input, runs its own cleanup (with ``--partial`` it renames its temporary ``.NAME.XXXXXX`` to
``NAME``, so the next run resumes) and exits. :class:`GracefulStop` does the same, then sends
SIGTERM to the rsync processes inside the sandbox after ``term_after`` seconds (rsync cleans up
on SIGTERM too; the outer bwrap would not pass it on) and SIGKILLs the sandbox ``kill_after``
seconds later. Only a killed rsync can leave its temporaries behind: the ones it had open are
noted before each signal and removed afterwards through the user's jailed storage.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger

from sftpd.storage.base import Storage

log = Logger()

TERM_AFTER = 5.0  # seconds after the pipes are closed
KILL_AFTER = 10.0  # seconds after SIGTERM
# rsync's temporary for NAME is ".NAME." plus six characters from mkstemp's alphabet.
_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9]{6}", re.DOTALL)


class StoppableProcess(Protocol):
    """What stopping uses of Twisted's process transport."""

    pid: int | None

    def closeStdin(self) -> None: ...
    def closeStdout(self) -> None: ...
    def closeStderr(self) -> None: ...
    def signalProcess(self, signalID: str | int) -> None: ...
    def unregisterProducer(self) -> None: ...


@dataclass(frozen=True)
class Temporary:
    """An rsync temporary: its path inside the user's root and the file it was when noted."""

    path: str
    dev: int
    ino: int


def descendants(pid: int, proc: str = "/proc") -> list[int]:
    """Live processes below ``pid`` (children first), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in (b"Z", b"X"):
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def open_temporaries(pids: list[int], jail: str, proc: str = "/proc") -> set[Temporary]:
    """rsync temporaries under ``jail`` (as the processes see it) open for writing by ``pids``."""
    prefix = jail.rstrip("/") + "/"
    found: set[Temporary] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
                if not target.startswith(prefix) or target.endswith(" (deleted)"):
                    continue
                if not _TEMPORARY.fullmatch(target.rpartition("/")[2]):
                    continue
                with open(f"{proc}/{pid}/fdinfo/{fd}") as info:
                    flags = next(int(line.split()[1], 8) for line in info if line[:6] == "flags:")
                if flags & os.O_ACCMODE == os.O_RDONLY:
                    continue
                st = os.stat(f"{proc}/{pid}/fd/{fd}")
            except (OSError, StopIteration, ValueError):
                continue
            found.add(Temporary("/" + target[len(prefix) :], st.st_dev, st.st_ino))
    return found


def remove_temporaries(storage: Storage, temporaries: set[Temporary]) -> list[str]:
    """Remove each temporary that is still the same file, through the jail. Blocking."""
    removed = []
    for temp in sorted(temporaries, key=lambda t: t.path):
        try:
            st = storage.stat(temp.path, follow=False)
            if (st.st_dev, st.st_ino) == (temp.dev, temp.ino):
                storage.remove(temp.path)
                removed.append(temp.path)
        except OSError:
            continue  # renamed or removed by rsync itself, or replaced: not ours any more
    return removed


class ProcessTree:
    """The rsync processes inside one sandbox, found under the outer bwrap's pid in /proc.

    ``temporaries`` is off where rsync writes in place (``--inplace``, ``--append``): the
    file it has open is then the user's own, whatever its name.
    """

    def __init__(self, pid: int, jail: str, *, temporaries: bool, proc: str = "/proc") -> None:
        self._pid = pid
        self._jail = jail
        self._proc = proc
        self._temporaries = temporaries

    def temporaries(self) -> set[Temporary]:
        if not self._temporaries:
            return set()
        return open_temporaries(descendants(self._pid, self._proc), self._jail, self._proc)

    def terminate(self) -> None:
        """SIGTERM every process below bwrap (through pidfds: a pid reused meanwhile is spared)."""
        for pid in descendants(self._pid, self._proc):
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if pid in descendants(self._pid, self._proc):
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            except OSError:
                pass
            finally:
                os.close(pidfd)


class Inside(Protocol):
    """The processes inside the sandbox: their open temporaries, and a way to SIGTERM them."""

    def temporaries(self) -> set[Temporary]: ...
    def terminate(self) -> None: ...


class GracefulStop:
    """Stops one sandbox after its client went away (see the module docstring)."""

    def __init__(
        self,
        clock: Any,
        process: StoppableProcess,
        inside: Inside | None,
        *,
        term_after: float = TERM_AFTER,
        kill_after: float = KILL_AFTER,
    ) -> None:
        self._clock = clock
        self._process: StoppableProcess | None = process
        self._inside = inside
        self._kill_after = kill_after
        self.temporaries: set[Temporary] = set()
        self.killed = False
        self._note()
        process.unregisterProducer()  # else Twisted would not finish closing stdin
        for close in (process.closeStdin, process.closeStdout, process.closeStderr):
            close()
        self._timer: Any = clock.callLater(term_after, self._terminate)

    def _note(self) -> None:
        if self._inside is not None:
            self.temporaries |= self._inside.temporaries()

    def _terminate(self) -> None:
        self._note()
        if self._inside is not None:
            self._inside.terminate()
        self._timer = self._clock.callLater(self._kill_after, self._kill)

    def _kill(self) -> None:
        self._timer = None
        self._note()
        process, self._process = self._process, None
        if process is not None:
            self.killed = True
            try:
                process.signalProcess("KILL")  # bwrap's PID namespace takes everything with it
            except ProcessExitedAlready:
                pass

    def ended(self, status: int) -> set[Temporary]:
        """The sandbox exited with ``status``: stop the timers; return what is left to remove.

        Statuses from 128 up mean a signal ended rsync (bwrap reports its child's that way)
        before it could clean up; rsync's own exit codes are all below 128.
        """
        self._process = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return self.temporaries if (status >= 128 or self.killed) else set()


def removal_logger(session_id: str) -> Callable[[list[str]], None]:
    """Log what :func:`remove_temporaries` removed (paths inside the user's root only)."""

    def logged(removed: list[str]) -> None:
        if removed:
            log.info(
                "rsync conn={session_id} removed {count} temporaries left by a killed rsync",
                session_id=session_id,
                count=len(removed),
            )

    return logged
