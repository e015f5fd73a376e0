"""The channel's deadlines and early answers (llmhop/site.py) on a fake clock and an in-memory transport.

No sockets, no waiting: the clock is advanced to each deadline, and what the
channel wrote is read from the transport.
"""

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from llmhop import config as configlib
from llmhop.service import build_pool
from llmhop.site import BODY_BYTES_PER_SECOND, LINGER_SECONDS, GatewayChannel
from tests.helpers import build_site

HEAD, BODY = 10.0, 30.0


class HalfClosingTransport(StringTransport):
    """A StringTransport that can shut its write side, as TCP can."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


def connect(settings=None):
    """A channel of a fresh site on a MemoryReactorClock, and its transport and clock."""
    clock = MemoryReactorClock()
    settings = settings or {"models": {"m": {"url": "http://127.0.0.1:1"}}}
    config = configlib.parse(settings, {})
    site = build_site(config, clock, build_pool(config, clock))
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = HalfClosingTransport()
    channel.makeConnection(transport)
    return channel, transport, clock


def status(transport):
    value = transport.value()
    return int(value.split(b" ", 2)[1]) if value else None


def test_no_request_line_within_the_head_deadline_drops_the_connection():
    channel, transport, clock = connect()
    clock.advance(HEAD - 0.1)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnected and transport.value() == b""


def test_a_head_still_arriving_at_its_deadline_is_answered_408():
    channel, transport, clock = connect()
    channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    for second in range(int(HEAD) - 1):
        clock.advance(1)
        channel.dataReceived(b"X-Slow-%d: 1\r\n" % second)  # a byte now and then does not extend it
    assert status(transport) is None
    clock.advance(1)
    assert status(transport) == 408
    assert channel._state == GatewayChannel.REJECTED


def test_the_next_request_on_a_kept_alive_connection_gets_its_own_head_deadline():
    channel, transport, clock = connect()
    channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(transport) == 200
    transport.clear()
    clock.advance(HEAD - 1)  # idle between requests: only the idle timeout applies
    channel.dataReceived(b"GET /health HTTP/1.1\r\n")
    clock.advance(HEAD - 0.5)
    assert status(transport) is None
    clock.advance(0.5)
    assert status(transport) == 408


def body_head(length):
    return b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (length,)


def test_a_body_trickling_below_the_fair_rate_is_cut_off_at_its_deadline():
    channel, transport, clock = connect()
    channel.dataReceived(body_head(1000))
    assert channel._state == GatewayChannel.BODY
    for _ in range(int(BODY) - 1):
        clock.advance(1)
        channel.dataReceived(b" ")
    clock.advance(1)  # 29 bytes earned 29/64Ki of a second
    assert status(transport) is None
    clock.advance(0.001)
    assert status(transport) == 408
    assert json.loads(transport.value().split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("extra_seconds, cut_off", [(0.5, False), (1.5, True)])
def test_a_big_body_at_a_fair_rate_gets_a_second_per_64_kib(extra_seconds, cut_off):
    size = 10 * BODY_BYTES_PER_SECOND
    channel, transport, clock = connect({"maxBodyBytes": 2 * size, "models": {"m": {"url": "http://127.0.0.1:1"}}})
    channel.dataReceived(body_head(size + 1))
    channel.dataReceived(b" " * size)  # 10 s more than the body deadline
    clock.advance(BODY + 10 - 1 + extra_seconds)
    assert (status(transport) == 408) is cut_off


def test_an_early_answer_shuts_the_write_side_and_aborts_after_the_linger():
    channel, transport, clock = connect(
        {"authTokens": ["a-real-secret-token"], "models": {"m": {"url": "http://127.0.0.1:1"}}}
    )
    channel.dataReceived(body_head(100) + b"{")
    assert status(transport) == 401
    assert transport.write_closed and not transport.disconnected
    channel.dataReceived(b"what the client still sends is not parsed\r\n\r\n")
    clock.advance(LINGER_SECONDS)
    assert transport.disconnected


def test_the_request_line_is_recorded_by_the_channel():
    channel, transport, clock = connect()
    channel.dataReceived(b"POST /v1/chat?x=1 HTTP/1.1\r\n")
    line = channel.request_line
    assert (line.method, line.target, line.path, line.version) == (b"POST", b"/v1/chat?x=1", b"/v1/chat", b"HTTP/1.1")
