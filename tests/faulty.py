"""Backends that misbehave at the TCP level, one port per fault.

Run as a program (``python -m tests.faulty``) it prints ``<fault> <port>``
for each, all on 127.0.0.1, then ``READY``.  When a client of the ``endless``
backend goes away it prints ``endless closed after <n> bytes``.
"""

import socket
import sys

from twisted.internet import reactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNK = b"data: {}\n\n"


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


class _AfterRequest(Protocol):
    """Waits for the end of the request head, then misbehaves."""

    buffer = b""

    def dataReceived(self, data):
        if self.buffer is None:
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.buffer = None
            self.misbehave()


class Close(_AfterRequest):
    def misbehave(self):
        self.transport.loseConnection()


class Garbage(_AfterRequest):
    def connectionMade(self):
        # Garbage from the first byte: fails TLS handshakes too.
        self.transport.write(b"\x00\xffNOT HTTP AT ALL\r\n\r\n" * 10)

    def misbehave(self):
        self.transport.loseConnection()


class Hang(_AfterRequest):
    def misbehave(self):
        pass


class HangMid(_AfterRequest):
    def misbehave(self):
        self.transport.write(HEAD + chunk(CHUNK))


class DieMid(_AfterRequest):
    def misbehave(self):
        self.transport.write(HEAD + chunk(CHUNK) * 3)
        reactor.callLater(0.05, self.transport.abortConnection)


@implementer(IPushProducer)
class Endless(_AfterRequest):
    sent = 0
    paused = True

    def misbehave(self):
        self.transport.registerProducer(self, True)
        self.transport.write(HEAD)
        self.resumeProducing()

    def resumeProducing(self):
        self.paused = False
        piece = chunk(b"x" * 65536)
        while not self.paused and self.transport.connected:
            self.sent += len(piece)
            self.transport.write(piece)
            if self.sent % (1 << 22) == 0:
                break  # let the reactor breathe; resumed below
        if not self.paused and self.transport.connected:
            reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.paused = True

    def connectionLost(self, reason):
        self.paused = True
        sys.stdout.write("endless closed after %d bytes\n" % (self.sent,))
        sys.stdout.flush()


def full_backlog():
    """A port whose accept queue is full: connection attempts just hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    return listener, fillers


def main():
    kinds = {
        "close": Close,
        "garbage": Garbage,
        "hang": Hang,
        "hang_mid": HangMid,
        "die_mid": DieMid,
        "endless": Endless,
    }
    for name, protocol in sorted(kinds.items()):
        port = reactor.listenTCP(0, Factory.forProtocol(protocol), interface="127.0.0.1")
        sys.stdout.write("%s %d\n" % (name, port.getHost().port))
    held = full_backlog()
    sys.stdout.write("unroutable %d\n" % (held[0].getsockname()[1],))
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
