"""The one resource behind every path: built-in endpoints, else route and forward.

The order is SPEC §2's: built-in endpoints, client auth, body size, model,
forwarding.  Auth and the declared size are checked by L{screen}, which the
channel calls with the headers alone, before any body byte is read.
"""

import json
from collections.abc import Generator
from typing import Optional, TypeVar, Union
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet import defer
from twisted.internet.task import TaskStopped, cooperate
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.http_headers import Headers

from llmhop import errors
from llmhop.auth import Authenticator
from llmhop.extract import SMALL_BODY, Body, ModelError, extract_model, model_steps, rename, rename_steps
from llmhop.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from llmhop.proxy import Upstream
from llmhop.routing import Route, RoutingTable
from llmhop.site import GatewayRequest, ScreeningResource
from llmhop.target import check_target

T = TypeVar("T")

HEALTH_PATHS = (b"/health", b"/healthz")
METRICS_PATH = b"/metrics"
MODELS_PATH = b"/v1/models"
_MODEL_PREFIX = MODELS_PATH + b"/"
_READ_METHODS = (b"GET", b"HEAD")


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
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        resource.Resource.__init__(self)

    def screen(self, target: bytes, headers: Headers, length: Optional[int]) -> Optional[errors.ApiError]:
        """The answer to a request that must not get past its headers, or None."""
        invalid = check_target(target)
        if invalid is not None:
            return invalid
        path = target.partition(b"?")[0]
        open_path = path in HEALTH_PATHS or (path == METRICS_PATH and self.public_metrics)
        if not open_path and not self.auth.allows(headers.getRawHeaders(b"authorization")):
            return errors.unauthorized()
        if length is not None and length > self.max_body_bytes:
            return errors.body_too_large(self.max_body_bytes)
        return None

    def render(self, request: "GatewayRequest") -> object:
        path = request.path
        if path in HEALTH_PATHS or path == MODELS_PATH or path.startswith(_MODEL_PREFIX):
            return self._builtin(request, path)
        if path == METRICS_PATH and self.metrics is not None:
            return self._metrics(request, self.metrics)
        return self._forward(request)

    def _builtin(self, request: http.Request, path: bytes) -> object:
        if request.method not in _READ_METHODS:
            return self._fail(request, errors.method_not_allowed(b"GET, HEAD"))
        if path in HEALTH_PATHS:
            document = {"status": "ok", "models": len(self.routes.routes)}
        elif path == MODELS_PATH:
            document = {"object": "list", "data": [_model_object(n) for n in self.routes.names()]}
        else:
            name = unquote_to_bytes(path[len(_MODEL_PREFIX) :]).decode("utf-8", "surrogateescape")
            # Any name a request could be routed with: unlisted ones and the
            # names prefix routes match too.
            if self.routes.lookup(name) is None:
                return self._fail(request, errors.model_not_found(name))
            document = _model_object(name)
        body = json.dumps(document).encode("utf-8")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        return body

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
        # The steps are chained first and the chain fired once: a small body
        # runs it to its end at once, in one pass; a big body's scan, or a
        # place in a queue, pauses it.  A client that leaves stops the step
        # under way (each step that pauses says so in its own Deferred).
        forwarding: defer.Deferred = defer.Deferred()
        forwarding.addCallback(self._model, request)
        forwarding.addCallback(self._routed, request)
        forwarding.addCallback(self._admitted, request)
        forwarding.addCallback(self._send, request)
        forwarding.addErrback(self._refused, request)
        forwarding.callback(request.body)
        return server.NOT_DONE_YET

    def _model(self, body: Body, request: "GatewayRequest") -> Union[str, defer.Deferred]:
        return _until_gone(model_of(body, request.getHeader(b"content-type")), request)

    def _routed(self, model: str, request: "GatewayRequest") -> Union[Route, defer.Deferred]:
        """The route for C{model}; once the body names the backend's model, if the route renames it."""
        request.model = model
        route = self.routes.lookup(model)
        if route is None:
            raise errors.Refusal(errors.model_not_found(model))
        request.route = route.name
        forwarded = route.forwarded_model(model)
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
            self.upstream.forward(request, route)

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


def _until_gone(step: T, request: "GatewayRequest") -> T:
    """C{step} as it is; a Deferred one is cancelled if the client leaves while it runs."""
    if isinstance(step, defer.Deferred):
        request.notifyFinish().addErrback(_stop, step)
    return step


def _stop(reason: Failure, step: defer.Deferred) -> None:
    step.cancel()


def _with_body(body: bytes, request: "GatewayRequest", route: Route) -> Route:
    request.body = body
    return route


def _through(_: object, route: Route) -> Route:
    return route


def model_of(body: Body, content_type: Optional[bytes]) -> Union[str, defer.Deferred]:
    """The model C{body} names: at once for a small body, else a Deferred of the scan in slices.

    L{ModelError} when there is none (raised, or the Deferred's failure).
    """
    if len(body) <= SMALL_BODY:
        return extract_model(body, content_type)
    return scan_in_slices(model_steps(body, content_type))


def renamed(body: Body, content_type: Optional[bytes], name: str) -> Union[bytes, defer.Deferred]:
    """C{body} naming model C{name}: at once for a small body, else a Deferred of the rewrite in slices."""
    if len(body) <= SMALL_BODY:
        return rename(body, content_type, name)
    return scan_in_slices(rename_steps(body, content_type, name))


def scan_in_slices(steps: Generator[None, None, T]) -> defer.Deferred:
    """Run a scanning generator with task.cooperate, so other connections are served meanwhile; fire with its result.

    Cancelling the Deferred stops the scan.
    """
    found: list[T] = []

    def drive() -> Generator[None, None, None]:
        found.append((yield from steps))

    task = cooperate(drive())
    result: defer.Deferred[T] = defer.Deferred(lambda _: task.stop())

    def failed(failure: Failure) -> None:
        if not result.called and not failure.check(TaskStopped):
            result.errback(failure)

    def done(_: object) -> None:
        if not result.called:
            result.callback(found[0])

    task.whenDone().addCallbacks(done, failed)
    return result


def _model_object(name: str) -> dict:
    # "created" is fixed so that every copy behind a load balancer answers alike.
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmhop"}
