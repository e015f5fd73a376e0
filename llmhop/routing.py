"""The routing table: model name → route, built from the config at load time.

Everything a forwarded request needs from the config is computed here once (URL
prefixes as bytes, the header names to replace, the Host header of every
replica), so the request path does a dict lookup and nothing else.  A route's
mutable state (requests in flight, the queue of its concurrency limit, which
replicas failed lately) lives in small objects that a reload hands over to the
new table, so that a SIGHUP neither forgets a failing replica nor lets twice
the limit through.
"""

from collections.abc import Mapping
from typing import Optional
from urllib.parse import urlsplit

import attrs
from prometheus_client import Gauge
from twisted.internet import defer
from twisted.python.failure import Failure

from llmhop import affinity
from llmhop.config import Config, HealthCheck, ModelConfig

# Agent needs an http URL; a unix-socket replica gets one with this made-up
# host, which the endpoint factory maps back to the socket.
_UNIX_HOST = b"llmhop-unix-%d"


@attrs.frozen
class Replica:
    url: str  # as configured, for logs
    # scheme://host[:port][/prefix], without a trailing slash: the request's
    # path and query are appended as they are.
    base_url: bytes
    # The Host header for this replica, as Agent would compute it.  Passing it
    # spares Agent a copy of the headers on every request.
    host: bytes
    socket: Optional[str] = None


@attrs.define(eq=False)
class ReplicaHealth:
    """Per process and replica URL: requests under way, and what is known of its health.

    Passive health: a replica whose connection failed is I{cooling} until
    C{failed_until}.  Active health (L{llmhop.health}): C{down} after
    C{failures} consecutive failed probes, up again after one success;
    before its first probe a replica counts as up.
    """

    UP, DOWN, COOLING = "up", "down", "cooling"

    in_flight: int = 0
    failed_until: float = 0.0
    down: bool = False
    failures: int = 0  # consecutive failed probes
    last_error: Optional[str] = None
    last_check: Optional[float] = None  # when the last probe ended (reactor time)

    def state(self, now: float) -> str:
        if self.down:
            return self.DOWN
        return self.COOLING if self.failed_until > now else self.UP


@attrs.define(eq=False)
class Limiter:
    """At most C{limit} requests at once; up to C{max_queued} more wait, first come first served.

    Twisted's DeferredSemaphore does the counting and the FIFO queue; a
    waiting request is its Deferred, and cancelling it (the client left)
    gives up the place.  This adds the bound on the queue.
    """

    limit: int
    max_queued: int
    semaphore: defer.DeferredSemaphore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.semaphore = defer.DeferredSemaphore(self.limit)

    @property
    def waiting(self) -> list:
        return self.semaphore.waiting

    def acquire(self) -> Optional[defer.Deferred]:
        """A Deferred that fires when the request may go; None when the queue is full."""
        if not self.semaphore.tokens and len(self.semaphore.waiting) >= self.max_queued:
            return None
        return self.semaphore.acquire()

    def release(self) -> None:
        self.semaphore.release()

    def admit(self, finished: defer.Deferred, waiting: Optional[Gauge] = None) -> Optional[defer.Deferred]:
        """A place for one request: a Deferred that fires when it may go; None when the queue is full.

        C{finished} is the request's C{notifyFinish()}.  Once through, the
        request's end lets the next one in; a client that leaves while
        waiting gives up its place (the Deferred is cancelled).  C{waiting}
        counts the requests in the queue.
        """
        turn = self.acquire()
        if turn is None:
            return None
        if not turn.called and waiting is not None:
            waiting.inc()
            turn.addBoth(_no_longer_waiting, waiting)
        finished.addErrback(_give_up_the_place, turn)
        turn.addCallback(self._through, finished)
        return turn

    def _through(self, result: object, finished: defer.Deferred) -> object:
        finished.addBoth(self._next_one_in)
        return result

    def _next_one_in(self, _: object) -> None:
        self.release()


