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

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import attrs
from OpenSSL import SSL
from twisted.internet import defer, error as neterror
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from llmhop import errors, usage
from llmhop.accesslog import Outcome
from llmhop.auth import CREDENTIAL_HEADERS
from llmhop.client import describe_failure, inner_failures
from llmhop.extract import media_type, renamed
from llmhop.metrics import Metrics
from llmhop.requestid import REQUEST_ID_HEADER
from llmhop.routing import Route
from llmhop.tracing import AttemptSpan, Tracing

if TYPE_CHECKING:
    from llmhop.site import GatewayRequest

_log = Logger()

# On an answer from a fallback route: which one (SPEC §6).
FALLBACK_HEADER = b"X-Llmhop-Fallback"

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


def _connection_tokens(headers: Headers) -> frozenset:
    values = headers.getRawHeaders(b"connection") or ()
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


def _hop_by_hop(name: bytes, named: frozenset) -> bool:
    return name in _HOP_BY_HOP or name in named or name.startswith(b"proxy-")


def upstream_headers(request: "GatewayRequest", route: Route, strip_credentials: bool) -> Headers:
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

    def forward(
        self,
        request: "GatewayRequest",
        route: Route,
        fallbacks: Sequence[Route] = (),
        keys: Optional[Mapping[str, bytes]] = None,
    ) -> None:
        """Send C{request} to C{route} (then to C{fallbacks}), with the affinity C{keys} per route name."""
        headers = upstream_headers(request, route, self.strip_credentials)
        Exchange(request, route, self, headers, list(fallbacks), keys or {}).start()

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


