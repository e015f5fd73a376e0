"""A scripted OpenAI-compatible backend for the tests.

The request body says what to do: ``{"model": ..., "script": {"kind": ...}}``
(the OpenAI SDK sends it with ``extra_body``).  Kinds:

- ``echo`` (default): answer 200 with what arrived (method, uri, headers,
  sha256 and length of the body), as JSON, then ``pad`` bytes and ``usage`` if given;
- ``sse``: ``n`` server-sent events ``interval`` seconds apart, each carrying
  the time it was sent; with ``usage``, an event carrying it (written in two
  pieces) before ``[DONE]``;
- ``big``: ``size`` bytes of response body, written as fast as the client
  reads them, counting what the transport accepted (for backpressure tests);
- ``die``: send headers and ``n`` events, then abort the connection;
- ``hang``: never answer; ``hang_mid``: send headers and one event, then hang;
- ``status``: answer with ``code`` and a small JSON body.

Set from a test: ``health`` (the status ``GET /health`` answers, counted in
``probes``; None: hang; ``GET /_health/<status>`` sets it too), ``refuse`` (a status every other request is answered
with, counted in ``refused``, not ``served``).

Every connection is recorded by the client's port (``connections``), with the
times it was opened and closed.  Every request carrying ``X-Test-Id`` is recorded, with the time its
connection was lost; ``GET /_events/<id>`` returns that record, so a test can
tell whether (and when) the router let go of the backend.

Run as a program (``python -m tests.backend [SCRIPT]``) it listens on 127.0.0.1
at an ephemeral port and prints ``PORT <n>``; SCRIPT (JSON) is the script of
requests that carry none (routers that rebuild a request's body, as the Rust
ones do, drop the ``script`` key).
"""

import hashlib
import json
import sys
import time

from twisted.internet import reactor as default_reactor
from twisted.internet.interfaces import IPushProducer
from twisted.web import resource, server
from zope.interface import implementer


class Backend(resource.Resource):
    isLeaf = True

    def __init__(self, reactor=default_reactor):
        super().__init__()
        self.reactor = reactor
        self.events = {}
        self.connections = {}
        # Requests answered (the _events lookups aside), for tests of spreading.
        self.served = 0
        self.health = 200
        self.probes = 0
        self.refuse = None
        self.refused = 0
        self.default_script = {}

    def render(self, request):
        if request.path.startswith(b"/_events/"):
            record = self.events.get(request.path[len(b"/_events/") :].decode())
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(record).encode()
        if request.path == b"/health" and request.method == b"GET":
            return self._health(request)
        if request.path.startswith(b"/_health/"):
            # From another process: GET /_health/503 makes /health answer 503.
            self.health = int(request.path[len(b"/_health/") :])
            return b"ok"
        body = request.content.read()
        if self.refuse is not None:
            self.refused += 1
            return self._status(request, body, {"code": self.refuse})
        if request.path.endswith(b"/audio/transcriptions"):
            return self._transcription(request, body)
        try:
            script = json.loads(body).get("script") or self.default_script
        except (ValueError, AttributeError):
            script = self.default_script
        self._record(request)
        self.served += 1
        kind = script.get("kind", "echo")
        return getattr(self, "_" + kind)(request, body, script)

    def _health(self, request):
        self.probes += 1
        if self.health is None:
            return server.NOT_DONE_YET
        request.setResponseCode(self.health)
        request.setHeader(b"content-type", b"application/json")
        return b'{"status": "ok"}' if self.health == 200 else b'{"error": "loading"}'

    def _record(self, request):
        test_id = request.getHeader(b"x-test-id")
        if test_id is None:
            return
        record = self.events[test_id.decode()] = {"received": time.time(), "lost": None}

        def lost(_):
            record["lost"] = time.time()

        request.notifyFinish().addBoth(lost)

    def _echo(self, request, body, script):
        request.setHeader(b"content-type", b"application/json")
        for name, value in script.get("headers", {}).items():
            request.setHeader(name.encode(), value.encode())
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": [
                    [name.decode(), value.decode("latin-1")]
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values
                ],
                "sha256": hashlib.sha256(body).hexdigest(),
                "length": len(body),
                "client_port": getattr(request.getClientAddress(), "port", None),
                "pad": "x" * script.get("pad", 0),
                **({"usage": script["usage"]} if "usage" in script else {}),
            }
        ).encode()

    def _openai(self, request, body, script):
        """A chat completion as the SDK expects it, answering with the prompt's digest."""
        document = json.loads(body)
        text = "sha256:" + hashlib.sha256(body).hexdigest()
        base = {"id": "chatcmpl-test", "created": 1700000000, "model": document["model"]}
        if not document.get("stream"):
            request.setHeader(b"content-type", b"application/json")
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            return json.dumps(dict(base, object="chat.completion", choices=[choice])).encode()
        request.setHeader(b"content-type", b"text/event-stream")
        for piece in (text[:20], text[20:], None):
            delta = {"content": piece} if piece else {}
            choice = {"index": 0, "delta": delta, "finish_reason": None if piece else "stop"}
            event = dict(base, object="chat.completion.chunk", choices=[choice])
            request.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        return b"data: [DONE]\n\n"

    def _transcription(self, request, body):
        """Transcribes any upload to the number of bytes that arrived and their digest."""
        request.setHeader(b"content-type", b"application/json")
        text = "%d bytes, sha256:%s" % (len(body), hashlib.sha256(body).hexdigest())
        return json.dumps({"text": text}).encode()

    def _status(self, request, body, script):
        request.setResponseCode(script.get("code", 500))
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {"scripted": script.get("code", 500), **({"usage": script["usage"]} if "usage" in script else {})}
        ).encode()

    def _sse(self, request, body, script, then=None):
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        count, interval = script.get("n", 5), script.get("interval", 0.1)
        calls = []

        def send(i):
            if request._disconnected:
                return
            if i == count:
                if then is None:
                    if "usage" in script:
                        event = b"data: " + json.dumps({"choices": [], "usage": script["usage"]}).encode() + b"\n\n"
                        # Split as a proxy's reads may split it.
                        request.write(event[:20])
                        request.write(event[20:])
                    request.write(b"data: [DONE]\n\n")
                    request.finish()
                else:
                    then()
                return
            event = {"i": i, "sent": time.time(), "choices": [{"delta": {"content": "tok%d " % i}}]}
            request.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            calls.append(self.reactor.callLater(interval, send, i + 1))

        request.notifyFinish().addErrback(lambda _: [c.cancel() for c in calls if c.active()])
        send(0)
        return server.NOT_DONE_YET

    def _die(self, request, body, script):
        return self._sse(request, body, script, then=request.transport.abortConnection)

    def _hang(self, request, body, script):
        return server.NOT_DONE_YET

    def _hang_mid(self, request, body, script):
        return self._sse(request, body, dict(script, n=1), then=lambda: None)

    def _big(self, request, body, script):
        request.setHeader(b"content-type", b"application/octet-stream")
        producer = _Filler(
            request, script.get("size", 1 << 20), self.events.get(request.getHeader(b"x-test-id").decode())
        )
        request.registerProducer(producer, True)
        producer.resumeProducing()
        return server.NOT_DONE_YET