def _no_longer_waiting(result: object, waiting: Gauge) -> object:
    waiting.dec()
    return result


def _give_up_the_place(reason: Failure, turn: defer.Deferred) -> None:
    """The client left: a place still waiting is given up (its turn is cancelled)."""
    if not turn.called:
        turn.cancel()


@attrs.define(eq=False)
class RouteState:
    limiter: Optional[Limiter] = None
    # Where the next tie between replicas starts: ties go round-robin.
    turn: int = 0
    # Requests of this route holding a replica now (the m of bounded load).
    in_flight: int = 0


@attrs.frozen
class Route:
    name: str  # the config's key: a model name, or a prefix pattern ending in *
    replicas: tuple[Replica, ...]
    health: tuple[ReplicaHealth, ...] = attrs.field(repr=False)
    # Values may hold API keys: keep them out of reprs, which land in logs.
    headers: tuple[tuple[bytes, bytes], ...] = attrs.field(repr=False)
    # Lower-cased names of C{headers}: the client's values for them are dropped.
    replaced: frozenset[bytes]
    state: RouteState = attrs.field(repr=False)
    upstream_model: Optional[str] = None
    strip: Optional[str] = None  # the prefix to take off the requested name
    unlisted: bool = False
    health_check: Optional[HealthCheck] = None
    retry_on: frozenset[int] = frozenset()
    fallbacks: tuple[str, ...] = ()  # route names, tried in order
    policy: str = "least-in-flight"
    affinity_bytes: int = 0
    affinity_header: bytes = b""
    # The replicas' base URLs, which rendezvous hashing scores: made once, not per pick.
    base_urls: tuple[bytes, ...] = attrs.field(repr=False, eq=False)

    @base_urls.default
    def _base_urls(self) -> tuple[bytes, ...]:
        return tuple(r.base_url for r in self.replicas)

    def forwarded_model(self, requested: str) -> Optional[str]:
        """The name to put in the forwarded body, or None to forward it as it is."""
        if self.upstream_model is not None:
            return None if self.upstream_model == requested else self.upstream_model
        if self.strip:
            return requested[len(self.strip) :]
        return None

    @property
    def all_down(self) -> bool:
        """Whether active health checks took every replica down."""
        return all(h.down for h in self.health)

    @property
    def retry_after(self) -> float:
        """When a route whose replicas are all down may be back: its next probe."""
        return self.health_check.interval if self.health_check is not None else 1.0

    def pick(self, now: float, tried: frozenset[int], key_digest: Optional[bytes] = None) -> Optional[int]:
        """The replica for the next attempt, or None when no untried one is up.

        Down replicas are never picked.  Replicas that failed within the
        cool-down are skipped, unless all the untried ones did: then the
        cool-down is ignored rather than answering 502 without trying.  With
        an affinity key (C{key_digest}), rendezvous hashing with bounded load
        decides (L{affinity.choose}); without one, the fewest requests in
        flight, ties in turn.
        """
        count = len(self.replicas)
        start = self.state.turn
        self.state.turn = (start + 1) % count
        health = self.health
        order = [i for i in ((start + k) % count for k in range(count)) if i not in tried and not health[i].down]
        if not order:
            return None
        healthy = [i for i in order if health[i].failed_until <= now] or order
        if key_digest is not None:
            up = sum(1 for h in health if not h.down)
            cap = affinity.bound(self.state.in_flight, up)
            return affinity.choose(key_digest, self.base_urls, [h.in_flight for h in health], healthy, cap)
        return min(healthy, key=lambda i: health[i].in_flight)