@attrs.define(eq=False)
class Attempts:
    """The route's replicas, then its fallbacks', tried in turn until one answers: L{send} is the whole loop.

    A replica that could not be reached (nothing of the request was sent)
    is avoided for C{upstream.cooldown} seconds and the next one is tried; a
    replica answering one of the route's C{retryOn} statuses has its answer
    discarded (nothing of it reached the client) and the next one is tried,
    unless none is left: then that answer is the answer.  When the route has
    no replica left to try, its C{fallbacks} are tried in order, the body
    naming each one's model (SPEC §6).  Any other failure is the answer.
    Cancelling the Deferred cancels the step under way.

    @ivar _state: C{TRYING} while an attempt (or a fallback's body rename)
        is under way (C{_pending}), C{DONE} once a replica answered, the
        last one failed or the loop was cancelled.
    @ivar route: the route tried now: the request's, or a fallback.
    @ivar replica: the index (in C{route}) of the replica tried last; the
        caller gives its in-flight count back (L{leave_replica}).
    @ivar fallbacks: the routes still to try after C{route}, in order.
    @ivar keys: route name → the request's affinity key digest under that
        route's policy (absent: least-in-flight).
    """

    TRYING, DONE = "TRYING", "DONE"

    request: "GatewayRequest"
    route: Route
    upstream: Upstream
    headers: Headers
    fallbacks: list[Route] = attrs.Factory(list)
    keys: Mapping[str, bytes] = attrs.Factory(dict)
    replica: Optional[int] = None
    _state: str = TRYING
    _tried: frozenset[int] = frozenset()
    _pending: Optional[defer.Deferred] = None
    _result: Optional[defer.Deferred] = None
    # The longest health-check interval among the routes tried: Retry-After.
    _retry_after: float = 0.0
    _primary: Optional[Route] = None
    # The OpenTelemetry span of the attempt under way, when tracing.
    _span: Optional[AttemptSpan] = None

    def send(self) -> defer.Deferred:
        """Fires with the first answer (an L{IResponse}), or fails with the last attempt's failure.

        L{errors.Unavailable} when no route had a replica up.
        """
        self._result = defer.Deferred(self._cancel)
        self._primary = self.route
        self._next()
        return self._result

    @property
    def fell_back(self) -> bool:
        """Whether the route tried now is a fallback."""
        return self.route is not self._primary

    def _next(self) -> None:
        """The next replica of the route, else the next fallback route, else the end: every route is down."""
        self._retry_after = max(self._retry_after, self.route.retry_after)
        index = self.route.pick(self.upstream.reactor.seconds(), self._tried, self.keys.get(self.route.name))
        if index is not None:
            self._attempt(index)
        elif self.fallbacks:
            self._fall_back()
        else:
            self._end(Failure(errors.Unavailable(max(1, math.ceil(self._retry_after)))))

    def _attempt(self, index: int) -> None:
        self._tried |= {index}
        self.replica = index
        self.route.health[index].in_flight += 1
        self.route.state.in_flight += 1
        replica = self.route.replicas[index]
        if self.request.span is not None:
            self._span = self.request.span.attempt(replica.url, replica.host, self.headers)
        self._pending = self.upstream.send(self.request, replica.base_url, replica.host, self.headers)
        self._pending.addCallbacks(self._answered, self._failed)

    def _can_go_on(self) -> bool:
        """Whether an untried replica that is up is left, here or in a fallback route."""
        route, tried = self.route, self._tried
        if any(i not in tried and not h.down for i, h in enumerate(route.health)):
            return True
        return any(not fallback.all_down for fallback in self.fallbacks)

    def _answered(self, response: IResponse) -> None:
        self._pending = None
        assert self.replica is not None
        health = self.route.health[self.replica]
        health.failed_until = 0.0
        self._span_ends(response.code)
        if response.code in self.route.retry_on and self._can_go_on():
            # Refused (full, loading): nothing of this answer reached the
            # client, so another replica may have the request.
            health.last_error = "answered %d" % (response.code,)
            _discard(response)
            self._move_on("status-%d" % (response.code,), "it answered %d" % (response.code,))
            return
        self._state = self.DONE
        self.request.replica = self.route.replicas[self.replica].url
        assert self._result is not None
        self._result.callback(response)

    def _failed(self, reason: Failure) -> None:
        self._pending = None
        self._span_ends(_failure_kind(reason))
        if self._state == self.DONE:
            return  # cancelled: the result has its CancelledError already
        if _not_sent(reason) and self.replica is not None:
            # Passive health: avoid this replica for a while.  Nothing of the
            # request reached it, so the next one may have it.
            health = self.route.health[self.replica]
            health.failed_until = self.upstream.reactor.seconds() + self.upstream.cooldown
            health.last_error = describe_failure(reason)
            if self._can_go_on():
                self._move_on(_failure_kind(reason), describe_failure(reason))
                return
        self._end(reason)

    def _move_on(self, kind: str, why: str) -> None:
        assert self.replica is not None
        url = self.route.replicas[self.replica].url
        self.leave_replica()
        self.upstream.failed(self.route, kind)
        _log.info(
            "replica {url} of model {model} failed, trying another: {why}", url=url, model=self.route.name, why=why
        )
        self._next()

    def _span_ends(self, answer: Union[int, str]) -> None:
        """The attempt's span ends: with the backend's status, or why there was none."""
        span, self._span = self._span, None
        if span is None:
            return
        if isinstance(answer, int):
            span.answered(answer)
        else:
            span.failed(answer)

    def _fall_back(self) -> None:
        """Move on to the next fallback route: its headers, and the body naming its model."""
        route = self.fallbacks.pop(0)
        self.upstream.in_flight(self.route, -1)
        self.upstream.in_flight(route, 1)
        self.route, self._tried = route, frozenset()
        self.request.route = self.request.fallback = route.name
        _log.info("model {model}: falling back to {route}", model=self.request.model, route=route.name)
        body = renamed(self.request.body, self.request.getHeader(b"content-type"), route.upstream_model or route.name)
        if isinstance(body, defer.Deferred):
            self._pending = body
            body.addCallbacks(self._renamed, self._rename_failed)
        else:
            self._renamed(body)

    def _renamed(self, body: bytes) -> None:
        self._pending = None
        self.request.body = body
        self.headers = upstream_headers(self.request, self.route, self.upstream.strip_credentials)
        self._next()

    def _rename_failed(self, reason: Failure) -> None:
        self._pending = None
        if self._state != self.DONE:
            self._end(reason)

    def _end(self, reason: Failure) -> None:
        self._state = self.DONE
        assert self._result is not None
        self._result.errback(reason)

    def _cancel(self, result: defer.Deferred) -> None:
        self._span_ends("cancelled")
        self._state = self.DONE
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def leave_replica(self) -> None:
        """Give back the in-flight count of the replica tried last (once)."""
        if self.replica is not None:
            self.route.health[self.replica].in_flight -= 1
            self.route.state.in_flight -= 1
            self.replica = None


class _Discard(Protocol):
    """Takes a refused answer's body and drops the connection: a retry must not wait for it."""

    transport: Any

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def _discard(response: IResponse) -> None:
    response.deliverBody(_Discard())


