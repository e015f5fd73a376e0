"""The one resource behind every path: built-in endpoints, else route and forward.

The order is SPEC §2's: built-in endpoints, client auth, body size, model,
forwarding.  Auth and the declared size are checked by L{screen}, which the
channel calls with the headers alone, before any body byte is read.
"""

import json
import math
import time
from typing import Callable, Optional, TypeVar, Union
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from llmhop import affinity, errors, proxy
from llmhop.auth import ANYONE, Authenticator, ClientToken
from llmhop.config import LEAST_IN_FLIGHT
from llmhop.cors import Cors, is_preflight, preflight_headers
from llmhop.extract import SMALL_BODY, Body, ModelError, keyed_spans, model_of, renamed
from llmhop.framing import RequestLine
from llmhop.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from llmhop.routing import ReplicaHealth, Route, RoutingTable
from llmhop.site import GatewayRequest, ScreeningResource
from llmhop.target import ROUTE_PREFIX, check_target
from llmhop.upstream import Upstream

T = TypeVar("T")

HEALTH_PATHS = (b"/health", b"/healthz")
READY_PATH = b"/ready"
STATUS_PATH = b"/status"
METRICS_PATH = b"/metrics"
MODELS_PATH = b"/v1/models"
_MODEL_PREFIX = MODELS_PATH + b"/"
_READ_METHODS = (b"GET", b"HEAD")
_BUILTIN = frozenset((*HEALTH_PATHS, READY_PATH, STATUS_PATH, MODELS_PATH))


