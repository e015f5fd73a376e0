"""Active health checks: each replica of a route with C{healthCheck} is probed (SPEC §6).

Inference servers load for minutes (llama.cpp's C{/health} answers 503 until
the model is in memory) and restart; passive health only notices a replica
that refuses connections.  A probe is a small C{GET} of the check's path on
the shared pool, with the model's injected headers; a replica is down after
C{failures} failed probes in a row and up again after one success, and
L{llmhop.routing.Route.pick} never picks a down replica.

One probe per replica at a time: the next one is scheduled when the last one
ended (answered, failed or timed out), so a hung backend holds one connection,
never a pile of them.  Probers are keyed by replica URL, like the
L{ReplicaHealth} they update, so a reload keeps them and what they learnt.
Without any C{healthCheck} in the config nothing here runs: no prober, no timer.
"""

from typing import Any, Optional

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from llmhop.client import describe_failure
from llmhop.config import HealthCheck
from llmhop.routing import ReplicaHealth, Route, RoutingTable

_log = Logger()

# A health answer's body is read (so the connection goes back to the pool)
# up to this much; a longer one is cut off, which fails nothing.
_BODY_LIMIT = 64 * 1024
USER_AGENT = b"llmhop-health-check"


class ProbeFailed(Exception):
    """The replica answered, with a status outside 200–299."""


@attrs.frozen
class Target:
    """What one prober sends, and to whom: compared on reload to keep or restart it."""

    url: bytes  # the replica's base URL followed by the check's path
    host: bytes
    check: HealthCheck
    headers: tuple[tuple[bytes, bytes], ...] = attrs.field(repr=False)  # may hold API keys
    name: str = attrs.field(eq=False)  # "route replica-url", for logs


@attrs.define(eq=False)
class Prober:
    """Probes one replica, again and again, and keeps its L{ReplicaHealth} up to date.

    @ivar _state: C{WAITING} (the next probe is C{_timer}), C{PROBING} (the
        probe under way is C{_probe}) or C{STOPPED} (final).
    """

    WAITING, PROBING, STOPPED = "WAITING", "PROBING", "STOPPED"

    target: Target
    health: ReplicaHealth
    agent: IAgent
    reactor: IReactorTime
    _state: str = WAITING
    _timer: Optional[IDelayedCall] = None
    _probe: Optional[defer.Deferred] = None
    _started: float = 0.0

    def start(self) -> None:
        """Probe at once: a replica counts as up only until its first probe."""
        self._timer = self.reactor.callLater(0, self._send)

    def stop(self) -> None:
        state, self._state = self._state, self.STOPPED
        if state == self.WAITING and self._timer is not None and self._timer.active():
            self._timer.cancel()
        elif state == self.PROBING and self._probe is not None:
            self._probe.cancel()

    def _send(self) -> None:
        self._timer = None
        self._state, self._started = self.PROBING, self.reactor.seconds()
        target = self.target
        headers = Headers({b"Host": [target.host], b"User-Agent": [USER_AGENT]})
        for name, value in target.headers:
            headers.setRawHeaders(name, [value])
        probe = defer.maybeDeferred(self.agent.request, b"GET", target.url, headers, None)
        probe.addCallback(_judge)
        probe.addTimeout(target.check.timeout, self.reactor)
        self._probe = probe
        probe.addCallbacks(self._passed, self._failed)
        probe.addBoth(self._ended)

    def _passed(self, _: object) -> None:
        health = self.health
        health.failures = 0
        if health.down:
            health.down = False
            _log.info("replica {name} is up again", name=self.target.name)

    def _failed(self, reason: Failure) -> None:
        if self._state == self.STOPPED:
            return
        health = self.health
        health.failures += 1
        health.last_error = _describe(reason, self.target.check.timeout)
        if not health.down and health.failures >= self.target.check.failures:
            health.down = True
            _log.warn(
                "replica {name} is down after {n} failed health checks: {why}",
                name=self.target.name,
                n=health.failures,
                why=health.last_error,
            )

    def _ended(self, _: object) -> None:
        self._probe = None
        if self._state == self.STOPPED:
            return
        now = self.reactor.seconds()
        self.health.last_check = now
        # Start to start, as the interval says; never two probes at once.
        delay = max(0.0, self.target.check.interval - (now - self._started))
        self._state, self._timer = self.WAITING, self.reactor.callLater(delay, self._send)


def _judge(response: IResponse) -> defer.Deferred:
    """Read (a bounded part of) the answer's body; fail the probe on a status outside 200–299."""
    drain = _Drain()
    response.deliverBody(drain)
    if 200 <= response.code <= 299:
        return drain.done
    return drain.done.addCallback(_refuse, response.code)


def _refuse(_: object, status: int) -> None:
    raise ProbeFailed("answered %d" % (status,))


class _Drain(Protocol):
    """Reads a health answer's body to its end (up to a bound), so the connection can be reused.

    C{done} fires at the end; cancelling it (the probe timed out) drops the
    connection.
    """

    transport: Any

    def __init__(self) -> None:
        self.done: defer.Deferred = defer.Deferred(self._abandon)
        self.seen = 0

    def dataReceived(self, data: bytes) -> None:
        self.seen += len(data)
        if self.seen > _BODY_LIMIT:
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)

    def _abandon(self, _: defer.Deferred) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


def _describe(reason: Failure, timeout: float) -> str:
    if reason.check(defer.TimeoutError, defer.CancelledError):
        return "no answer within %gs" % (timeout,)
    if reason.check(ProbeFailed):
        return str(reason.value)
    return describe_failure(reason)


def targets(routes: RoutingTable) -> dict[str, tuple[Target, ReplicaHealth]]:
    """Replica URL → what to probe, for every replica of a route with a health check.

    A replica listed by several routes with checks is probed once, with the
    settings of the first such route by name.
    """
    found: dict[str, tuple[Target, ReplicaHealth]] = {}
    for name in sorted(routes.routes):
        route = routes.routes[name]
        if route.health_check is None:
            continue
        for replica, health in zip(route.replicas, route.health):
            if replica.url not in found:
                found[replica.url] = (_target(route, replica.base_url, replica.host, replica.url), health)
    return found


def _target(route: Route, base_url: bytes, host: bytes, url: str) -> Target:
    assert route.health_check is not None
    check = route.health_check
    return Target(base_url + check.path.encode("ascii"), host, check, route.headers, "%s %s" % (route.name, url))


@attrs.define(eq=False)
class HealthChecks:
    """The probers of one process, matched to the routing table on start and on every reload."""

    reactor: IReactorTime
    probers: dict[str, Prober] = attrs.Factory(dict)

    def update(self, routes: RoutingTable, agent: IAgent) -> None:
        """Probe what C{routes} asks for: new replicas start, gone ones stop, changed ones restart."""
        wanted = targets(routes)
        for url, prober in list(self.probers.items()):
            if url not in wanted or wanted[url][0] != prober.target:
                prober.stop()
                del self.probers[url]
                if url not in wanted:
                    # No longer checked: what the checks said no longer holds.
                    prober.health.down, prober.health.failures = False, 0
        for url, (target, health) in wanted.items():
            running = self.probers.get(url)
            if running is not None:
                running.agent = agent  # the reloaded gateway's
                continue
            self.probers[url] = Prober(target, health, agent, self.reactor)
            self.probers[url].start()

    def stop(self) -> None:
        for prober in self.probers.values():
            prober.stop()
        self.probers.clear()