@attrs.define(eq=False)
class Exchange:
    """One request forwarded: L{Attempts} until a replica answers, then its answer relayed.

    @ivar _state: one of
        - C{SENDING}: the replicas are tried (C{_attempts}; C{_sending} under
          the response timeout);
        - C{RELAYING}: the answer's status and headers are the client's, its
          body is relayed by C{_relay}, which the client's connection pauses;
        - C{DONE}: answered (relayed to the end, or an error of llmhop's own),
          failed mid-body, or abandoned because the client left.  Final.
    """

    SENDING, RELAYING, DONE = "SENDING", "RELAYING", "DONE"

    request: "GatewayRequest"
    route: Route
    upstream: Upstream
    headers: Headers
    fallbacks: list[Route] = attrs.Factory(list)
    keys: Mapping[str, bytes] = attrs.Factory(dict)
    _state: str = SENDING
    _attempts: Optional[Attempts] = None
    _sending: Optional[defer.Deferred] = None
    _relay: Optional["_Relay"] = None
    # The answer is a stream of server-sent events (its usage is in the last data event).
    _streamed: bool = False

    @property
    def model(self) -> str:
        return self.request.model or self.route.name

    def start(self) -> None:
        self.upstream.in_flight(self.route, 1)
        finished = self.request.notifyFinish()
        finished.addErrback(self._client_left)
        finished.addBoth(self._ended)
        self._attempts = Attempts(self.request, self.route, self.upstream, self.headers, self.fallbacks, self.keys)
        self._sending = self._attempts.send()
        self._sending.addTimeout(self.upstream.response_timeout, self.upstream.reactor)
        self._sending.addCallbacks(self._answered, self._failed)

    def _ended(self, _: object) -> None:
        attempts = self._attempts
        self.upstream.in_flight(self.route if attempts is None else attempts.route, -1)
        if attempts is not None:
            attempts.leave_replica()

    def _client_left(self, reason: Failure) -> None:
        state, self._state = self._state, self.DONE
        if state == self.SENDING and self._sending is not None:
            self._sending.cancel()
        elif state == self.RELAYING and self._relay is not None:
            self._relay.stopProducing()

    def _failed(self, reason: Failure) -> None:
        self._sending = None
        if self._state != self.SENDING:
            return  # the client left
        self._state = self.DONE
        if reason.check(errors.Unavailable):
            self.request.outcome = Outcome.UNAVAILABLE
            errors.respond(self.request, errors.model_unavailable(self.model, reason.value.retry_after))
            return
        kind = _failure_kind(reason)
        self.upstream.failed(self.route, kind)
        self.request.outcome = Outcome.upstream_failed(kind)
        errors.respond(self.request, _failure_error(kind, self.model))
        _log.info("backend for model {model} failed: {why}", model=self.model, why=describe_failure(reason))

    def _answered(self, response: IResponse) -> None:
        self._sending = None
        relay = _Relay(self)
        if self._state != self.SENDING:
            relay.discard = True  # the client left as the answer came
        else:
            self._state, self._relay = self.RELAYING, relay
            self._send_head(response)
            relay.tail = self._tail_for(response)
            if self._attempts is not None and self._attempts.fell_back:
                self.request.responseHeaders.setRawHeaders(FALLBACK_HEADER, [self._attempts.route.name.encode("utf-8")])
        response.deliverBody(relay)

    def _send_head(self, response: IResponse) -> None:
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        named = _connection_tokens(response.headers)
        out = request.responseHeaders
        # twisted.web adds these to every response; a relayed one carries
        # only what the backend sent (SPEC §5).
        out.removeHeader(b"server")
        out.removeHeader(b"date")
        for name, values in response.headers.getAllRawHeaders():
            lower = name.lower()
            # CORS is the gateway's policy, not the backend's (llmhop.cors).
            if not _hop_by_hop(lower, named) and not lower.startswith(b"access-control-"):
                out.setRawHeaders(name, values)
        if response.length is not UNKNOWN_LENGTH and request.method != b"HEAD":
            out.setRawHeaders(b"Content-Length", [b"%d" % (response.length,)])

    def _tail_for(self, response: IResponse) -> Optional[usage.Tail]:
        """Where the answer's last bytes are kept, when they may report token usage (SPEC §8)."""
        wanted = self.upstream.metrics is not None or self.request.span is not None
        if not wanted or not 200 <= response.code < 300:
            return None
        values = response.headers.getRawHeaders(b"content-type")
        kind = media_type(values[0]) if values else b""
        if kind == b"text/event-stream":
            self._streamed = True
        elif kind != b"application/json":
            return None
        return usage.Tail()

    def _count_usage(self, tail: usage.Tail) -> None:
        metrics = self.upstream.metrics
        found = usage.read(tail, self._streamed)
        if found is None:
            return
        request = self.request
        if request.span is not None:
            request.span.usage(found.prompt, found.completion)
        if metrics is None:
            return
        per_token = None
        if self._streamed and found.completion and request.first_byte is not None:
            per_token = (time.monotonic() - request.first_byte) / found.completion
        metrics.tokens_used(
            request.route or self.route.name, request.token_name, found.prompt, found.completion, per_token
        )

    def stalled(self) -> None:
        """The backend went silent mid-response: give up on both sides."""
        if self._state != self.RELAYING:
            return
        self._state, self._relay = self.DONE, None
        self.upstream.failed(self.route, "stalled")
        self.request.outcome = Outcome.UPSTREAM_STALLED
        _log.info(
            "backend for model {model} sent nothing for {t}s mid-response",
            model=self.model,
            t=self.upstream.read_timeout,
        )
        self.request.unregisterProducer()
        self.request.channel.transport.abortConnection()

    def body_finished(self, reason: Failure) -> None:
        """The relayed body ended: complete, or cut off by the backend."""
        if self._state != self.RELAYING:
            return
        relay = self._relay
        self._state, self._relay = self.DONE, None
        request = self.request
        request.unregisterProducer()
        if reason.check(ResponseDone, http.PotentialDataLoss):
            # Before the request ends: its span ends with it, and carries the usage.
            if relay is not None and relay.tail is not None:
                self._count_usage(relay.tail)
            request.finish()
            return
        # The backend died mid-response.  Finishing would tell the client the
        # answer was complete; only an aborted connection says it was not.
        self.upstream.failed(self.route, "died")
        request.outcome = Outcome.UPSTREAM_DIED
        _log.info("backend for model {model} died mid-response: {why}", model=self.model, why=describe_failure(reason))
        request.channel.transport.abortConnection()


