"""Accepting a connection: only as many as this process has descriptors to serve.

Every client connection may need a second descriptor, to its backend.  A
process that accepts a connection it has no descriptor left for fails the
request (the backend connect gets C{EMFILE}) or has Twisted accept and
close it at once (a reset for the client).  With C{--workers}, the processes
share the listening sockets and the kernel does not spread connections
evenly among them: one process can reach its open-file limit while the
others have room.

So a process stops accepting (takes its listening ports out of the reactor's
read set) while it holds as many client connections as half of its free
descriptors allow, and accepts again when one closes.  Connections that
arrive meanwhile wait in the listen queue for another process, or for this
one.

The ports are paused through the reactor's public C{IReactorFDSet}: a
listening port is the read descriptor the reactor watches.
"""

import math
import os
import resource
from collections.abc import Iterable
from typing import Optional, cast

import attrs
from twisted.internet.interfaces import IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.logger import Logger

_log = Logger()

# Descriptors kept out of the client connections' share, at least: the
# backend pool's idle connections beyond the clients', health probes, a
# reload's files, the workers' pipes.
RESERVED = 64
# ... and this fraction of the limit: one accept loop of Twisted's takes
# many connections before the ports are paused (its batch grows under load).
RESERVED_FRACTION = 0.05
# How often, at most, the log says connections are waiting.
WARN_SECONDS = 60.0


def open_descriptors() -> int:
    """How many descriptors this process has open now (a count of C{/proc/self/fd}, or C{/dev/fd})."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory))
        except OSError:
            continue
    return 0


def connection_limit(open_files: int, in_use: int) -> Optional[int]:
    """The most client connections a process with limit C{open_files}, C{in_use} of them taken, can serve.

    None: no limit (the process may open any number of files).
    """
    if open_files == resource.RLIM_INFINITY or open_files < 0:
        return None
    reserved = max(RESERVED, math.ceil(open_files * RESERVED_FRACTION))
    return max(1, (open_files - in_use - reserved) // 2)


@attrs.define(eq=False)
class Accepting:
    """Counts the client connections of one process and pauses its ports at the limit.

    @ivar limit: the most client connections at once (None: no limit).
    @ivar open: client connections open now.
    @ivar paused: the ports are out of the reactor's read set.
    """

    reactor: IReactorTime
    limit: Optional[int] = None
    ports: list[IReadDescriptor] = attrs.Factory(list)
    open: int = 0
    paused: bool = False
    _warned: float = -math.inf

    def fit_to_process(self, ports: Iterable[object]) -> None:
        """Limit to this process as it is now (its open-file limit, the descriptors it holds), pausing C{ports}."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = connection_limit(soft, open_descriptors())
        for port in ports:
            self.watch(port)

    def watch(self, port: object) -> None:
        """Pause C{port} with the others (a port the reactor does not read, such as a custom one, is left alone)."""
        if IReadDescriptor.providedBy(port) and IReactorFDSet.providedBy(self.reactor):
            descriptor = cast(IReadDescriptor, port)
            self.ports.append(descriptor)
            if self.paused:
                self._fdset.removeReader(descriptor)

    def forget(self, port: object) -> None:
        """C{port} stops listening: it is never added back to the read set."""
        self.ports = [watched for watched in self.ports if watched is not port]

    @property
    def _fdset(self) -> IReactorFDSet:
        return cast(IReactorFDSet, self.reactor)

    def opened(self) -> None:
        self.open += 1
        if self.limit is not None and self.open >= self.limit and not self.paused:
            self._pause()

    def closed(self) -> None:
        self.open -= 1
        if self.paused and (self.limit is None or self.open < self.limit):
            self._resume()

    def _pause(self) -> None:
        self.paused = True
        for port in self.ports:
            self._fdset.removeReader(port)
        now = self.reactor.seconds()
        if now - self._warned >= WARN_SECONDS:
            self._warned = now
            _log.warn(
                "not accepting connections for now: {open} client connections use this process's share of its"
                " open-file limit; new ones wait in the listen queue (raise LimitNOFILE, or add workers)",
                open=self.open,
            )

    def _resume(self) -> None:
        self.paused = False
        for port in self.ports:
            self._fdset.addReader(port)
