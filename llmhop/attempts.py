"""Which replica answers: a route's replicas, then its fallbacks', tried in turn (SPEC §6).

Passive health (a replica that could not be reached is avoided for a
while), C{retryOn} (a refusing replica's answer is discarded and the next
one tried), and C{fallbacks} (other routes, the body naming each one's
model).  Only ever before anything of an answer reached the client: once
one is relayed (L{llmhop.proxy}), nothing is retried.
"""

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

import attrs
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from llmhop import errors
from llmhop.client import describe_failure
from llmhop.extract import renamed
from llmhop.routing import Route
from llmhop.tracing import AttemptSpan
from llmhop.upstream import Upstream, failure_kind, not_sent, upstream_headers

if TYPE_CHECKING:
    from llmhop.site import GatewayRequest

_log = Logger()


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
        self._span_ends(failure_kind(reason))
        if self._state == self.DONE:
            return  # cancelled: the result has its CancelledError already
        if not_sent(reason) and self.replica is not None:
            # Passive health: avoid this replica for a while.  Nothing of the
            # request reached it, so the next one may have it.
            health = self.route.health[self.replica]
            health.failed_until = self.upstream.reactor.seconds() + self.upstream.cooldown
            health.last_error = describe_failure(reason)
            if self._can_go_on():
                self._move_on(failure_kind(reason), describe_failure(reason))
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