@implementer(IPushProducer)
class _Relay(Protocol):
    """Receives the backend's response body and writes it to the client.

    It is the push producer the client's request holds: when the client's
    connection cannot take more, it pauses the backend response's transport,
    so a slow reader holds a bounded amount of memory here.  A watchdog
    notices a backend that goes silent mid-response; it is off while paused,
    since silence is then our doing.

    @ivar discard: nothing more is written to the client (it left, or the
        exchange gave up); what the backend still sends is dropped.
    @ivar _watchdog: the pending check for silence; None while paused or done.
    @ivar _last: when the backend last sent something (or was resumed).
    """

    discard = False
    # The answer's last bytes, when its token usage is wanted (llmhop.usage).
    tail: Optional[usage.Tail] = None
    transport: Any
    _watchdog: Optional[IDelayedCall] = None

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.reactor = exchange.upstream.reactor
        self.read_timeout = exchange.upstream.read_timeout
        self._last = 0.0

    def connectionMade(self) -> None:
        if self.discard:
            self.transport.stopProducing()
            return
        self.exchange.request.registerProducer(self, True)
        self._watch()

    def dataReceived(self, data: bytes) -> None:
        if not self.discard:
            self._last = self.reactor.seconds()
            if self.tail is not None:
                self.tail.add(data)
            self.exchange.request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._unwatch()
        if not self.discard:
            self.exchange.body_finished(reason)

    # IPushProducer, for the client's connection.
    def pauseProducing(self) -> None:
        if not self.discard:
            self._unwatch()
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.discard:
            self.transport.resumeProducing()
            self._watch()

    def stopProducing(self) -> None:
        if not self.discard:
            self._unwatch()
            self.discard = True
            self.transport.stopProducing()

    def _watch(self) -> None:
        self._last = self.reactor.seconds()
        if self._watchdog is None:
            self._watchdog = self.reactor.callLater(self.read_timeout, self._check)

    def _unwatch(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _check(self) -> None:
        self._watchdog = None
        silent = self.reactor.seconds() - self._last
        if silent < self.read_timeout:
            self._watchdog = self.reactor.callLater(self.read_timeout - silent, self._check)
            return
        self.stopProducing()
        self.exchange.stalled()


def _failure_kind(reason: Failure) -> str:
    """Why the backend gave no response head: timeout, tls, refused or bad-response."""
    inner = inner_failures(reason)
    if reason.check(defer.TimeoutError) or any(f.check(neterror.TimeoutError) for f in inner):
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
    inner = inner_failures(reason)
    return inner is not None and all(f.check(SSL.Error) for f in inner)


def _failure_error(kind: str, model: str) -> errors.ApiError:
    if kind == "timeout":
        return errors.upstream_timeout(model)
    if kind == "bad-response":
        return errors.upstream_bad_response(model)
    return errors.upstream_unreachable(model)