@implementer(IPushProducer)
class _Filler:
    """Writes C{size} bytes while the consumer wants them, recording how many."""

    CHUNK = b"x" * 65536

    def __init__(self, request, size, record):
        self.request, self.left, self.record = request, size, record
        self.paused = False
        self.record["written"] = 0

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.left > 0 and not self.request._disconnected:
            chunk = self.CHUNK[: self.left]
            self.left -= len(chunk)
            self.record["written"] += len(chunk)
            self.request.write(chunk)
        if self.left == 0 and not self.request._disconnected:
            self.request.unregisterProducer()
            self.request.finish()
            self.left = -1

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.left = -1


class _UnparsedRequest(server.Request):
    """Skips twisted.web's parsing of form bodies: slow for big multipart
    uploads (seconds per MiB on PyPy), and never what a test looks at."""

    content_type = None

    def requestReceived(self, command, path, version):
        self.content_type = self.requestHeaders.getRawHeaders(b"content-type")
        self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)

    def process(self):
        # Arguments are parsed by now: the resource sees the header again.
        if self.content_type is not None:
            self.requestHeaders.setRawHeaders(b"content-type", self.content_type)
        super().process()


class RecordingSite(server.Site):
    """Records when each connection opens and closes, by the client's port."""

    requestFactory = _UnparsedRequest

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        key = getattr(addr, "port", len(self.resource.connections))  # a unix socket's peers have no port
        record = self.resource.connections[key] = {"opened": time.time(), "closed": None}
        lost = protocol.connectionLost

        def connection_lost(reason):
            record["closed"] = time.time()
            lost(reason)

        protocol.connectionLost = connection_lost
        return protocol


def site(reactor=default_reactor, default_script=None):
    backend = Backend(reactor)
    backend.default_script = default_script or {}
    return RecordingSite(backend)


def main():
    script = json.loads(sys.argv[1]) if len(sys.argv) > 1 else None
    port = default_reactor.listenTCP(0, site(default_script=script), interface="127.0.0.1")
    sys.stdout.write("PORT %d\n" % (port.getHost().port,))
    sys.stdout.flush()
    default_reactor.run()


if __name__ == "__main__":
    main()
