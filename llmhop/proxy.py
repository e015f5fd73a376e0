"""Forwarding one request to its backend and relaying the answer (SPEC §2.5–§2.7).

The answer is relayed as it arrives: status and headers as soon as the backend
sends them, each body chunk as soon as it is read, so server-sent events reach
the client without added delay.  Backpressure runs from the client socket to
the backend socket: the client's connection pauses the backend response's
transport when its write buffer fills, so a slow reader holds a bounded amount
of memory here.  A client that leaves cancels the backend request at once
(before headers: the request Deferred; after: the response's transport), which
closes the backend connection so the inference server stops generating.
"""

from typing import Optional

import attrs
from OpenSSL import SSL
from twisted.internet import defer, error as neterror
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, UNKNOWN_LENGTH
from zope.interface import implementer

from llmhop import errors
from llmhop.accesslog import Outcome
from llmhop.routing import Route

_log = Logger()

# RFC 9110 §7.6.1: hop-by-hop fields are for one connection only.  Host and
# Content-Length are recomputed for the backend connection; Expect was dealt
# with here; Authorization (when llmhop checks tokens) is the gateway's
# credential, not the backend's.
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
_NOT_FORWARDED = _HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-forwarded-proto", b"x-forwarded-host"}
# SPEC §5, header twins: some servers (CGI/WSGI-style environments, some
# frameworks) read "X_Forwarded_For" as "X-Forwarded-For", so each check
# below is made on the name with _ read as -, and a client header that is
# the twin of one llmhop sets or removes itself is dropped, as nginx drops
# underscore names by default.  X-Forwarded-For itself is extended, so only
# its twin is dropped.
_TWIN_ONLY = b"x-forwarded-for"


def _connection_tokens(headers: Headers) -> frozenset:
    values = headers.getRawHeaders(b"connection") or ()
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


def _hop_by_hop(name: bytes, named: frozenset) -> bool:
    return name in _HOP_BY_HOP or name in named or name.startswith(b"proxy-")


def upstream_headers(request, route: Route, strip_authorization: bool) -> Headers:
    """The headers to send to C{route}'s backend for the client's C{request} (Host is set per replica)."""
    incoming = request.requestHeaders
    named = _connection_tokens(incoming)
    # First, as clients send it; each attempt sets its replica's value in place.
    out = Headers({b"Host": [route.replicas[0].host]})
    for name, values in incoming.getAllRawHeaders():
        lower = name.lower()
        # As a backend may read it: an underscore twin counts as the name itself.
        key = lower.replace(b"_", b"-") if b"_" in lower else lower
        if key in _NOT_FORWARDED or _hop_by_hop(key, named) or key in route.replaced:
            continue
        if (strip_authorization and key == b"authorization") or (key == _TWIN_ONLY and key != lower):
            continue
        out.setRawHeaders(name, values)
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    if host is not None:
        chain = incoming.getRawHeaders(b"x-forwarded-for")
        ip = host.encode("ascii")
        out.setRawHeaders(b"X-Forwarded-For", [b", ".join(chain + [ip]) if chain else ip])
    out.setRawHeaders(b"X-Forwarded-Proto", [b"https" if request.isSecure() else b"http"])
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

    def __init__(self, body) -> None:
        self._body = memoryview(body)
        self.length = len(body)
        self._sent = 0
        self._paused = False
        self._consumer = None
        self._done: Optional[defer.Deferred] = None

    def startProducing(self, consumer) -> defer.Deferred:
        self._consumer = consumer
        self._done = done = defer.Deferred()
        self._write()
        return done

    def _write(self) -> None:
        while not self._paused and self._sent < self.length and self._done is not None:
            piece = bytes(self._body[self._sent : self._sent + self.SLICE])
            self._sent += len(piece)
            self._consumer.write(piece)
        if self._sent >= self.length and self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._write()

    def stopProducing(self) -> None:
        # The request failed mid-upload; the Deferred must not fire.
        self._done = None


