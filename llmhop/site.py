"""Receiving a request: the site, its channels and their requests (as Synapse keeps them together).

Headers are screened first, then the body is collected in memory.

twisted.web's stock channel is wrong for a gateway in four ways: its framing
is lax enough for request smuggling (so the framing fields are kept from it,
and llmhop.framing reads each head line and body), it answers
``Expect: 100-continue`` before anyone looked at the headers, it calls the
resource only once the whole body is in, and it spools bodies of 100 kB or
more to a temporary file.  Here the gateway screens the headers (target, auth,
declared size) before a body byte is read, so a bad token or an oversized upload costs
the client one round trip and us nothing; bodies are counted as they arrive
and kept in memory up to the cap; and the stock form parsing of POST bodies
(which would walk a 100 MiB multipart upload) is skipped.

An answered-early request leaves the connection mid-body, so the channel stops
parsing, shuts down its write side and discards what still arrives for a
moment: closing at once with unread input makes the kernel send a reset,
which can destroy the 413/401 before the client reads it.

The request line is recorded by the channel itself (L{framing.RequestLine}),
not read back from Twisted's parser; the one private flag read here (whether
the client left) is read through L{llmhop.internals}.
"""

import time
from collections.abc import Mapping
from typing import Optional, Union

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from llmhop import config as configlib, errors, framing, internals
from llmhop.accepting import Accepting
from llmhop.accesslog import AccessLog, Entry, Outcome
from llmhop.auth import ClientToken
from llmhop.extract import Spans
from llmhop.metrics import Metrics
from llmhop.requestid import REQUEST_ID_HEADER, request_id_of
from llmhop.tracing import RequestSpan
from llmhop.writethrough import WriteThroughMixin

# How long a rejected client may keep sending before it is cut off.
LINGER_SECONDS = 2.0
# Each this many body bytes received extend the upload deadline by a second.
BODY_BYTES_PER_SECOND = 64 * 1024


