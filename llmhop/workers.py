"""Several router processes on the same listening sockets (``--workers N``), and their signals.

The first process listens as usual (binding every C{listen} address, or taking
the sockets systemd passed), then starts N-1 copies of itself that adopt those
very sockets as their fds 3, 4, ….  Every process is a full router; the kernel
hands each new connection to whichever process accepts it first, which is the
least busy one.  Sharing the sockets, rather than each worker binding its own with C{SO_REUSEPORT}, works for
every listen form (unix sockets, TLS, systemd socket activation) and never
loses connections queued on the socket of a worker that is stopping.

The first process supervises: it forwards SIGTERM, SIGINT and SIGHUP to the
workers, restarts a worker that dies, and waits for them on shutdown.  A
worker asks the kernel to send it SIGTERM when the first process dies, so none
is left serving on its own.
"""

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import sys
from collections.abc import Generator, Mapping
from types import FrameType
from typing import Callable, Optional

import attrs
from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone, ReactorNotRunning
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorProcess,
    IReactorSocket,
    IReactorThreads,
    IReactorTime,
)
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from llmhop import internals
from llmhop.accesslog import JSON_LINE
from llmhop.listening import socket_family, sockets_stay_nonblocking

# The fd a worker finds the first shared listening socket on (as systemd
# does); the others follow it in order.
INHERITED_FD = 3
# Tells a worker what each inherited socket is: the JSON list of the endpoint
# descriptions the first process bound, one per fd from INHERITED_FD on.
LISTENING_ENVIRON = "LLMHOP_WORKER_LISTENING"

# A worker that dies sooner than this after its start is restarted with a
# growing delay, so a worker that cannot start does not spin.
STEADY_SECONDS = 10.0
MAX_RESTART_DELAY = 30.0

# Workers get their own grace period first; this is on top of it.
KILL_MARGIN_SECONDS = 5.0

# Set by a supervisor for a worker; a worker's own children must not see them.
_FOREIGN_ENVIRON = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")

_LEVELS = {level.name: level for level in LogLevel.iterconstants()}

_log = Logger()


def worker_argv(config_path: str, index: int, parent_pid: int, relay_logs: bool) -> list[str]:
    """The command line of worker C{index}: this interpreter running L{llmhop.cli}."""
    argv = [sys.executable, "-m", "llmhop", "--config", config_path, "--worker", "%d:%d" % (index, parent_pid)]
    return argv + ["--log-plain"] if relay_logs else argv


def worker_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    result = {name: value for name, value in environ.items() if name not in _FOREIGN_ENVIRON}
    # A checkout run without installing must stay importable in the worker;
    # an installed one is found anyway (and site directories must not move
    # ahead of the standard library).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.basename(package_root) not in ("site-packages", "dist-packages"):
        paths = [package_root] + [p for p in result.get("PYTHONPATH", "").split(os.pathsep) if p]
        result["PYTHONPATH"] = os.pathsep.join(paths)
    return result