@attrs.define(eq=False, slots=False)
class Gateway(ScreeningResource):
    """Everything a request needs, shared by all requests of one process."""

    routes: RoutingTable
    auth: Authenticator
    upstream: Upstream
    max_body_bytes: int
    metrics: Optional[Metrics] = None
    # /metrics without a token (metrics.public)
    public_metrics: bool = False
    cors: Cors = Cors()
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        resource.Resource.__init__(self)

    def screen(self, request: "GatewayRequest", line: RequestLine, length: Optional[int]) -> Optional[errors.ApiError]:
        """The answer to a request that must not get past its head, or None; notes the client's token."""
        invalid = check_target(line.target)
        if invalid is not None:
            return invalid
        headers = request.requestHeaders
        request.cors_origin = self.cors.allowed(headers)
        if request.cors_origin is not None and length == 0 and is_preflight(line.method, headers):
            # A browser asking whether it may: answered by render, no token
            # needed.  Browsers send it without a body; one with a body is no
            # free pass past auth for an upload.
            request.preflight = True
            return None
        path = line.path
        open_path = path in HEALTH_PATHS or path == READY_PATH or (path == METRICS_PATH and self._public_metrics)
        token = self.auth.identify(headers)
        if token is None and not open_path:
            return errors.unauthorized()
        request.token = token
        if length is not None and length > self.max_body_bytes:
            return errors.body_too_large(self.max_body_bytes)
        return None

    @property
    def _public_metrics(self) -> bool:
        """/metrics is served here without a token (with metrics.listen it is not served here at all)."""
        return self.public_metrics and self.metrics is not None

    def render(self, request: "GatewayRequest") -> object:
        if request.preflight:
            return self._preflight(request)
        path = request.path
        if path in _BUILTIN or path.startswith(_MODEL_PREFIX):
            return self._builtin(request, path)
        if path == METRICS_PATH and self.metrics is not None:
            return self._metrics(request, self.metrics)
        if path.startswith(ROUTE_PREFIX):
            return self._forward_by_path(request)
        return self._forward(request)

    def _builtin(self, request: "GatewayRequest", path: bytes) -> object:
        if request.method not in _READ_METHODS:
            return self._fail(request, errors.method_not_allowed(b"GET, HEAD"))
        if path in HEALTH_PATHS:
            document: dict = {"status": "ok", "models": len(self.routes.routes)}
        elif path == READY_PATH:
            if request.draining:
                request.setResponseCode(503)
                document = {"status": "draining"}
            else:
                document = {"status": "ready"}
        elif path == STATUS_PATH:
            document = status(self.routes, self.upstream.reactor.seconds(), _token_of(request))
        elif path == MODELS_PATH:
            token = _token_of(request)
            document = {"object": "list", "data": [_model_object(n) for n in self.routes.names() if token.allows(n)]}
        else:
            name = unquote_to_bytes(path[len(_MODEL_PREFIX) :]).decode("utf-8", "surrogateescape")
            # Any name a request could be routed with: unlisted ones and the
            # names prefix routes match too.  One outside the token's scope
            # does not exist for it (as OpenAI answers).
            if self.routes.lookup(name) is None or not _token_of(request).allows(name):
                return self._fail(request, errors.model_not_found(name))
            document = _model_object(name)
        body = json.dumps(document).encode("utf-8")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        return body

    def _preflight(self, request: "GatewayRequest") -> object:
        origin = request.cors_origin
        assert origin is not None, "only an allowed origin's preflight is answered here"
        request.setResponseCode(204)
        for name, value in preflight_headers(origin, request.requestHeaders):
            request.setHeader(name, value)
        return b""

    def _metrics(self, request: http.Request, metrics: Metrics) -> object:
        if request.method not in _READ_METHODS:
            return self._fail(request, errors.method_not_allowed(b"GET, HEAD"))
        body = metrics.render()
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE)
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        return body

    def _forward(self, request: "GatewayRequest") -> object:
        """One chain, for small and big bodies alike: model → route (→ renamed body) → admission → upstream."""
        encoding = request.getHeader(b"content-encoding")
        if encoding is not None and encoding.strip().lower() != b"identity":
            return self._fail(request, errors.unsupported_encoding())
        return self._chain(request, request.body, self._model)

    def _forward_by_path(self, request: "GatewayRequest") -> object:
        """/route/<model>/<rest>: the model from the path, the body forwarded unread (SPEC §7)."""
        model, target = path_route(request.uri)
        if not model:
            return self._fail(request, errors.path_model_required())
        request.forward_target = target
        # Any content type, any encoding: nothing reads it.  Neither spans
        # nor a body key: affinity goes by header, if the policy has one.
        request.spans = {}
        return self._chain(request, model)

    def _chain(self, request: "GatewayRequest", value: object, *first: Callable[..., object]) -> object:
        """Run C{first} steps on C{value}, then route → admission → send; a refusal answers the client.

        The steps are chained first and the chain fired once: a small body
        runs it to its end at once, in one pass; a big body's scan, or a
        place in a queue, pauses it.  A client that leaves stops the step
        under way (each step that pauses says so in its own Deferred).
        """
        tracing = self.upstream.tracing
        if tracing is not None:
            request.span = tracing.request(request.method, request.path, request.requestHeaders)
        forwarding: defer.Deferred = defer.Deferred()
        for step in (*first, self._routed, self._admitted, self._send):
            forwarding.addCallback(step, request)
        forwarding.addErrback(self._refused, request)
        forwarding.callback(value)
        return server.NOT_DONE_YET

    def _model(self, body: Body, request: "GatewayRequest") -> Union[str, defer.Deferred]:
        if len(body) > SMALL_BODY:
            request.spans = {}
        return _until_gone(model_of(body, request.getHeader(b"content-type"), request.spans), request)

    def _routed(self, model: str, request: "GatewayRequest") -> Union[Route, defer.Deferred]:
        """The route for C{model}; once the body names the backend's model, if the route renames it."""
        request.model = model
        if not _token_of(request).allows(model):
            raise errors.Refusal(errors.model_not_allowed(model))
        route = self.routes.lookup(model)
        if route is None:
            raise errors.Refusal(errors.model_not_found(model))
        request.route = route.name
        if request.span is not None:
            request.span.routed(model, route.name, _token_of(request).name)
        routes = [route, *self._fallbacks(route, request)]
        if all(r.all_down for r in routes):
            retry_after = max(r.retry_after for r in routes)
            raise errors.Refusal(errors.model_unavailable(model, max(1, math.ceil(retry_after))))
        if any(r.policy != LEAST_IN_FLIGHT for r in routes):
            request.affinity = _affinity_keys(routes, request)
        forwarded = None if request.forward_target is not None else route.forwarded_model(model)
        if forwarded is None:
            return route
        body = renamed(request.body, request.getHeader(b"content-type"), forwarded)
        if isinstance(body, defer.Deferred):
            return _until_gone(body, request).addCallback(_with_body, request, route)
        return _with_body(body, request, route)

    def _admitted(self, route: Route, request: "GatewayRequest") -> Union[Route, defer.Deferred]:
        """C{route} now, or once the model's concurrency limit lets the request through."""
        limiter = route.state.limiter
        if limiter is None:
            return route
        waiting = None if self.metrics is None else self.metrics.route_gauges(route.name)[1]
        turn = limiter.admit(request.notifyFinish(), waiting)
        if turn is None:
            raise errors.Refusal(errors.too_many_requests(request.model or route.name))
        turn.addCallback(_through, route)
        return turn

    def _send(self, route: Route, request: "GatewayRequest") -> None:
        if not request.gone:
            proxy.forward(self.upstream, request, route, self._fallbacks(route, request), request.affinity)

    def _fallbacks(self, route: Route, request: "GatewayRequest") -> list[Route]:
        """C{route}'s fallbacks; none for a path-routed request, whose body names no model to rewrite."""
        return [] if request.forward_target is not None else self.routes.fallbacks_of(route)

    def _refused(self, failure: Failure, request: "GatewayRequest") -> None:
        if failure.check(defer.CancelledError) or request.gone:
            return
        if failure.check(ModelError):
            self._fail(request, failure.value.api_error())
            return
        failure.trap(errors.Refusal)
        self._fail(request, failure.value.error)

    def _fail(self, request: http.Request, error: errors.ApiError) -> object:
        errors.respond(request, error)
        return server.NOT_DONE_YET


