"""The sandbox's pipes: what the bridge uses of Twisted's process transport, and its routing."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from sftpd.apps.contract import ChannelIO


class ProcessHandle(Protocol):
    """What the bridge uses of Twisted's process transport (a Process is also a producer)."""

    pid: int | None

    def write(self, data: bytes) -> None: ...
    def writeToChild(self, childFD: int, data: bytes) -> None: ...
    def closeChildFD(self, childFD: int) -> None: ...
    def closeStdin(self) -> None: ...
    def closeStdout(self) -> None: ...
    def closeStderr(self) -> None: ...
    def signalProcess(self, signalID: str | int) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


class PipeSink(Protocol):
    """Where the sandbox's output goes (the bridge)."""

    def daemon_stdout(self, data: bytes) -> None: ...
    def daemon_stderr(self, data: bytes) -> None: ...
    def daemon_log(self, data: bytes) -> None: ...
    def daemon_log_closed(self) -> None: ...
    def process_ended(self, status: int) -> None: ...


class ClientInput:
    """Registered on rsync's stdin pipe: when the pipe's buffer fills (rsync reads slower
    than the client sends), the channel stops granting window; it resumes when drained."""

    def __init__(self, io: ChannelIO) -> None:
        self._io = io

    def pauseProducing(self) -> None:
        self._io.pause_reading()

    def resumeProducing(self) -> None:
        self._io.resume_reading()

    def stopProducing(self) -> None:
        pass


class RsyncProcess(ProcessProtocol):
    """Routes the sandbox's pipes and exit status (128 + signal when killed) to the sink."""

    def __init__(self, sink: PipeSink, log_fd: int) -> None:
        self._sink = sink
        self._log_fd = log_fd

    def outReceived(self, data: bytes) -> None:
        self._sink.daemon_stdout(data)

    def errReceived(self, data: bytes) -> None:
        self._sink.daemon_stderr(data)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self._log_fd:
            self._sink.daemon_log(data)
        else:
            super().childDataReceived(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == self._log_fd:
            self._sink.daemon_log_closed()  # a last line without its newline
        else:
            super().childConnectionLost(childFD)

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value
        code = getattr(value, "exitCode", None)
        signal = getattr(value, "signal", None)
        if code is None:
            code = 128 + signal if isinstance(signal, int) else 1
        self._sink.process_ended(code)