@attrs.define
class Upstream:
    """What every forwarded request shares: the agent, the timeouts, the metrics."""

    agent: object
    reactor: object
    response_timeout: float
    read_timeout: float
    strip_authorization: bool
    cooldown: float = 10.0
    metrics: object = None

    def forward(self, request, route: Route) -> None:
        headers = upstream_headers(request, route, self.strip_authorization)
        exchange = Exchange(request, route, self, headers)
        exchange.start(self.reactor.callLater(self.response_timeout, exchange.timed_out))

    def send(self, request, url: bytes, host: bytes, headers: Headers) -> defer.Deferred:
        headers.setRawHeaders(b"Host", [host])
        body = BodyProducer(request.body) if request.body or request.method not in (b"GET", b"HEAD") else None
        return defer.maybeDeferred(self.agent.request, request.method, url + request.uri, headers, body)

    def failed(self, route: Route, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.upstream_failed(route.name, kind)

    def in_flight(self, route: Route, change: int) -> None:
        if self.metrics is not None:
            self.metrics.route_gauges(route.name)[0].inc(change)


@implementer(IPushProducer)
@attrs.define(eq=False)
class Exchange:
    """One request forwarded: tries replicas until one answers, then relays the body."""

    request: object
    route: Route
    upstream: Upstream
    headers: Headers
    _pending: Optional[defer.Deferred] = None
    _timer: object = None
    _body: Optional["_Relay"] = None
    _timed_out: bool = False
    _client_gone: bool = False
    _tried: frozenset = frozenset()
    _replica: Optional[int] = None

    @property
    def model(self) -> str:
        return self.request.model or self.route.name

    @property
    def reactor(self):
        return self.upstream.reactor

    @property
    def read_timeout(self) -> float:
        return self.upstream.read_timeout

    def start(self, timer) -> None:
        self._timer = timer
        self.upstream.in_flight(self.route, 1)
        finished = self.request.notifyFinish()
        finished.addErrback(self._client_left)
        finished.addBoth(self._ended)
        self._attempt()

    def _attempt(self) -> None:
        index = self.route.pick(self.reactor.seconds(), self._tried)
        self._tried |= {index}
        self._replica = index
        self.route.health[index].in_flight += 1
        replica = self.route.replicas[index]
        self._pending = self.upstream.send(self.request, replica.base_url, replica.host, self.headers)
        self._pending.addCallbacks(self._got_response, self._failed)

    def _leave_replica(self) -> None:
        if self._replica is not None:
            self.route.health[self._replica].in_flight -= 1
            self._replica = None

    def _ended(self, _) -> None:
        self.upstream.in_flight(self.route, -1)
        self._leave_replica()

    def timed_out(self) -> None:
        self._timed_out = True
        if self._pending is not None:
            self._pending.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._pending = self._timer = None

    def _client_left(self, reason: Failure) -> None:
        self._client_gone = True
        if self._pending is not None:
            self._pending.cancel()
        elif self._body is not None:
            self._body.stop()

    def _failed(self, reason: Failure) -> None:
        self._pending = None
        if self._client_gone:
            self._stop_timer()
            return
        kind = _failure_kind(reason, self._timed_out)
        self.upstream.failed(self.route, kind)
        if not self._timed_out and _not_sent(reason) and self._replica is not None:
            # Passive health: avoid this replica for a while.  Nothing of the
            # request reached it, so the next one may have it.
            replica = self.route.replicas[self._replica]
            self.route.health[self._replica].failed_until = self.reactor.seconds() + self.upstream.cooldown
            self._leave_replica()
            if len(self._tried) < len(self.route.replicas):
                _log.info(
                    "replica {url} of model {model} failed, trying another: {why}",
                    url=replica.url,
                    model=self.route.name,
                    why=_describe(reason),
                )
                self._attempt()
                return
        self._stop_timer()
        self.request.outcome = Outcome.upstream_failed(kind)
        errors.respond(self.request, _failure_error(reason, self._timed_out, self.model))
        _log.info(
            "backend for model {model} failed: {why}",
            model=self.model,
            why=_describe(reason),
        )

    def _got_response(self, response) -> None:
        self._stop_timer()
        if self._replica is not None:
            self.route.health[self._replica].failed_until = 0.0
        relay = _Relay(self)
        if self._client_gone:
            relay.discard = True
        else:
            self._send_head(response)
            self._body = relay
        response.deliverBody(relay)

    def _send_head(self, response) -> None:
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        named = _connection_tokens(response.headers)
        out = request.responseHeaders
        # twisted.web adds these to every response; a relayed one carries
        # only what the backend sent (SPEC §5).
        out.removeHeader(b"server")
        out.removeHeader(b"date")
        for name, values in response.headers.getAllRawHeaders():
            if not _hop_by_hop(name.lower(), named):
                out.setRawHeaders(name, values)
        if response.length is not UNKNOWN_LENGTH and request.method != b"HEAD":
            out.setRawHeaders(b"Content-Length", [b"%d" % (response.length,)])

    def stalled(self) -> None:
        """The backend went silent mid-response: give up on both sides."""
        relay, self._body = self._body, None
        if relay is None or self._client_gone:
            return
        relay.stop()
        self.upstream.failed(self.route, "stalled")
        self.request.outcome = Outcome.UPSTREAM_STALLED
        _log.info("backend for model {model} sent nothing for {t}s mid-response", model=self.model, t=self.read_timeout)
        self.request.unregisterProducer()
        self.request.channel.transport.abortConnection()

    def body_finished(self, reason: Failure) -> None:
        request = self.request
        self._body = None
        if self._client_gone:
            return
        request.unregisterProducer()
        if reason.check(ResponseDone, http.PotentialDataLoss):
            request.finish()
            return
        # The backend died mid-response.  Finishing would tell the client the
        # answer was complete; only an aborted connection says it was not.
        self.upstream.failed(self.route, "died")
        request.outcome = Outcome.UPSTREAM_DIED
        _log.info("backend for model {model} died mid-response: {why}", model=self.model, why=_describe(reason))
        request.channel.transport.abortConnection()

    # IPushProducer on behalf of the backend response, registered with the
    # client's request: the client connection pauses and resumes the backend.
    def pauseProducing(self) -> None:
        if self._body is not None:
            self._body.pause()

    def resumeProducing(self) -> None:
        if self._body is not None:
            self._body.resume()

    def stopProducing(self) -> None:
        if self._body is not None:
            self._body.stop()


class _Relay(Protocol):
    """Receives the backend's response body and writes it to the client.

    A watchdog notices a backend that goes silent mid-response; it is off
    while the client's backpressure holds the backend paused, since silence
    is then our doing.
    """

    discard = False
    _watchdog = None

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self._last = 0.0

    def connectionMade(self) -> None:
        if self.discard:
            self.transport.stopProducing()
            return
        self.exchange.request.registerProducer(self.exchange, True)
        self._watch()

    def dataReceived(self, data: bytes) -> None:
        if not self.discard:
            self._last = self.exchange.reactor.seconds()
            self.exchange.request.write(data)

    def connectionLost(self, reason: Failure) -> None:
        self._unwatch()
        if not self.discard:
            self.exchange.body_finished(reason)

    def pause(self) -> None:
        self._unwatch()
        self.transport.pauseProducing()

    def resume(self) -> None:
        self.transport.resumeProducing()
        self._watch()

    def stop(self) -> None:
        self._unwatch()
        self.discard = True
        self.transport.stopProducing()

    def _watch(self) -> None:
        self._last = self.exchange.reactor.seconds()
        if self._watchdog is None:
            self._watchdog = self.exchange.reactor.callLater(self.exchange.read_timeout, self._check)

    def _unwatch(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _check(self) -> None:
        self._watchdog = None
        silent = self.exchange.reactor.seconds() - self._last
        if silent >= self.exchange.read_timeout:
            self.exchange.stalled()
        else:
            self._watchdog = self.exchange.reactor.callLater(self.exchange.read_timeout - silent, self._check)


def _failure_kind(reason: Failure, timed_out: bool) -> str:
    """Why the backend gave no response head: timeout, tls, refused or bad-response."""
    inner = _inner(reason)
    if timed_out or any(f.check(neterror.TimeoutError) for f in inner):
        return "timeout"
    if any(f.check(SSL.Error) for f in inner):
        return "tls"
    if reason.check(ResponseFailed):
        return "bad-response"
    return "refused"


def _not_sent(reason: Failure) -> bool:
    """Whether the attempt failed before any byte of the request reached the backend.

    True when the connection could not be made (refused, unreachable, no such
    socket, DNS, connect timeout) or its TLS handshake failed; then another
    replica may have the request.  A failure after that (the connection broke
    while sending, or no answer came) might have left the request with the
    backend, and is not retried.
    """
    if reason.check(neterror.ConnectError, neterror.DNSLookupError):
        return True
    inner = _inner(reason)
    return inner is not None and all(f.check(SSL.Error) for f in inner)


def _failure_error(reason: Failure, timed_out: bool, model: str) -> errors.ApiError:
    kind = _failure_kind(reason, timed_out)
    if kind == "timeout":
        return errors.upstream_timeout(model)
    if kind == "bad-response":
        return errors.upstream_bad_response(model)
    return errors.upstream_unreachable(model)


def _inner(reason: Failure):
    """The failures a ResponseNeverReceived/RequestTransmissionFailed wraps."""
    return getattr(reason.value, "reasons", None) or [reason]


def _describe(reason: Failure) -> str:
    return "; ".join("%s: %s" % (f.type.__name__, f.getErrorMessage()) for f in _inner(reason))
