"""Relaying the answer of the replica that took the request (SPEC §2.6–§2.7).

The answer is relayed as it arrives: status and headers as soon as the backend
sends them, each body chunk as soon as it is read, so server-sent events reach
the client without added delay.  Backpressure runs from the client socket to
the backend socket: the client's connection pauses the backend response's
transport when its write buffer fills, so a slow reader holds a bounded amount
of memory here.  A client that leaves cancels the backend request at once
(before headers: the request Deferred; after: the response's transport), which
closes the backend connection so the inference server stops generating.
"""

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from llmhop import errors, usage
from llmhop.accesslog import Outcome
from llmhop.attempts import Attempts
from llmhop.client import describe_failure
from llmhop.extract import media_type
from llmhop.routing import Route
from llmhop.upstream import Upstream, connection_tokens, failure_kind, hop_by_hop, upstream_headers

if TYPE_CHECKING:
    from llmhop.site import GatewayRequest

_log = Logger()

# On an answer from a fallback route: which one (SPEC §6).
FALLBACK_HEADER = b"X-Llmhop-Fallback"


def forward(
    upstream: Upstream,
    request: "GatewayRequest",
    route: Route,
    fallbacks: Sequence[Route] = (),
    keys: Optional[Mapping[str, bytes]] = None,
) -> None:
    """Send C{request} to C{route} (then to C{fallbacks}), with the affinity C{keys} per route name."""
    headers = upstream_headers(request, route, upstream.strip_credentials)
    attempts = Attempts(request, route, upstream, headers, list(fallbacks), keys or {})
    Exchange(request, route, upstream, attempts).start()


@attrs.define(eq=False)
class Exchange:
    """One request forwarded: L{Attempts} until a replica answers, then its answer relayed.

    @ivar _state: one of
        - C{SENDING}: the replicas are tried (C{attempts}; C{_sending} under
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
    attempts: Attempts
    _state: str = SENDING
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
        self._sending = self.attempts.send()
        self._sending.addTimeout(self.upstream.response_timeout, self.upstream.reactor)
        self._sending.addCallbacks(self._answered, self._failed)

    def _ended(self, _: object) -> None:
        self.upstream.in_flight(self.attempts.route, -1)
        self.attempts.leave_replica()

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
        kind = failure_kind(reason)
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
            if self.attempts.fell_back:
                self.request.responseHeaders.setRawHeaders(FALLBACK_HEADER, [self.attempts.route.name.encode("utf-8")])
        response.deliverBody(relay)

    def _send_head(self, response: IResponse) -> None:
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        named = connection_tokens(response.headers)
        out = request.responseHeaders
        # twisted.web adds these to every response; a relayed one carries
        # only what the backend sent (SPEC §5).
        out.removeHeader(b"server")
        out.removeHeader(b"date")
        for name, values in response.headers.getAllRawHeaders():
            lower = name.lower()
            # CORS is the gateway's policy, not the backend's (llmhop.cors).
            if not hop_by_hop(lower, named) and not lower.startswith(b"access-control-"):
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


def _failure_error(kind: str, model: str) -> errors.ApiError:
    if kind == "timeout":
        return errors.upstream_timeout(model)
    if kind == "bad-response":
        return errors.upstream_bad_response(model)
    return errors.upstream_unreachable(model)
