"""The one resource behind every path: built-in endpoints, else route and forward.

The order is SPEC §2's: built-in endpoints, client auth, body size, model,
forwarding.  Auth and the declared size are checked by L{screen}, which the
channel calls with the headers alone, before any body byte is read.
"""

import json
from typing import Optional
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet import defer
from twisted.internet.task import TaskStopped, cooperate
from twisted.web import resource, server

from llmhop import errors
from llmhop.auth import Authenticator
from llmhop.extract import SMALL_BODY, ModelError, extract_model, model_steps, rename, rename_steps
from llmhop.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from llmhop.proxy import Upstream
from llmhop.routing import Route, RoutingTable
from llmhop.target import check_target

HEALTH_PATHS = (b"/health", b"/healthz")
METRICS_PATH = b"/metrics"
MODELS_PATH = b"/v1/models"
_MODEL_PREFIX = MODELS_PATH + b"/"
_READ_METHODS = (b"GET", b"HEAD")


@attrs.define(eq=False, slots=False)
class Gateway(resource.Resource):
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

    def screen(self, uri: bytes, headers, length: Optional[int]) -> Optional[errors.ApiError]:
        """The answer to a request that must not get past its headers, or None."""
        invalid = check_target(uri)
        if invalid is not None:
            return invalid
        path = uri.partition(b"?")[0]
        open_path = path in HEALTH_PATHS or (path == METRICS_PATH and self.public_metrics)
        if not open_path and not self.auth.allows(headers.getRawHeaders(b"authorization")):
            return errors.unauthorized()
        if length is not None and length > self.max_body_bytes:
            return errors.body_too_large(self.max_body_bytes)
        return None

    def render(self, request) -> object:
        path = request.path
        if path in HEALTH_PATHS or path == MODELS_PATH or path.startswith(_MODEL_PREFIX):
            return self._builtin(request, path)
        if path == METRICS_PATH and self.metrics is not None:
            return self._metrics(request)
        return self._forward(request)

    def _builtin(self, request, path: bytes) -> object:
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

    def _metrics(self, request) -> object:
        if request.method not in _READ_METHODS:
            return self._fail(request, errors.method_not_allowed(b"GET, HEAD"))
        body = self.metrics.render()
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE)
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        return body

    def _forward(self, request) -> object:
        encoding = request.getHeader(b"content-encoding")
        if encoding is not None and encoding.strip().lower() != b"identity":
            return self._fail(request, errors.unsupported_encoding())
        body, content_type = request.body, request.getHeader(b"content-type")
        if len(body) <= SMALL_BODY:
            try:
                model = extract_model(body, content_type)
            except ModelError as e:
                return self._fail(request, e.api_error())
            self._route(request, model)
            return server.NOT_DONE_YET
        # A big body is scanned in slices so that other connections are
        # served meanwhile; a client that leaves stops the scan.
        found = scan_in_slices(model_steps(body, content_type))
        found.addCallbacks(lambda model: self._route(request, model), lambda f: self._unroutable(request, f))
        request.notifyFinish().addErrback(lambda _: found.cancel())
        return server.NOT_DONE_YET

    def _route(self, request, model: str) -> None:
        if request.gone:
            return
        request.model = model
        route = self.routes.lookup(model)
        if route is None:
            self._fail(request, errors.model_not_found(model))
            return
        request.route = route.name
        forwarded = route.forwarded_model(model)
        if forwarded is None:
            self._admit(request, route)
            return
        content_type = request.getHeader(b"content-type")
        if len(request.body) <= SMALL_BODY:
            try:
                request.body = rename(request.body, content_type, forwarded)
            except ModelError as e:
                self._fail(request, e.api_error())
                return
            self._admit(request, route)
            return
        renamed = scan_in_slices(rename_steps(request.body, content_type, forwarded))
        renamed.addCallbacks(lambda body: self._renamed(request, route, body), lambda f: self._unroutable(request, f))
        request.notifyFinish().addErrback(lambda _: renamed.cancel())

    def _renamed(self, request, route: Route, body: bytes) -> None:
        if not request.gone:
            request.body = body
            self._admit(request, route)

    def _admit(self, request, route: Route) -> None:
        """Forward now, or once the model's concurrency limit lets it through."""
        limiter = route.state.limiter
        if limiter is None:
            self.upstream.forward(request, route)
            return
        turn = limiter.acquire()
        if turn is None:
            self._fail(request, errors.too_many_requests(request.model))
            return
        if not turn.called and self.metrics is not None:
            _counted_while_waiting(turn, self.metrics.route_gauges(route.name)[1])
        finished = request.notifyFinish()
        # A client that leaves the queue gives up its place; once through,
        # its end lets the next one in.
        finished.addErrback(_leave_the_queue, turn)
        turn.addCallbacks(self._through, _left_while_waiting, callbackArgs=(request, route, limiter, finished))

    def _through(self, _, request, route: Route, limiter, finished: defer.Deferred) -> None:
        finished.addBoth(_let_the_next_in, limiter)
        if request.gone:
            return
        self.upstream.forward(request, route)

    def _unroutable(self, request, failure) -> None:
        if failure.check(defer.CancelledError) or request.gone:
            return
        failure.trap(ModelError)
        self._fail(request, failure.value.api_error())

    def _fail(self, request, error: errors.ApiError) -> object:
        errors.respond(request, error)
        return server.NOT_DONE_YET


def _counted_while_waiting(turn: defer.Deferred, gauge) -> None:
    gauge.inc()

    def no_longer_waiting(result):
        gauge.dec()
        return result

    turn.addBoth(no_longer_waiting)


def _leave_the_queue(reason, turn: defer.Deferred) -> None:
    """The client left: a place still waiting is given up (its turn is cancelled)."""
    if not turn.called:
        turn.cancel()


def _left_while_waiting(failure) -> None:
    failure.trap(defer.CancelledError)


def _let_the_next_in(result, limiter) -> None:
    limiter.release()


def scan_in_slices(steps) -> defer.Deferred:
    """Run an extraction generator with task.cooperate; fire with the model."""
    found = []

    def drive():
        found.append((yield from steps))

    task = cooperate(drive())
    result = defer.Deferred(lambda _: task.stop())

    def failed(failure):
        if not result.called and not failure.check(TaskStopped):
            result.errback(failure)

    def done(_):
        if not result.called:
            result.callback(found[0])

    task.whenDone().addCallbacks(done, failed)
    return result


def _model_object(name: str) -> dict:
    # "created" is fixed so that every copy behind a load balancer answers alike.
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmhop"}
