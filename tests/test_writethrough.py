"""Write-through (llmhop/writethrough.py) on Twisted's own write queue, with a socket that takes little.

The contract with Twisted's internals is pinned here: if a Twisted release
changes how FileDescriptor queues writes, these tests say so before any
response is reordered.
"""

import errno

import pytest
from twisted.internet import abstract
from twisted.internet.testing import MemoryReactor

from llmhop.writethrough import WriteThroughMixin


class StingySocket:
    """Takes at most C{take} bytes per send(); C{full} sends raise EAGAIN."""

    def __init__(self, take):
        self.take = take
        self.full = 0
        self.received = bytearray()
        self.direct = 0

    def send(self, data):
        if self.full:
            self.full -= 1
            raise BlockingIOError(errno.EAGAIN, "full")
        piece = bytes(data[: self.take])
        self.received += piece
        return len(piece)


class Transport(WriteThroughMixin, abstract.FileDescriptor):
    """Twisted's queue (FileDescriptor), this module's write path, a fake socket."""

    def __init__(self, sock):
        super().__init__(reactor=MemoryReactor())
        self.socket = sock
        self.connected = True

    def writeSomeData(self, data):  # what the reactor's doWrite sends through
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0

    def drain(self):
        """Turn the reactor until Twisted's queue is empty."""
        for _ in range(10000):
            if not (self.dataBuffer[self.offset :] or self._tempDataBuffer):
                return
            self.doWrite()
        raise AssertionError("the queue never drained")


@pytest.mark.parametrize("take", [1, 3, 7, 1000])
@pytest.mark.parametrize("full_every", [0, 2, 3])
def test_bytes_leave_in_the_order_written_under_partial_sends(take, full_every):
    sock = StingySocket(take)
    transport = Transport(sock)
    written = []
    for index in range(40):
        data = (b"<%d:" % index) + bytes([65 + index % 26]) * (index % 9) + b">"
        if full_every and index % full_every == 0:
            sock.full = 1
        transport.write(data)
        written.append(data)
        if index % 5 == 4:
            transport.drain()  # the reactor turns now and then, between writes
    transport.drain()
    assert bytes(sock.received) == b"".join(written)


def test_a_write_with_an_empty_queue_goes_straight_out():
    sock = StingySocket(1000)
    transport = Transport(sock)
    transport.write(b"head")
    assert bytes(sock.received) == b"head"
    assert transport.dataBuffer == b"" and transport._tempDataBuffer == []


def test_a_partial_send_queues_the_rest_and_later_writes_wait_behind_it():
    sock = StingySocket(2)
    transport = Transport(sock)
    transport.write(b"abcdef")
    transport.write(b"gh")
    assert bytes(sock.received) == b"ab"
    transport.drain()
    assert bytes(sock.received) == b"abcdefgh"


def test_corked_writes_leave_in_one_send():
    sock = StingySocket(1000)
    transport = Transport(sock)
    transport.cork()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.writeSequence([b"da", b"ta"])
    assert sock.received == b""
    transport.uncork()
    assert bytes(sock.received) == b"HTTP/1.1 200 OK\r\n\r\ndata"


def test_a_write_between_two_turns_of_a_draining_queue_waits_its_turn():
    # Twisted moved the queue into dataBuffer and sent part of it: a new
    # write must not overtake the rest.
    sock = StingySocket(3)
    transport = Transport(sock)
    transport.write(b"0123456789")
    transport.doWrite()
    assert transport._tempDataBuffer == [] and transport.dataBuffer[transport.offset :]
    transport.write(b"after")
    transport.drain()
    assert bytes(sock.received) == b"0123456789after"
