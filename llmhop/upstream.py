"""The request as a backend gets it, and the one place that sends it (SPEC §2.5, §5, §7).

Its headers (hop-by-hop fields, credentials and header twins dropped; the
X-Forwarded-* fields and the request ID set), its body as a producer that
writes in slices as the backend connection drains, and L{Upstream}, which
every forwarded request shares: the agent on the shared pool, the timeouts,
the metrics.  How a send failed (L{failure_kind}, L{not_sent}) decides
whether another replica may have the request (L{llmhop.attempts}).
"""

from typing import TYPE_CHECKING, Optional, Union

import attrs
from OpenSSL import SSL
from twisted.internet import defer, error as neterror
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from llmhop.auth import CREDENTIAL_HEADERS
from llmhop.client import inner_failures
from llmhop.metrics import Metrics
from llmhop.requestid import REQUEST_ID_HEADER
from llmhop.routing import Route
from llmhop.tracing import Tracing

if TYPE_CHECKING:
    from llmhop.site import GatewayRequest

# RFC 9110 §7.6.1: hop-by-hop fields are for one connection only.  Host and
# Content-Length are recomputed for the backend connection; Expect was dealt
# with here; the credential headers (when llmhop checks tokens) carry the
# gateway's credential, not the backend's (SPEC §7).
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    # Set from request_id (the client's, when fair): its twins never pass.
    b"x-request-id",
}
# SPEC §5, header twins: some servers (CGI/WSGI-style environments, some
# frameworks) read "X_Forwarded_For" as "X-Forwarded-For", so each check
# below is made on the name with _ read as -, and a client header that is
# the twin of one llmhop sets or removes itself is dropped, as nginx drops
# underscore names by default.  X-Forwarded-For itself is extended, so only
# its twin is dropped.
_TWIN_ONLY = b"x-forwarded-for"


def connection_tokens(headers: Headers) -> frozenset:
    values = headers.getRawHeaders(b"connection") or ()
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


def hop_by_hop(name: bytes, named: frozenset) -> bool:
    return name in _HOP_BY_HOP or name in named or name.startswith(b"proxy-")


def upstream_headers(request: "GatewayRequest", route: Route, strip_credentials: bool) -> Headers:
    """The headers to send to C{route}'s backend for the client's C{request} (Host is set per replica)."""
    incoming = request.requestHeaders
    named = connection_tokens(incoming)
    # First, as clients send it; each attempt sets its replica's value in place.
    out = Headers({b"Host": [route.replicas[0].host]})
    for name, values in incoming.getAllRawHeaders():
        lower = name.lower()
        # As a backend may read it: an underscore twin counts as the name itself.
        key = lower.replace(b"_", b"-") if b"_" in lower else lower
        if key in _NOT_FORWARDED or hop_by_hop(key, named) or key in route.replaced:
            continue
        if (strip_credentials and key in CREDENTIAL_HEADERS) or (key == _TWIN_ONLY and key != lower):
            continue
        out.setRawHeaders(name, values)
    host = request.client_host
    if host is not None:
        chain = incoming.getRawHeaders(b"x-forwarded-for")
        ip = host.encode("ascii")
        out.setRawHeaders(b"X-Forwarded-For", [b", ".join([*chain, ip]) if chain else ip])
    out.setRawHeaders(b"X-Forwarded-Proto", [b"https" if request.isSecure() else b"http"])
    out.setRawHeaders(REQUEST_ID_HEADER, [request.request_id])
    client_host = incoming.getRawHeaders(b"host")
    if client_host:
        out.setRawHeaders(b"X-Forwarded-Host", client_host[:1])
    for name, value in route.headers:
        out.setRawHeaders(name, [value])
    return out


@implementer(IBodyProducer)
class BodyProducer:
    """The buffered request body, written in slices as the backend connection drains.

    One write of a 100 MiB body would make the transport copy all of it in
    one reactor turn; slices bound that work and the memory in flight.
    """

    SLICE = 256 * 1024

    def __init__(self, body: Union[bytes, bytearray]) -> None:
        self._body = memoryview(body)
        self.length = len(body)
        self._sent = 0
        self._paused = False
        self._consumer: Optional[IConsumer] = None
        self._done: Optional[defer.Deferred[None]] = None

    def startProducing(self, consumer: IConsumer) -> "defer.Deferred[None]":
        self._consumer = consumer
        done: defer.Deferred[None] = defer.Deferred()
        self._done = done
        self._write(consumer)
        return done

    def _write(self, consumer: IConsumer) -> None:
        while not self._paused and self._sent < self.length and self._done is not None:
            piece = bytes(self._body[self._sent : self._sent + self.SLICE])
            self._sent += len(piece)
            consumer.write(piece)
        if self._sent >= self.length and self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._consumer is not None:
            self._write(self._consumer)

    def stopProducing(self) -> None:
        # The request failed mid-upload; the Deferred must not fire.
        self._done = None


@attrs.define
class Upstream:
    """What every forwarded request shares: the agent, the timeouts, the metrics."""

    agent: IAgent
    reactor: IReactorTime
    response_timeout: float
    read_timeout: float
    strip_credentials: bool
    cooldown: float = 10.0
    metrics: Optional[Metrics] = None
    tracing: Optional[Tracing] = None

    def send(self, request: "GatewayRequest", url: bytes, host: bytes, headers: Headers) -> defer.Deferred:
        headers.setRawHeaders(b"Host", [host])
        body = BodyProducer(request.body) if request.body or request.method not in (b"GET", b"HEAD") else None
        target = request.uri if request.forward_target is None else request.forward_target
        return defer.maybeDeferred(self.agent.request, request.method, url + target, headers, body)

    def failed(self, route: Route, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.upstream_failed(route.name, kind)

    def in_flight(self, route: Route, change: int) -> None:
        if self.metrics is not None:
            self.metrics.route_gauges(route.name)[0].inc(change)


def failure_kind(reason: Failure) -> str:
    """Why the backend gave no response head: timeout, tls, refused or bad-response."""
    inner = inner_failures(reason)
    if reason.check(defer.TimeoutError) or any(f.check(neterror.TimeoutError) for f in inner):
        return "timeout"
    if any(f.check(SSL.Error) for f in inner):
        return "tls"
    if reason.check(ResponseFailed):
        return "bad-response"
    return "refused"


def not_sent(reason: Failure) -> bool:
    """Whether the attempt failed before any byte of the request reached the backend.

    True when the connection could not be made (refused, unreachable, no such
    socket, DNS, connect timeout) or its TLS handshake failed; then another
    replica may have the request.  A failure after that (the connection broke
    while sending, or no answer came) might have left the request with the
    backend, and is not retried.
    """
    if reason.check(neterror.ConnectError, neterror.DNSLookupError):
        return True
    inner = inner_failures(reason)
    return inner is not None and all(f.check(SSL.Error) for f in inner)
