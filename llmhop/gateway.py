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
from llmhop.extract import SMALL_BODY, ModelError, extract_model, model_steps
from llmhop.proxy import Upstream
from llmhop.routing import RoutingTable

HEALTH_PATHS = (b"/health", b"/healthz")
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
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        resource.Resource.__init__(self)

    def screen(self, uri: bytes, headers, length: Optional[int]) -> Optional[errors.ApiError]:
        """The answer to a request that must not get past its headers, or None."""
        path = uri.partition(b"?")[0]
        if path not in HEALTH_PATHS and not self.auth.allows(headers.getRawHeaders(b"authorization")):
            return errors.unauthorized()
        if length is not None and length > self.max_body_bytes:
            return errors.body_too_large(self.max_body_bytes)
        return None

    def render(self, request) -> object:
        path = request.path
        if path in HEALTH_PATHS or path == MODELS_PATH or path.startswith(_MODEL_PREFIX):
            return self._builtin(request, path)
        if not request.uri.startswith(b"/"):
            return self._fail(request, errors.bad_request("Only origin-form request targets are accepted."))
        return self._forward(request)

    def _builtin(self, request, path: bytes) -> object:
        if request.method not in _READ_METHODS:
            return self._fail(request, errors.method_not_allowed(b"GET, HEAD"))
        if path in HEALTH_PATHS:
            document = {"status": "ok", "models": len(self.routes.backends)}
        elif path == MODELS_PATH:
            document = {"object": "list", "data": [_model_object(n) for n in self.routes.names()]}
        else:
            name = unquote_to_bytes(path[len(_MODEL_PREFIX) :]).decode("utf-8", "surrogateescape")
            if self.routes.lookup(name) is None:
                return self._fail(request, errors.model_not_found(name))
            document = _model_object(name)
        body = json.dumps(document).encode("utf-8")
        request.setHeader(b"Content-Type", b"application/json")
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
                return self._fail(request, errors.model_missing(str(e)))
            self._route(request, model)
            return server.NOT_DONE_YET
        # A big body is scanned in slices so that other connections are
        # served meanwhile; a client that leaves stops the scan.
        found = scan_in_slices(model_steps(body, content_type))
        found.addCallbacks(lambda model: self._route(request, model), lambda f: self._unroutable(request, f))
        request.notifyFinish().addErrback(lambda _: found.cancel())
        return server.NOT_DONE_YET

    def _route(self, request, model: str) -> None:
        if request._disconnected:
            return
        request.model = model
        backend = self.routes.lookup(model)
        if backend is None:
            self._fail(request, errors.model_not_found(model))
        else:
            self.upstream.forward(request, backend)

    def _unroutable(self, request, failure) -> None:
        if failure.check(defer.CancelledError) or request._disconnected:
            return
        failure.trap(ModelError)
        self._fail(request, errors.model_missing(failure.getErrorMessage()))

    def _fail(self, request, error: errors.ApiError) -> object:
        errors.respond(request, error)
        return server.NOT_DONE_YET


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

    task.whenDone().addCallbacks(lambda _: result.called or result.callback(found[0]), failed)
    return result


def _model_object(name: str) -> dict:
    # "created" is fixed so that every copy behind a load balancer answers alike.
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmhop"}
