"""Accepting only the connections a process has descriptors for (llmhop.accepting)."""

import resource

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from llmhop import accepting, config as configlib
from llmhop.accepting import Accepting, connection_limit
from llmhop.service import PortService
from tests.helpers import build_site


@implementer(IReadDescriptor)
class FakePort:
    """A listening port as the reactor sees it: something to read."""

    def doRead(self):
        pass

    def fileno(self):
        return 3

    def logPrefix(self):
        return "FakePort"

    def connectionLost(self, reason):
        pass


def watched(limit, ports=1):
    reactor = MemoryReactorClock()
    gate = Accepting(reactor, limit)
    listening = [FakePort() for _ in range(ports)]
    for port in listening:
        reactor.addReader(port)
        gate.watch(port)
    return reactor, gate, listening


def warnings(during):
    seen = []

    def observe(event):
        if "not accepting connections" in event.get("log_format", ""):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        during()
    finally:
        globalLogPublisher.removeObserver(observe)
    return seen


def test_half_of_the_free_descriptors_after_a_reserve_go_to_client_connections():
    # 5% of the limit is kept back (at least 64), and each connection may need two.
    assert connection_limit(20000, 100) == (20000 - 100 - 1000) // 2
    assert connection_limit(1024, 20) == (1024 - 20 - 64) // 2
    assert connection_limit(70, 20) == 1
    assert connection_limit(resource.RLIM_INFINITY, 20) is None


def test_the_ports_leave_the_read_set_at_the_limit_and_return_when_one_closes():
    reactor, gate, ports = watched(limit=3, ports=2)
    gate.opened()
    gate.opened()
    assert set(ports) <= set(reactor.getReaders())
    gate.opened()
    assert gate.paused and not set(ports) & set(reactor.getReaders())
    gate.closed()
    assert not gate.paused and set(ports) <= set(reactor.getReaders())
    assert gate.open == 2


def test_without_a_limit_nothing_pauses():
    reactor, gate, ports = watched(limit=None)
    for _ in range(1000):
        gate.opened()
    assert not gate.paused and ports[0] in reactor.getReaders()


def test_a_stopped_port_is_not_read_again():
    reactor, gate, ports = watched(limit=1)
    gate.opened()
    reactor.removeReader(ports[0])  # as stopListening does
    gate.forget(ports[0])
    gate.closed()
    assert ports[0] not in reactor.getReaders()


def test_a_port_watched_while_paused_is_paused_too():
    reactor, gate, ports = watched(limit=1)
    gate.opened()
    late = FakePort()
    reactor.addReader(late)
    gate.watch(late)
    assert late not in reactor.getReaders()
    gate.closed()
    assert late in reactor.getReaders()


def test_a_port_the_reactor_does_not_read_is_left_alone():
    reactor, gate, _ = watched(limit=1)
    gate.watch(object())
    gate.opened()
    gate.closed()
    assert len(gate.ports) == 1


def test_the_pause_is_logged_at_most_once_a_minute():
    reactor, gate, _ = watched(limit=1)

    def flap(times):
        for _ in range(times):
            gate.opened()
            gate.closed()

    assert len(warnings(lambda: flap(5))) == 1
    reactor.advance(accepting.WARN_SECONDS - 1)
    assert warnings(lambda: flap(5)) == []
    reactor.advance(1)
    assert len(warnings(lambda: flap(5))) == 1


def test_the_sites_channels_are_counted_from_connect_to_close():
    clock = MemoryReactorClock()
    config = configlib.parse({"models": {"m": {"url": "http://127.0.0.1:9"}}}, {})
    site = build_site(config, clock, HTTPConnectionPool(clock, persistent=False))
    port = FakePort()
    clock.addReader(port)
    site.accepting.limit = 2
    site.accepting.watch(port)
    channels = [site.buildProtocol(None) for _ in range(2)]
    for channel in channels:
        channel.makeConnection(StringTransport())
    assert site.accepting.open == 2 and port not in clock.getReaders()
    channels[0].connectionLost(None)
    assert site.accepting.open == 1 and port in clock.getReaders()


def test_a_port_whose_service_stops_is_forgotten_before_it_stops_listening():
    reactor, gate, ports = watched(limit=1)
    stopped = []
    ports[0].stopListening = lambda: stopped.append(list(gate.ports))
    PortService(ports[0], gate).stopService()
    assert stopped == [[]]
