"""Stopping an rsync sandbox after its client went away: timers (task.Clock), /proc, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.task import Clock

from sftpd.apps.rsync.stop import (
    KILL_AFTER,
    TERM_AFTER,
    GracefulStop,
    ProcessTree,
    Temporary,
    descendants,
    open_temporaries,
    remove_temporaries,
)
from sftpd.storage.local import LocalStorage
from tests.support import wait_for


@dataclass
class Process:
    """Records what the stopper does to the process transport."""

    pid: int | None = None
    calls: list[str] = field(default_factory=list)
    gone: bool = False

    def closeStdin(self) -> None:
        self.calls.append("close 0")

    def closeStdout(self) -> None:
        self.calls.append("close 1")

    def closeStderr(self) -> None:
        self.calls.append("close 2")

    def unregisterProducer(self) -> None:
        self.calls.append("unregister")

    def signalProcess(self, signalID: str | int) -> None:
        if self.gone:
            raise ProcessExitedAlready()
        self.calls.append(f"signal {signalID}")


@dataclass
class Inside:
    found: list[set[Temporary]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def temporaries(self) -> set[Temporary]:
        self.calls.append("note")
        return self.found.pop(0) if self.found else set()

    def terminate(self) -> None:
        self.calls.append("TERM")


T1 = Temporary("/d/.a.bin.Ab12Cd", 1, 2)
T2 = Temporary("/.b.XYZ123", 1, 3)


def test_pipes_are_closed_at_once_and_nothing_is_signalled_yet() -> None:
    clock, process, inside = Clock(), Process(), Inside()
    GracefulStop(clock, process, inside)
    assert process.calls == ["unregister", "close 0", "close 1", "close 2"]
    assert inside.calls == ["note"]
    clock.advance(TERM_AFTER - 0.1)
    assert inside.calls == ["note"]


def test_rsync_that_exits_by_itself_is_never_signalled() -> None:
    clock, process, inside = Clock(), Process(), Inside(found=[{T1}])
    stop = GracefulStop(clock, process, inside)
    assert stop.ended(20) == set()  # rsync cleaned up itself (status 20: signal or EOF)
    assert clock.getDelayedCalls() == []
    clock.advance(TERM_AFTER)
    clock.advance(KILL_AFTER)
    assert [c for c in process.calls if c.startswith("signal")] == []
    assert inside.calls == ["note"]


def test_term_then_kill_then_temporaries_noted_on_the_way_are_left_to_remove() -> None:
    clock, process, inside = Clock(), Process(), Inside(found=[{T1}, set(), {T2}])
    stop = GracefulStop(clock, process, inside)
    clock.advance(TERM_AFTER)
    assert inside.calls == ["note", "note", "TERM"]
    assert "signal KILL" not in process.calls
    clock.advance(KILL_AFTER - 0.1)
    assert "signal KILL" not in process.calls
    clock.advance(0.1)
    assert process.calls[-1] == "signal KILL"
    assert inside.calls == ["note", "note", "TERM", "note"]
    assert stop.ended(137) == {T1, T2}
    assert clock.getDelayedCalls() == []


def test_exit_after_term_cancels_the_kill() -> None:
    clock, process, inside = Clock(), Process(), Inside(found=[{T1}])
    stop = GracefulStop(clock, process, inside)
    clock.advance(TERM_AFTER)
    assert stop.ended(20) == set()  # rsync's own SIGTERM handler kept or removed its file
    assert clock.getDelayedCalls() == []
    assert "signal KILL" not in process.calls


def test_killed_by_someone_else_still_cleans_up() -> None:
    clock, process, inside = Clock(), Process(), Inside(found=[{T1}])
    stop = GracefulStop(clock, process, inside)
    assert stop.ended(128 + signal.SIGKILL) == {T1}


def test_process_gone_between_timer_and_kill() -> None:
    clock, process = Clock(), Process()
    stop = GracefulStop(clock, process, None)
    process.gone = True
    clock.advance(TERM_AFTER)
    clock.advance(KILL_AFTER)
    assert process.calls[-1] == "close 2"  # the KILL found it gone
    assert stop.ended(0) == set()


# -- /proc and removal, with real processes and a real jailed directory ------------------


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A child process holding ``.big.bin.Q1w2E3`` (write) and ``.r.bin.Q1w2E3`` (read) open."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / ".r.bin.Q1w2E3").write_bytes(b"read only")
    (root / "d" / "plain.txt").write_bytes(b"")
    code = (
        "import os, sys\n"
        "w = open('d/.big.bin.Q1w2E3', 'wb'); w.write(b'partial'); w.flush()\n"
        "r = open('d/.r.bin.Q1w2E3', 'rb')\n"
        "p = open('d/plain.txt', 'wb')\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    yield root, child
    child.kill()
    child.wait()


def test_open_temporaries_finds_only_rsync_style_names_open_for_writing(
    writer: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    root, child = writer
    assert child.pid in descendants(os.getpid())
    found = open_temporaries([child.pid], str(root))
    st = (root / "d" / ".big.bin.Q1w2E3").stat()
    assert found == {Temporary("/d/.big.bin.Q1w2E3", st.st_dev, st.st_ino)}
    assert open_temporaries([child.pid], str(root / "elsewhere")) == set()
    tree = ProcessTree(os.getpid(), str(root), temporaries=True)
    assert tree.temporaries() == found
    assert ProcessTree(os.getpid(), str(root), temporaries=False).temporaries() == set()


def test_remove_temporaries_through_the_jail_spares_a_replaced_file(
    writer: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    root, child = writer
    found = open_temporaries([child.pid], str(root))
    child.kill()
    child.wait()
    os.link(root / "d" / ".big.bin.Q1w2E3", root / "pinned")  # its inode number stays taken
    storage = LocalStorage(root)
    gone = Temporary("/d/.gone.Q1w2E3", 1, 1)
    assert remove_temporaries(storage, {*found, gone}) == ["/d/.big.bin.Q1w2E3"]
    assert sorted(p.name for p in (root / "d").iterdir()) == [".r.bin.Q1w2E3", "plain.txt"]
    # a file of the same name that is not the one rsync had open stays
    (root / "d" / ".big.bin.Q1w2E3").write_bytes(b"the user's own")
    assert remove_temporaries(storage, found) == []
    assert (root / "d" / ".big.bin.Q1w2E3").read_bytes() == b"the user's own"


def test_a_temporary_path_cannot_leave_the_jail(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / ".x.Q1w2E3"
    outside.write_bytes(b"outside")
    st = outside.stat()
    storage = LocalStorage(root)
    assert remove_temporaries(storage, {Temporary("/../.x.Q1w2E3", st.st_dev, st.st_ino)}) == []
    assert outside.read_bytes() == b"outside"


def test_terminate_signals_the_processes_below(
    writer: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    root, child = writer
    # the tree of a throw-away parent: only its children are signalled, never the parent
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '60'])"]
    )
    try:
        assert wait_for(lambda: len(descendants(parent.pid)) == 1)
        (sleeper,) = descendants(parent.pid)
        ProcessTree(parent.pid, str(root), temporaries=False).terminate()
        assert parent.wait(10) == 0  # its child ended (by SIGTERM); the parent itself was spared
        assert sleeper not in descendants(os.getpid())
    finally:
        parent.kill()
        parent.wait()
    assert child.poll() is None
