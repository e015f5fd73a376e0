"""Shared fixtures: a scripted backend and a router, both on real 127.0.0.1 sockets.

In-process fixtures run in pytest-twisted's reactor; blocking clients (raw
sockets) run in a thread via C{deferToThread} so the reactor keeps serving.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from llmhop import config as configlib
from llmhop.health import HealthChecks
from llmhop.service import build_pool
from llmhop.writethrough import write_through
from tests import backend as backendlib
from tests.helpers import build_site, dead_url


@pytest.fixture
def processes():
    """Start processes with C{processes.append(...)}; all are stopped at the end."""
    started = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def backend():
    site = backendlib.site(reactor)
    scripted = site.resource
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    scripted.url = "http://127.0.0.1:%d" % (port.getHost().port,)
    scripted.port = port.getHost().port
    yield scripted
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


class Router:
    def __init__(self, site, port, pool):
        self.site, self._port, self.pool = site, port, pool
        self.port = port.getHost().port
        self.url = "http://127.0.0.1:%d" % (self.port,)
        # As GatewayService does: probes only for models with a healthCheck.
        self.health = HealthChecks(reactor)
        self.health.update(site.gateway.routes, site.gateway.upstream.agent)

    @property
    def routes(self):
        return self.site.gateway.routes

    def close(self):
        self.health.stop()
        pytest_twisted.blockon(defer.maybeDeferred(self._port.stopListening))
        pytest_twisted.blockon(self.pool.closeCachedConnections())


@pytest.fixture
def make_router():
    routers = []

    def make(settings, environ=None):
        config = configlib.parse(json.loads(json.dumps(settings)), environ or {})
        pool = build_pool(config, reactor)
        site = build_site(config, reactor, pool)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        write_through(port)  # as GatewayService does
        router = Router(site, port, pool)
        routers.append(router)
        return router

    yield make
    for router in routers:
        router.close()


@pytest.fixture
def router(make_router, backend):
    """A router with the scripted backend as model "m" (and "other" at a dead port)."""
    return make_router({"models": {"m": {"url": backend.url}, "other": {"url": dead_url()}}})


@pytest.fixture
def make_backend():
    """More scripted backends: make_backend() on TCP, make_backend(path) on a unix socket."""
    ports = []

    def make(unix_path=None):
        site = backendlib.site(reactor)
        scripted = site.resource
        if unix_path is None:
            port = reactor.listenTCP(0, site, interface="127.0.0.1")
            scripted.url = "http://127.0.0.1:%d" % (port.getHost().port,)
        else:
            port = reactor.listenUNIX(str(unix_path), site)
            scripted.url = "unix:%s" % (unix_path,)
        ports.append(port)
        return scripted

    yield make
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
