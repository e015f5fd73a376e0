"""Client connections that send at once what they can, instead of on the next reactor turn.

A Twisted TCP transport queues every write and sends it when epoll next says
the socket is writable: for each response, and for each relayed chunk of a
stream, that is a registration for writability, one more reactor turn and a
deregistration.  Nearly always the socket could have taken the bytes right
away.  These transports try a plain send() first when nothing is queued, and
fall back to Twisted's queue (and its backpressure) for whatever the socket
does not take.  Order is kept: nothing is sent directly while anything is
queued.
"""

import errno
from collections.abc import Iterable
from typing import TYPE_CHECKING, Optional

from twisted.internet import tcp, unix
from twisted.internet.interfaces import IAddress, IListeningPort

from llmhop import internals

_RETRY_LATER = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)

# Sending directly is only right while Twisted's own write queue is empty;
# how it queues is internal (llmhop.internals.nothing_queued), so on a Twisted
# that queues differently the transports are left as Twisted made them:
# slower, never reordered.  tests/test_writethrough.py pins the ordering.
AVAILABLE = internals.WRITE_QUEUE_VISIBLE


if TYPE_CHECKING:
    _Transport = tcp.Connection
else:
    _Transport = object


class WriteThroughMixin(_Transport):
    """Write-through for a TCP or UNIX server transport (mixed in before it)."""

    _corked: Optional[list[bytes]] = None
    _host: Optional[IAddress] = None

    def getHost(self) -> IAddress:
        # twisted.web asks for every request, and each time is a getsockname().
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def cork(self) -> None:
        """Collect writes until L{uncork}: a response's head and first body bytes go out in one send."""
        self._corked = []

    def uncork(self) -> None:
        pieces, self._corked = self._corked, None
        if pieces:
            self.write(b"".join(pieces))

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            if data:
                self._corked.append(data)
            return
        if data and self.connected and internals.nothing_queued(self) and not getattr(self, "TLS", False):
            try:
                sent = self.socket.send(data)
            except OSError as e:
                # Errors other than a full buffer are Twisted's to notice and
                # report, on the queued path.
                sent = 0
                if e.errno not in _RETRY_LATER:
                    super().write(data)
                    return
            if sent == len(data):
                return
            if sent:
                data = bytes(memoryview(data)[sent:])
        super().write(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if self._corked is not None:
            self._corked.extend(iovec)
        else:
            self.write(b"".join(iovec))


class WriteThroughTCPServer(WriteThroughMixin, tcp.Server):
    pass


class WriteThroughUNIXServer(WriteThroughMixin, unix.Server):
    pass


_WRITE_THROUGH = {tcp.Server: WriteThroughTCPServer, unix.Server: WriteThroughUNIXServer}


def write_through(port: IListeningPort) -> None:
    """Make the connections C{port} accepts from now on write through (TCP and UNIX ports)."""
    if AVAILABLE and isinstance(port, (tcp.Port, unix.Port)) and port.transport in _WRITE_THROUGH:
        port.transport = _WRITE_THROUGH[port.transport]