def path_route(target: bytes) -> tuple[str, bytes]:
    """The model and the backend's target of C{/route/<model>/<rest>?<query>}: (model, C{/<rest>?<query>}).

    The model is one percent-decoded segment (a C{/} in it is C{%2F}); the
    rest stays as the client wrote it.  The target passed L{check_target},
    so the segment decodes to UTF-8.
    """
    path, question, query = target.partition(b"?")
    segment, _, rest = path[len(ROUTE_PREFIX) :].partition(b"/")
    model = unquote_to_bytes(segment).decode("utf-8", "surrogateescape")
    return model, b"/" + rest + question + query


def _until_gone(step: T, request: "GatewayRequest") -> T:
    """C{step} as it is; a Deferred one is cancelled if the client leaves while it runs."""
    if isinstance(step, defer.Deferred):
        request.notifyFinish().addErrback(_stop, step)
    return step


def _stop(reason: Failure, step: defer.Deferred) -> None:
    step.cancel()


def _affinity_keys(routes: list[Route], request: "GatewayRequest") -> dict[str, bytes]:
    """Each route's affinity key digest for C{request}, from the body as the client sent it."""
    keys = {}
    spans = request.spans
    for route in routes:
        if route.policy == LEAST_IN_FLIGHT:
            continue
        if spans is None:
            spans = keyed_spans(request.body, request.getHeader(b"content-type"))
        key = affinity.key_of(
            route.policy, route.affinity_bytes, route.affinity_header, request.requestHeaders, request.body, spans
        )
        if key is not None:
            keys[route.name] = affinity.digest(key)
    return keys


def _with_body(body: bytes, request: "GatewayRequest", route: Route) -> Route:
    request.body = body
    return route


def _through(_: object, route: Route) -> Route:
    return route


def status(routes: RoutingTable, now: float, token: ClientToken = ANYONE) -> dict:
    """GET /status: every route's replicas, their state and what went wrong last (SPEC §6).

    URLs are as configured, which never hold credentials (the config
    refuses them); injected headers are not shown.  A scoped token sees
    the routes whose names it may use.
    """
    return {
        "routes": {
            name: {"replicas": [_replica_status(r.url, h, now) for r, h in zip(route.replicas, route.health)]}
            for name, route in sorted(routes.routes.items())
            if token.allows(name)
        }
    }


def _token_of(request: "GatewayRequest") -> ClientToken:
    """The token the screen found; a request let through without one (an open path) may use nothing."""
    token = request.token
    if token is None:
        raise errors.Refusal(errors.unauthorized())
    return token


def _replica_status(url: str, health: ReplicaHealth, now: float) -> dict:
    last_check = health.last_check
    return {
        "url": url,
        "state": health.state(now),
        "inFlight": health.in_flight,
        "lastError": health.last_error,
        "lastCheck": None if last_check is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_check)),
    }


def _model_object(name: str) -> dict:
    # "created" is fixed so that every copy behind a load balancer answers alike.
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmhop"}