@attrs.frozen
class RoutingTable:
    routes: Mapping[str, Route]  # every route by its config key
    # The routes of exact names (keys not ending in *).
    exact: Mapping[str, Route]
    # Prefix routes, longest prefix first.
    prefixes: tuple[tuple[str, Route], ...]
    # Made-up host of each unix-socket replica → the socket's path.
    sockets: Mapping[bytes, str]

    @classmethod
    def from_config(cls, config: Config, previous: Optional["RoutingTable"] = None) -> "RoutingTable":
        sockets: dict[bytes, str] = {}
        health: dict[str, ReplicaHealth] = previous.replica_health() if previous is not None else {}
        routes = {}
        for name, model in config.models.items():
            old = previous.routes.get(name) if previous is not None else None
            routes[name] = _route(model, sockets, health, old)
        exact = {n: routes[n] for n, m in config.models.items() if m.prefix is None}
        prefixes = sorted(
            ((m.prefix, routes[n]) for n, m in config.models.items() if m.prefix is not None),
            key=lambda pair: -len(pair[0]),
        )
        return cls(routes, exact, tuple(prefixes), sockets)

    def lookup(self, model: str) -> Optional[Route]:
        """The exact name's route, else the longest matching prefix's."""
        route = self.exact.get(model)
        if route is not None:
            return route
        for prefix, route in self.prefixes:
            if model.startswith(prefix):
                return route
        return None

    def names(self) -> list[str]:
        """What /v1/models lists: exact names, not patterns, not unlisted ones."""
        return sorted(n for n, r in self.exact.items() if not r.unlisted)

    def fallbacks_of(self, route: Route) -> list[Route]:
        return [self.routes[name] for name in route.fallbacks]

    def replica_health(self) -> dict[str, ReplicaHealth]:
        return {r.url: h for route in self.routes.values() for r, h in zip(route.replicas, route.health)}


def _route(
    model: ModelConfig,
    sockets: dict[bytes, str],
    health: dict[str, ReplicaHealth],
    old: Optional[Route],
) -> Route:
    headers = tuple((n.encode("ascii"), v.encode("utf-8")) for n, v in model.headers)
    replicas = tuple(_replica(url, sockets) for url in model.urls)
    return Route(
        name=model.name,
        replicas=replicas,
        health=tuple(health.setdefault(url, ReplicaHealth()) for url in model.urls),
        headers=headers,
        replaced=frozenset(name.lower() for name, _ in headers),
        state=_state(model, old),
        upstream_model=model.upstream_model,
        strip=model.prefix if model.strip_prefix else None,
        unlisted=model.unlisted,
        health_check=model.health_check,
        retry_on=model.retry_on,
        fallbacks=model.fallbacks,
        policy=model.policy,
        affinity_bytes=model.affinity_bytes,
        affinity_header=model.affinity_header.encode("ascii"),
    )


def _state(model: ModelConfig, old: Optional[Route]) -> RouteState:
    """The old route's state if its limit is unchanged: queued and admitted requests keep counting."""
    if old is not None:
        limiter = old.state.limiter
        same = (limiter.limit, limiter.max_queued) if limiter else None
        if same == ((model.max_concurrent, model.max_queued) if model.max_concurrent else None):
            return old.state
    limiter = Limiter(model.max_concurrent, model.max_queued) if model.max_concurrent else None
    return RouteState(limiter=limiter)


def _replica(url: str, sockets: dict[bytes, str]) -> Replica:
    if url.startswith("unix:"):
        path, _, prefix = url[len("unix:") :].partition(":")
        host = next((h for h, p in sockets.items() if p == path), None)
        if host is None:
            host = _UNIX_HOST % (len(sockets),)
            sockets[host] = path
        return Replica(url=url, base_url=b"http://" + host + prefix.encode("ascii"), host=b"localhost", socket=path)
    return Replica(url=url, base_url=url.encode("ascii"), host=_host_header(url))


def _host_header(url: str) -> bytes:
    parts = urlsplit(url)
    host = parts.hostname or ""  # config.py refused URLs without one
    if ":" in host:
        host = "[%s]" % (host,)
    default = {"http": 80, "https": 443}[parts.scheme]
    if parts.port is None or parts.port == default:
        return host.encode("ascii")
    return ("%s:%d" % (host, parts.port)).encode("ascii")