class _WorkerProtocol(protocol.ProcessProtocol):
    """One worker: relays its log lines (when asked) and reports its end."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.system = "worker %d" % (index,)
        self.ended: defer.Deferred = defer.Deferred()
        self.pid: Optional[int] = None
        self._partial = b""

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._relay(line)

    def _relay(self, line: bytes) -> None:
        level_name, _, text = line.decode("utf-8", "replace").partition(" ")
        if level_name + " " == JSON_LINE and self.pool.access_line is not None:
            self.pool.access_line(text)
            return
        level = _LEVELS.get(level_name)
        if level is None:
            level, text = LogLevel.info, line.decode("utf-8", "replace")
        _log.emit(level, "{line}", line=text, log_system=self.system)

    def processEnded(self, reason: Failure) -> None:
        if self._partial:
            self._relay(self._partial)
        self.pool.worker_ended(self, reason.value)
        self.ended.callback(None)


class ISupervisorReactor(IReactorProcess, IReactorTime, IReactorCore, IReactorThreads, IReactorSocket):
    """What the reactor of a supervising process provides (any real reactor does)."""


@attrs.define
class WorkerPool:
    """Workers 2..N of a router whose first process is this one."""

    reactor: ISupervisorReactor
    config_path: str
    count: int
    grace: float
    relay_logs: bool
    # Told the pid of every worker that ended (its metrics stop counting as live).
    on_exit: Optional[Callable[[int], None]] = None
    # Writes a worker's JSON access line as it is (L{llmhop.accesslog.JSON_LINE}).
    access_line: Optional[Callable[[str], None]] = None
    # What the first process listens on: (endpoint description, fd) per socket.
    _listening: list[tuple[str, int]] = attrs.Factory(list)
    _workers: dict[int, _WorkerProtocol] = attrs.Factory(dict)
    _started_at: dict[int, float] = attrs.Factory(dict)
    _delays: dict[int, float] = attrs.Factory(dict)
    _pending: dict[int, IDelayedCall] = attrs.Factory(dict)
    _stopping: bool = False

    def start(self, listening: list[tuple[str, int]]) -> None:
        """Start the workers on the listening sockets: (endpoint description, fd) of each."""
        self._listening = listening
        for index in range(2, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        assert self._listening, "start() gives the listening sockets first"
        self._pending.pop(index, None)
        inherited = {INHERITED_FD + i: fd for i, (_, fd) in enumerate(self._listening)}
        environ = worker_environ()
        environ[LISTENING_ENVIRON] = json.dumps([description for description, _ in self._listening])
        worker = _WorkerProtocol(self, index)
        out = "r" if self.relay_logs else 1
        err = "r" if self.relay_logs else 2
        process = self.reactor.spawnProcess(
            worker,
            sys.executable,
            worker_argv(self.config_path, index, os.getpid(), self.relay_logs),
            env=environ,
            childFDs={0: "w", 1: out, 2: err, **inherited},
        )
        worker.pid = process.pid
        self._workers[index] = worker
        self._started_at[index] = self.reactor.seconds()
        _log.info("started worker {index} (pid {pid})", index=index, pid=process.pid)

    def worker_ended(self, worker: _WorkerProtocol, why: BaseException) -> None:
        index = worker.index
        if self.on_exit is not None and worker.pid is not None:
            self.on_exit(worker.pid)
        if self._workers.get(index) is worker:
            del self._workers[index]
        if self._stopping:
            return
        lived = self.reactor.seconds() - self._started_at[index]
        delay = 1.0 if lived >= STEADY_SECONDS else min(2 * self._delays.get(index, 0.5), MAX_RESTART_DELAY)
        self._delays[index] = delay
        if isinstance(why, ProcessDone):
            # Told to stop by someone else: under systemd's default KillMode
            # every process gets SIGTERM, and ours follows within the delay.
            _log.info("worker {index} stopped; restarting it in {delay:.0f}s", index=index, delay=delay)
        else:
            _log.error(
                "worker {index} ended unexpectedly ({why}); restarting it in {delay:.0f}s",
                index=index,
                why=why,
                delay=delay,
            )
        self._pending[index] = self.reactor.callLater(delay, self._spawn, index)

    def signal_all(self, signame: str) -> None:
        for worker in list(self._workers.values()):
            if worker.transport is None:
                continue
            with contextlib.suppress(OSError):  # it is exiting; processEnded follows
                worker.transport.signalProcess(signame)

    @defer.inlineCallbacks
    def stop(self) -> Generator[defer.Deferred, object, None]:
        """SIGTERM to every worker; SIGKILL to those still there after their grace period."""
        self._stopping = True
        for pending in self._pending.values():
            pending.cancel()
        self._pending.clear()
        workers = list(self._workers.values())
        if not workers:
            return
        self.signal_all("TERM")
        everyone = defer.gatherResults([w.ended for w in workers])
        killer = self.reactor.callLater(self.grace + KILL_MARGIN_SECONDS, self.signal_all, "KILL")
        yield everyone
        if killer.active():
            killer.cancel()


def inherited_listening(environ: Mapping[str, str] = os.environ) -> list[tuple[str, int]]:
    """In a worker: (endpoint description, fd) of every socket the first process passed."""
    descriptions = json.loads(environ[LISTENING_ENVIRON])
    return [(description, INHERITED_FD + i) for i, description in enumerate(descriptions)]


def adopt_listening(
    reactor: IReactorSocket, description: str, factory: IProtocolFactory, fd: int = INHERITED_FD
) -> IListeningPort:
    """Listen on the socket a supervisor passed as C{fd}, with TLS when C{description} asks for it."""
    if description.partition(":")[0] == "ssl":
        from twisted.protocols.tls import TLSMemoryBIOFactory

        # Parsing loads the key and certificate; it binds nothing.
        endpoint = serverFromString(reactor, description)
        factory = TLSMemoryBIOFactory(internals.tls_context_factory(endpoint), False, factory)
    family = socket_family(fd)
    with sockets_stay_nonblocking():
        # Twisted's stubs ask for a ServerFactory; any protocol factory serves.
        port = reactor.adoptStreamPort(fd, family, factory)  # type: ignore[arg-type]
    os.close(fd)  # adoptStreamPort listens on a duplicate
    return port


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGTERM this worker when its supervisor dies (Linux)."""
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        # The supervisor died before prctl took effect.
        raise SystemExit(0)


@attrs.define
class SignalHandlers:
    """Stop once on SIGTERM/SIGINT however many arrive; run C{on_hup} on SIGHUP.

    Under systemd (and with Ctrl-C in a terminal) a worker gets the signal
    both from outside and from its supervisor; Twisted's own handler would
    try to stop an already stopping reactor and log a traceback.
    """

    reactor: ISupervisorReactor
    on_hup: Callable[[], None]
    _stopping: bool = False

    def install(self) -> None:
        """Call once the reactor runs: Twisted installs its handlers on startup."""
        self.reactor.addSystemEventTrigger("before", "shutdown", self._mark_stopping)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._once(signal.getsignal(signum)))
        signal.signal(signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self.on_hup))

    def _mark_stopping(self) -> None:
        self._stopping = True

    def _once(self, twisted_handler: object) -> Callable[[int, Optional[FrameType]], None]:
        def handler(signum: int, frame: Optional[FrameType]) -> None:
            if self._stopping:
                return
            self._stopping = True
            # Handed to the reactor, never run here: the signal may have come
            # while this thread was half-way into taking a lock (twisted.logger's
            # file observer takes one per line), and Twisted's handler logs.
            # callFromThread is safe to call from a signal handler.
            if callable(twisted_handler):
                self.reactor.callFromThread(twisted_handler, signum, frame)
            else:
                self.reactor.callFromThread(self._stop_reactor)

        return handler

    def _stop_reactor(self) -> None:
        # Another path may have stopped it already: the parent's death, or
        # the parent's forwarded SIGTERM racing the one sent to every process.
        with contextlib.suppress(ReactorNotRunning):
            self.reactor.stop()
