"""Wiring: config → gateway → listening service, for both ``llmhop`` and ``twistd llmhop``.

This is the only module that knows every other one.  L{GatewayService} binds
the listening endpoint (in C{privilegedStartService}, so that twistd can bind
a low port before dropping privileges), tells systemd when it is ready, and on
shutdown stops accepting, lets in-flight requests finish within the grace
period and then cuts off whatever is left.
"""

import os
import socket
from typing import Mapping, Optional, Set

from twisted.application import service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.web import server
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, _HTTP11ClientFactory

from llmhop import config as configlib
from llmhop.auth import Authenticator
from llmhop.channel import GatewayChannel, GatewayRequest
from llmhop.endpoints import CachedEndpointFactory
from llmhop.gateway import Gateway
from llmhop.proxy import Upstream
from llmhop.routing import RoutingTable

# The stock pool keeps 2 idle connections per backend; a busy backend would
# then pay a TCP (and TLS) handshake for nearly every request.
MAX_PERSISTENT_PER_BACKEND = 512

_log = Logger()


class GatewaySite(server.Site):
    protocol = GatewayChannel
    requestFactory = GatewayRequest
    noisy = False

    def __init__(self, gateway: Gateway, timeouts: configlib.Timeouts, reactor) -> None:
        super().__init__(gateway, timeout=timeouts.idle, reactor=reactor)
        self.gateway = gateway
        self.timeouts = timeouts
        self.in_flight: Set[GatewayRequest] = set()
        self._drained: Optional[defer.Deferred] = None

    def log(self, request) -> None:
        """The access log is GatewayRequest's: it also covers aborted requests."""

    def request_started(self, request: GatewayRequest) -> None:
        self.in_flight.add(request)

    def request_ended(self, request: GatewayRequest) -> None:
        self.in_flight.discard(request)
        if not self.in_flight and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def drained(self) -> defer.Deferred:
        """Fires once no request is in flight."""
        if not self.in_flight:
            return defer.succeed(None)
        if self._drained is None:
            self._drained = defer.Deferred()
        return self._drained


class _QuietClientFactory(_HTTP11ClientFactory):
    """Without this, every new backend connection logs two lines (as Synapse found)."""

    noisy = False


def build_site(config: configlib.Config, reactor) -> GatewaySite:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    pool.maxPersistentPerHost = MAX_PERSISTENT_PER_BACKEND
    pool.cachedConnectionTimeout = config.timeouts.keepAlive
    endpoints = CachedEndpointFactory(reactor, BrowserLikePolicyForHTTPS(), config.timeouts.connect)
    agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    auth = Authenticator.from_tokens(config.auth_tokens)
    gateway = Gateway(
        routes=RoutingTable.from_config(config),
        auth=auth,
        upstream=Upstream(
            agent, reactor, config.timeouts.response, config.timeouts.read, strip_authorization=auth.enabled
        ),
        max_body_bytes=config.max_body_bytes,
    )
    site = GatewaySite(gateway, config.timeouts, reactor)
    site.pool = pool
    return site


def sd_notify(state: bytes, environ: Mapping[str, str] = os.environ) -> None:
    """Tell systemd (Type=notify) about C{state}, if it asked to be told."""
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state)
    except OSError as e:
        _log.warn("cannot notify systemd at NOTIFY_SOCKET: {error}", error=e)


class GatewayService(service.Service):
    def __init__(self, config: configlib.Config, reactor) -> None:
        self.config = config
        self.reactor = reactor
        self.site = build_site(config, reactor)
        self.port = None
        self.failed = False
        self._listening: Optional[defer.Deferred] = None

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        try:
            endpoint = serverFromString(self.reactor, self.config.listen)
        except (IndexError, KeyError) as e:
            # The systemd parser looks the inherited socket up at parse time.
            self._listening = defer.fail(
                ValueError("systemd passed no socket for %s (%s)" % (self.config.listen, e))
            )
        except Exception as e:
            self._listening = defer.fail(ValueError("%s: %s" % (self.config.listen, e)))
        else:
            self._listening = endpoint.listen(self.site)
        self._listening.addCallbacks(self._listened, self._cannot_listen)

    def startService(self) -> None:
        if self._listening is None:
            self.privilegedStartService()
        service.Service.startService(self)

    def _listened(self, port) -> None:
        self.port = port
        _log.info("llmhop listening on {address}", address=_describe_address(port.getHost()))
        sd_notify(b"READY=1")

    def _cannot_listen(self, failure) -> None:
        self.failed = True
        _log.error("llmhop cannot listen: {why}", why=failure.getErrorMessage())
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        sd_notify(b"STOPPING=1")
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        in_flight = len(self.site.in_flight)
        if in_flight:
            _log.info("waiting up to {grace}s for {n} request(s) to finish", grace=self.config.timeouts.shutdown, n=in_flight)
            drained = self.site.drained()
            timer = self.reactor.callLater(self.config.timeouts.shutdown, drained.cancel)
            try:
                yield drained
            except defer.CancelledError:
                _log.warn("cutting off {n} request(s) still running after the grace period", n=len(self.site.in_flight))
                for request in list(self.site.in_flight):
                    request.channel.transport.abortConnection()
            else:
                timer.cancel()
        yield self.site.pool.closeCachedConnections()


def _describe_address(address) -> str:
    if isinstance(address, IPv6Address):
        return "[%s]:%d" % (address.host, address.port)
    if isinstance(address, IPv4Address):
        return "%s:%d" % (address.host, address.port)
    name = getattr(address, "name", "?")
    return "unix:%s" % (name.decode("utf-8", "replace") if isinstance(name, bytes) else name,)


class Options(usage.Options):
    """``twistd llmhop`` options."""

    synopsis = "--config CONFIG.json"
    longdesc = "Route OpenAI-compatible requests by model to their backends (see README)."
    optParameters = [["config", "c", None, "Path to the JSON config file."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required")


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    return GatewayService(configlib.load_or_exit(options["config"]), reactor)