class GatewayRequest(server.Request):
    """A request whose body is collected in memory, in one growing buffer.

    A bytearray grows in place (realloc moves large buffers without copying),
    so a 100 MiB body never costs one long copy at the end, which would stall
    every other connection.
    """

    body: Union[bytes, bytearray] = b""
    # No Content-Type is invented for a relayed answer that has none (a
    # browser would render model output as HTML); llmhop's own answers set one.
    defaultContentType = None
    model: Optional[str] = None
    # The route's config key (a model name or a prefix pattern): the metrics' label.
    # A fallback's, once the request falls back.
    route: Optional[str] = None
    # The fallback route that answered instead of the model's own, if any.
    fallback: Optional[str] = None
    # Where a big body's top-level messages/prompt/input/user lie (its model
    # scan found them); None: not scanned.
    spans: Optional[Spans] = None
    # Route name → the affinity key's digest under that route's policy.
    affinity: Mapping[str, bytes] = {}
    # What the backend is asked for instead of C{uri} (after its URL's
    # prefix): /<rest> of a /route/<model>/<rest> request.  None: C{uri}.
    forward_target: Optional[bytes] = None
    # Access-Control-Allow-Origin for every answer, when the Origin is allowed (SPEC §7, llmhop.cors).
    cors_origin: Optional[bytes] = None
    # A CORS preflight from an allowed origin: llmhop answers it, without auth.
    preflight = False
    # The URL of the replica that answered, once one did.
    replica: Optional[str] = None
    # Its OpenTelemetry span, when tracing is configured (llmhop.tracing).
    span: Optional["RequestSpan"] = None
    _request_id: Optional[bytes] = None
    # The client's token, once its head passed the screen (L{llmhop.auth.ANYONE} without auth).
    token: Optional[ClientToken] = None
    outcome = Outcome.NORMAL
    first_byte: Optional[float] = None
    channel: "GatewayChannel"

    def __init__(self, channel: "GatewayChannel", queued: object = None) -> None:
        super().__init__(channel, queued)
        self.started = time.monotonic()
        # The body so far; None once it is complete (then it is in C{body}).
        self._buffer: Optional[bytearray] = bytearray()
        # Kept: the channel is gone by the time a lost request is logged.
        self._site: GatewaySite = channel.site
        # Counted by the site from requestReceived until logged.
        self._in_flight = False
        self._logged = False

    @property
    def draining(self) -> bool:
        """Whether this process is stopping (C{/ready} says so)."""
        return self._site.draining

    @property
    def client_host(self) -> Optional[str]:
        """The client's IP address; None on a unix socket, whose peer has none worth naming."""
        return getattr(self.getClientAddress(), "host", None)

    @property
    def token_name(self) -> str:
        """The client token's name, for logs and metrics; empty before the screen or without auth."""
        return "" if self.token is None else self.token.name

    @property
    def gone(self) -> bool:
        """Whether the client has left (see L{internals.client_gone})."""
        return internals.client_gone(self)

    def gotLength(self, length: Optional[int]) -> None:
        self.content = None

    def received(self) -> int:
        """Body bytes received so far."""
        return len(self._buffer) if self._buffer is not None else len(self.body)

    def handleContentChunk(self, data: bytes) -> None:
        # The cap was enforced before these bytes came: by the declared
        # Content-Length, or by the chunk size (llmhop.framing.ChunkedBody).
        if self._buffer is not None:  # None: already answered
            self._buffer += data

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self.method, self.uri, self.clientproto = command, path, version
        self.path, _, query = path.partition(b"?")
        self.args = http.parse_qs(query, 1) if query else {}
        # The bytearray itself: a copy of a 100 MiB body would stall the reactor.
        self.body, self._buffer = self._buffer or b"", None
        self._in_flight = True
        self._site.request_started(self)
        self.process()

    @property
    def request_id(self) -> bytes:
        """The client's C{X-Request-Id} when it is a fair one, else one made here (SPEC §8)."""
        if self._request_id is None:
            self._request_id = request_id_of(self.requestHeaders)
        return self._request_id

    def write(self, data: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = time.monotonic()
            # On every answer: relayed, streamed, or llmhop's own error.
            self.responseHeaders.setRawHeaders(REQUEST_ID_HEADER, [self.request_id])
            if self.cors_origin is not None and not self.preflight:
                self._allow_origin(self.cors_origin)
        # twisted.web writes a response's head and its first bytes separately;
        # corked, they leave in one send (see llmhop.writethrough).
        transport = self.channel.transport if not self.startedWriting and self.channel is not None else None
        if not isinstance(transport, WriteThroughMixin):
            super().write(data)
            return
        transport.cork()
        try:
            super().write(data)
        finally:
            transport.uncork()

    def _allow_origin(self, origin: bytes) -> None:
        """Let the allowed C{origin} read this answer, and caches keep it apart from other origins'."""
        headers = self.responseHeaders
        headers.setRawHeaders(b"Access-Control-Allow-Origin", [origin])
        headers.setRawHeaders(b"Vary", [*(headers.getRawHeaders(b"vary") or ()), b"Origin"])

    def finish(self) -> None:
        super().finish()
        self._log_access()

    def connectionLost(self, reason: Failure) -> None:
        line = self.channel.request_line if self.channel is not None else None
        if self.path is None and line is not None:
            # Lost before the body was in: the request line is still the channel's.
            self.method, self.path = line.method, line.path
        super().connectionLost(reason)
        if not self.outcome:
            self.outcome = Outcome.CLIENT_GONE
        self._log_access()

    def _log_access(self) -> None:
        if self._logged:
            return
        self._logged = True
        if self._in_flight:
            self._site.request_ended(self)
        status = self.code if self.startedWriting else None
        duration = time.monotonic() - self.started
        first_byte = None if self.first_byte is None else self.first_byte - self.started
        token = self.token_name
        self._site.access_log.request(
            Entry(
                self.method,
                self.path,
                self.model,
                status,
                self.sentLength,
                duration,
                first_byte,
                self.outcome,
                self.client_host,
                self.replica,
                self.request_id,
                self.fallback,
                token,
            )
        )
        if self.span is not None:
            self.span.ended(status, self.outcome)
        metrics = self._site.metrics
        if metrics is not None:
            metrics.request_ended(
                self.route or "",
                "-" if status is None else str(status),
                duration,
                first_byte,
                self.received(),
                self.sentLength,
                token,
            )


class GatewayChannel(http.HTTPChannel):
    """Screens headers, and gives each request a deadline for arriving.

    The idle timeout alone would let a client keep a connection forever by
    sending a byte now and then; the deadline bounds the whole request head,
    and the body by a minimum average rate.

    @ivar _state: where the request under way is, one of:
        - C{IDLE}: no request line yet on this connection (the head deadline runs);
        - C{HEAD}: its request line is in, its fields arrive (C{_fields}
          collects the framing ones; the head deadline runs);
        - C{BODY}: its head passed the screen, the body arrives (C{_body}
          frames it when there is one; the body deadline runs from
          C{_body_started});
        - C{HANDLED}: all of it is in and with the resource (no deadline: the
          idle timeout waits for the next request line, which goes to C{HEAD});
        - C{REJECTED}: answered early; nothing more is parsed, the write side
          is shut and the connection aborted after C{LINGER_SECONDS}
          (C{_lingering}).  Final.
    @ivar request_line: the request line under way, as llmhop recorded it.
    """

    IDLE, HEAD, BODY, HANDLED, REJECTED = "IDLE", "HEAD", "BODY", "HANDLED", "REJECTED"

    site: "GatewaySite"
    # TCP, UNIX or TLS: each can be aborted (ITCPTransport names the method).
    transport: ITCPTransport
    _state = IDLE
    request_line: Optional[framing.RequestLine] = None
    _deadline = None
    _body_started = 0.0
    _lingering = None
    # The head under way as the stock parser counts it, and whether the one
    # empty line it skips before a request line has come.
    _head_bytes = 0
    _head_fields = 0
    _blank_lines = 0
    # The framing fields of the head under way (HEAD), then the reader of its
    # body (BODY): llmhop frames bodies itself, never Twisted (see llmhop.framing).
    _fields: Optional[framing.FramingFields] = None
    _body: Union[framing.ChunkedBody, framing.ContentLengthBody, None] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.accepting.opened()
        self._arm(self.site.timeouts.requestHead)
        # Server-sent events are many small writes; Nagle would hold them back.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.site.reactor.callLater(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._state == self.IDLE or not self.requests:
            self.transport.abortConnection()
            return
        request = self.requests[-1]
        if self._state == self.BODY:
            # The body may take longer if it keeps arriving at a fair rate.
            allowed = self.site.timeouts.requestBody + request.received() / BODY_BYTES_PER_SECOND
            remaining = self._body_started + allowed - self.site.reactor.seconds()
            if remaining > 0:
                self._arm(remaining)
                return
        request.outcome = Outcome.CLIENT_TOO_SLOW
        self.reject(request, errors.request_timeout())

    def lineReceived(self, line: bytes) -> None:
        if self._state == self.REJECTED:
            return
        if self._state in (self.IDLE, self.HANDLED):
            # After a last request (not persistent) the stock parser drops what follows.
            if self.persistent and not self._request_line_passes(line):
                return
        elif self._state == self.HEAD and not self._field_line_passes(line):
            return
        pending = len(self.requests)
        super().lineReceived(line)
        # The stock parser starts a request on its request line.
        # (FileDescriptor and TLSMemoryBIOProtocol have disconnecting; ITransport does not say so.)
        closing = self.transport.disconnecting  # type: ignore[attr-defined]
        if len(self.requests) > pending and self._state != self.REJECTED and not closing:
            self._request_line_received(line)

    def _request_line_passes(self, line: bytes) -> bool:
        """Refuse a bad request line before the stock parser, which would
        answer a bare C{400 Bad Request}; start counting the head."""
        if not line and not self._blank_lines:
            # The stock parser skips one empty line before a request line
            # (RFC 9112 §2.2), and takes a second one for a request line.
            self._blank_lines = 1
            return True
        self._blank_lines = 0
        try:
            # Stricter than Twisted's parser, which splits on any white space
            # (22.4 takes "GET\t/x\rHTTP/1.1") and would answer "TTP/1.1".
            framing.check_request_line(line)
        except framing.FramingError as e:
            self._refuse_request_line(line, e.error)
            return False
        self._head_bytes, self._head_fields = len(line), 0
        return True

    def _field_line_passes(self, line: bytes) -> bool:
        """Refuse a bad field line, or one past the head's limits.

        The limits are the stock parser's own (C{totalHeadersSize} counted as
        it counts, C{maxHeaders} over every field line, which it counts among
        fewer); checked first, they are answered in JSON, not with its bare 400.
        """
        self._head_bytes += len(line)
        if not line:
            return True  # the end of the head
        self._head_fields += 1
        if self._head_bytes > self.totalHeadersSize or self._head_fields > self.maxHeaders:
            self.reject(self.requests[-1], self._head_too_large())
            return False
        try:
            framing.check_field_line(line)
        except framing.FramingError as e:
            self.reject(self.requests[-1], e.error)
            return False
        return True

    def _head_too_large(self) -> errors.ApiError:
        return errors.head_too_large(self.totalHeadersSize, self.maxHeaders)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line over C{MAX_LENGTH}, on which LineReceiver would close without a word."""
        if self._state == self.HEAD:
            self.reject(self.requests[-1], self._head_too_large())
        elif self._state in (self.IDLE, self.HANDLED) and self.persistent:
            self._refuse_request_line(line, errors.uri_too_long(self.MAX_LENGTH))
        else:
            super().lineLengthExceeded(line)

    def _refuse_request_line(self, line: bytes, error: errors.ApiError) -> None:
        """Answer a request whose line the stock parser never saw, so never started."""
        request = self.requestFactory(self, len(self.requests))
        assert isinstance(request, GatewayRequest), "a GatewaySite makes GatewayRequests"
        self.requests.append(request)
        self.request_line = framing.split_request_line(line)
        self.reject(request, error)

    def _request_line_received(self, line: bytes) -> None:
        first = self._state == self.IDLE
        self.request_line = framing.split_request_line(line)
        self._state, self._fields = self.HEAD, framing.FramingFields()
        if not first:
            # A further request on a kept-alive connection gets its own
            # deadline; the first one's started when the connection did.
            self._arm(self.site.timeouts.requestHead)

    def headerReceived(self, line: bytes) -> bool:
        """Keep the framing fields to llmhop (L{llmhop.framing}); the rest goes to Twisted."""
        fields = self._fields
        if self._state != self.HEAD or fields is None:
            return False
        try:
            name, value = framing.split_field(line)
        except framing.FramingError as e:
            self.reject(self.requests[-1], e.error)
            return False
        if name == b"content-length":
            fields.content_length.append(value)
            return True
        if name == b"transfer-encoding":
            fields.transfer_encoding.append(value)
            return True
        if name == b"host":
            fields.hosts += 1
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        request, line, fields = self.requests[-1], self.request_line, self._fields
        assert line is not None and fields is not None, "a head ends only in HEAD"
        self._fields = None
        try:
            fields.check_host(line.version)
            length = fields.body_length(line.version)
        except framing.FramingError as e:
            self.reject(request, e.error)
            return
        declared = length if isinstance(length, int) else None
        error = self.site.screen(request, line, declared)
        if error is not None:
            self.reject(request, error)
            return
        self._state, self._body_started = self.BODY, self.site.reactor.seconds()
        self._arm(self.site.timeouts.requestBody)
        if declared is None:  # chunked
            self.length = None  # not 0: the stock code then reads a body
            cap, deliver = self.site.max_body_bytes, request.handleContentChunk
            self._body = framing.ChunkedBody(cap, deliver, self._body_done, self._body_failed)
        elif declared:
            self.length = declared
            self._body = framing.ContentLengthBody(declared, request.handleContentChunk, self._body_done)
        # Only now may the stock code send "100 Continue".
        super().allHeadersReceived()

    def _body_done(self, rest: bytes) -> None:
        self._body = None
        if self._state == self.REJECTED:
            return
        self.allContentReceived()
        if rest:
            # A pipelined request: LineReceiver parses it in turn, or the
            # stock channel keeps it until this request is answered.
            self.dataReceived(rest)

    def _body_failed(self, error: framing.FramingError) -> None:
        self._body = None
        if self._state != self.REJECTED:
            self.reject(self.requests[-1], error.error)

    def reject(self, request: GatewayRequest, error: errors.ApiError) -> None:
        """Answer C{request} (whose body is not all in) now, and close the connection."""
        line = self.request_line
        assert line is not None, "only a request with a request line is answered"
        self._disarm()
        # The request line is the channel's until the body is complete.
        request.method, request.uri, request.path = line.method, line.target, line.path
        # Twisted answers in the request's version: never in "TTP/1.1" or "HTTP/2.0".
        request.clientproto = line.answer_version
        self._state = self.REJECTED
        self.persistent = False
        self.setRawMode()
        request.setHeader(b"Connection", b"close")
        errors.respond(request, error)

    def loseConnection(self) -> None:
        if self._state != self.REJECTED:
            super().loseConnection()
            return
        transport = self.transport
        # What the stock loseConnection does first: the transport stops
        # pausing this channel (HTTPChannel registered itself with it).
        if IConsumer.providedBy(transport):
            transport.unregisterProducer()
        # A UNIX or TLS transport may not half-close.
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is None:
            transport.loseConnection()
            return
        lose_write()
        self._lingering = self.site.reactor.callLater(LINGER_SECONDS, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.accepting.closed()
        self._disarm()
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        super().connectionLost(reason)

    def rawDataReceived(self, data: bytes) -> None:
        if self._state == self.REJECTED:
            return  # once answered early, nothing the client still sends is parsed
        if self._body is not None:
            self._body.feed(data)
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._state != self.REJECTED:
            self._state = self.HANDLED
            self._disarm()
            super().allContentReceived()


class ScreeningResource(resource.Resource):
    """The resource a L{GatewaySite} serves: one that can answer a request from its head alone.

    L{llmhop.gateway.Gateway} is the one llmhop serves; the site knows it
    only by this, so that the dependency runs one way.
    """

    max_body_bytes: int

    def screen(
        self, request: GatewayRequest, line: framing.RequestLine, length: Optional[int]
    ) -> Optional[errors.ApiError]:
        """The answer to a request that must not get past its head (target, auth, declared size), or None.

        It may note on C{request} what it learnt (the client's token).
        """
        raise NotImplementedError


class GatewaySite(server.Site):
    """The listening side's factory: what every channel and request of one process shares.

    @ivar gateway: the resource; a reload swaps it (L{replace}), and requests
        under way keep the one they started with.
    @ivar in_flight: the requests between their last body byte and their
        access line: what a graceful stop waits for (L{drained}).
    @ivar draining: a stop has begun: C{/ready} answers 503 while requests
        are still served (SPEC §6, C{timeouts.drainDelay}).
    @ivar accepting: counts the client connections, and pauses accepting
        at the process's limit once the service has fitted it.
    """

    # Twisted's stubs type these as its own classes' constructors.
    protocol = GatewayChannel  # type: ignore[assignment]
    requestFactory = GatewayRequest  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        gateway: "ScreeningResource",
        config: configlib.Config,
        reactor: IReactorTime,
        access_log: Optional[AccessLog] = None,
        metrics: Optional[Metrics] = None,
    ) -> None:
        super().__init__(gateway, timeout=config.timeouts.idle, reactor=reactor)
        self.reactor: IReactorTime = reactor
        self.access_log = access_log or AccessLog()
        # Outlives reloads: counters go on counting.
        self.metrics = metrics
        self.gateway = gateway
        self._configure(config)
        self.in_flight: set[GatewayRequest] = set()
        self.accepting = Accepting(reactor)
        self._drained: Optional[defer.Deferred] = None
        self.draining = False

    @property
    def max_body_bytes(self) -> int:
        return self.gateway.max_body_bytes

    def screen(
        self, request: GatewayRequest, line: framing.RequestLine, length: Optional[int]
    ) -> Optional[errors.ApiError]:
        """The answer to a request that must not get past its head, or None (L{ScreeningResource.screen})."""
        return self.gateway.screen(request, line, length)

    def log(self, request: http.Request) -> None:
        """The access log is GatewayRequest's: it also covers aborted requests."""

    def request_started(self, request: GatewayRequest) -> None:
        self.in_flight.add(request)

    def request_ended(self, request: GatewayRequest) -> None:
        self.in_flight.discard(request)
        if not self.in_flight and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def replace(self, gateway: "ScreeningResource", config: configlib.Config) -> None:
        """Serve new requests with C{gateway}; those under way keep the one they started with."""
        self.gateway = self.resource = gateway
        self._configure(config)

    def _configure(self, config: configlib.Config) -> None:
        """What the site takes from the config, at start and on each reload."""
        self.timeouts = config.timeouts
        self.access_log.json = config.access_log_format == "json"
        self.timeOut = config.timeouts.idle

    def drained(self) -> defer.Deferred:
        """Fires once no request is in flight."""
        if not self.in_flight:
            return defer.succeed(None)
        if self._drained is None:
            self._drained = defer.Deferred()
        return self._drained
