"""Receiving a request: headers screened first, then the body collected in memory.

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
"""

import re
import time
from typing import Optional, Union

from twisted.web import http, server

from llmhop import errors, framing
from llmhop.accesslog import Outcome

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

    body = b""
    # No Content-Type is invented for a relayed answer that has none (a
    # browser would render model output as HTML); llmhop's own answers set one.
    defaultContentType = None
    model: Optional[str] = None
    # The route's config key (a model name or a prefix pattern): the metrics' label.
    route: Optional[str] = None
    outcome = Outcome.NORMAL
    first_byte: Optional[float] = None
    _site = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()
        self._buffer: Optional[bytearray] = bytearray()
        self._logged = False
        # Kept: the channel is gone by the time a lost request is logged.
        self._access_log = self.channel.site.access_log
        self._metrics = self.channel.site.metrics

    @property
    def gone(self) -> bool:
        """Whether the client has left: Twisted's C{Request._disconnected}, read here alone.

        twisted.web has no public flag for it (C{notifyFinish} fires once, for
        a callback); tests/test_channel.py pins the attribute.
        """
        return self._disconnected

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
        self.body, self._buffer = self._buffer, None
        self._site = self.channel.site
        self._site.request_started(self)
        self.process()

    def write(self, data: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = time.monotonic()
        # twisted.web writes a response's head and its first bytes separately;
        # corked, they leave in one send (see llmhop.writethrough).
        transport = self.channel.transport if not self.startedWriting and self.channel is not None else None
        cork = getattr(transport, "cork", None)
        if cork is None:
            super().write(data)
            return
        cork()
        try:
            super().write(data)
        finally:
            transport.uncork()

    def finish(self) -> None:
        super().finish()
        self._log_access()

    def connectionLost(self, reason) -> None:
        if self.path is None and self.channel is not None:
            # Lost before the body was in: the request line is still the channel's.
            self.method = getattr(self.channel, "_command", self.method)
            self.path = getattr(self.channel, "_path", b"-").partition(b"?")[0]
        super().connectionLost(reason)
        if not self.outcome:
            self.outcome = Outcome.CLIENT_GONE
        self._log_access()

    def _log_access(self) -> None:
        if self._logged:
            return
        self._logged = True
        if self._site is not None:
            self._site.request_ended(self)
        method = _printable(self.method)
        path = _printable(self.path if self.path is not None else b"-")
        model = _printable(self.model.encode("utf-8", "replace")) if self.model is not None else "-"
        status = self.code if self.startedWriting else "-"
        duration = time.monotonic() - self.started
        # Formatted here, in one step: twisted.logger's formatter is pure
        # Python per field.  The fields stay in the event for structured observers.
        line = "%s %s model=%s status=%s bytes=%d duration=%.3fs%s" % (
            method,
            path,
            model,
            status,
            self.sentLength,
            duration,
            " aborted=" + self.outcome if self.outcome else "",
        )
        self._access_log(
            line,
            method=method,
            path=path,
            model=model,
            status=status,
            bytes=self.sentLength,
            duration=duration,
            outcome=self.outcome,
        )
        if self._metrics is not None:
            self._metrics.request_ended(
                self.route or "",
                str(status),
                duration,
                None if self.first_byte is None else self.first_byte - self.started,
                self.received(),
                self.sentLength,
            )


_UNPRINTABLE = re.compile(rb"[^\x21-\x7e]|\\")


def _printable(value: bytes) -> str:
    """Log-safe text: a client must not be able to forge log lines."""
    return _UNPRINTABLE.sub(lambda m: b"\\x%02x" % (m.group()[0],), value[:512]).decode("ascii")


class GatewayChannel(http.HTTPChannel):
    """Screens headers, and gives each request a deadline for arriving.

    The idle timeout alone would let a client keep a connection forever by
    sending a byte now and then; the deadline bounds the whole request head,
    and the body by a minimum average rate.
    """

    _rejected = False
    _deadline = None
    _body_started = 0.0
    _started_requests = 0
    _lingering = None
    # The framing fields of the request head under way (None outside a head),
    # then the reader of its body (None outside a body): llmhop frames bodies
    # itself, never Twisted (see llmhop.framing).
    _fields: Optional[framing.FramingFields] = None
    _body: Union[framing.ChunkedBody, framing.ContentLengthBody, None] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm(self.site.timeouts.requestHead)
        # Server-sent events are many small writes; Nagle would hold them back.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.callLater(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        request = self.requests[-1] if self.requests else None
        if request is None or not hasattr(self, "_command"):
            self.transport.abortConnection()
            return
        if self._body_started:
            # The body may take longer if it keeps arriving at a fair rate.
            allowed = self.site.timeouts.requestBody + request.received() / BODY_BYTES_PER_SECOND
            remaining = self._body_started + allowed - self.site.reactor.seconds()
            if remaining > 0:
                self._arm(remaining)
                return
        request.outcome = Outcome.CLIENT_TOO_SLOW
        self.reject(request, errors.request_timeout())

    def lineReceived(self, line: bytes) -> None:
        if self._rejected:
            return
        if self._fields is not None and line:
            # A field line of the head under way; the empty line ends it.
            try:
                framing.check_field_line(line)
            except framing.FramingError as e:
                self.reject(self.requests[-1], e.error)
                return
        pending = len(self.requests)
        super().lineReceived(line)
        if len(self.requests) > pending and not self._rejected and not self.transport.disconnecting:
            self._request_line_received(line)

    def _request_line_received(self, line: bytes) -> None:
        try:
            # Stricter than Twisted's parser, which splits on any white space
            # (22.4 takes "GET\t/x\rHTTP/1.1") and would answer "TTP/1.1".
            framing.check_request_line(line)
        except framing.FramingError as e:
            self.reject(self.requests[-1], e.error)
            return
        self._fields = framing.FramingFields()
        self._started_requests += 1
        if self._started_requests > 1:
            # A further request on a kept-alive connection gets its own
            # deadline; the first one's started when the connection did.
            self._body_started = 0.0
            self._arm(self.site.timeouts.requestHead)

    def headerReceived(self, line: bytes) -> bool:
        """Keep the framing fields to llmhop (L{llmhop.framing}); the rest goes to Twisted."""
        fields = self._fields
        if self._rejected or fields is None:
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
        request = self.requests[-1]
        fields, self._fields = self._fields, None
        try:
            fields.check_host(self._version)
            length = fields.body_length(self._version)
        except framing.FramingError as e:
            self.reject(request, e.error)
            return
        declared = None if length == framing.CHUNKED else length
        error = self.site.gateway.screen(self._path, request.requestHeaders, declared)
        if error is not None:
            self.reject(request, error)
            return
        self._body_started = self.site.reactor.seconds()
        self._arm(self.site.timeouts.requestBody)
        if length == framing.CHUNKED:
            self.length = None  # not 0: the stock code then reads a body
            cap, deliver = self.site.gateway.max_body_bytes, request.handleContentChunk
            self._body = framing.ChunkedBody(cap, deliver, self._body_done, self._body_failed)
        elif length:
            self.length = length
            self._body = framing.ContentLengthBody(length, request.handleContentChunk, self._body_done)
        # Only now may the stock code send "100 Continue".
        super().allHeadersReceived()

    def _body_done(self, rest: bytes) -> None:
        self._body = None
        if self._rejected:
            return
        self.allContentReceived()
        if rest:
            # A pipelined request: LineReceiver parses it in turn, or the
            # stock channel keeps it until this request is answered.
            self.dataReceived(rest)

    def _body_failed(self, error: framing.FramingError) -> None:
        self._body = None
        if not self._rejected:
            self.reject(self.requests[-1], error.error)

    def reject(self, request: GatewayRequest, error: errors.ApiError) -> None:
        """Answer C{request} (whose body is not all in) now, and close the connection."""
        self._disarm()
        # The request line is the channel's until the body is complete.
        request.method, request.uri = self._command, self._path
        # Twisted answers in the request's version: never in "TTP/1.1" or "HTTP/2.0".
        request.clientproto = self._version if self._version in framing.VERSIONS else b"HTTP/1.1"
        request.path = self._path.partition(b"?")[0]
        self._rejected = True
        self.persistent = False
        self.setRawMode()
        request.setHeader(b"Connection", b"close")
        errors.respond(request, error)

    def loseConnection(self) -> None:
        if not self._rejected:
            return super().loseConnection()
        self._networkProducer.unregisterProducer()
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is None:
            return self.transport.loseConnection()
        lose_write()
        self._lingering = self.callLater(LINGER_SECONDS, self.transport.abortConnection)
        return None

    def connectionLost(self, reason) -> None:
        self._disarm()
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        super().connectionLost(reason)

    def rawDataReceived(self, data: bytes) -> None:
        if self._rejected:
            return  # once answered early, nothing the client still sends is parsed
        if self._body is not None:
            self._body.feed(data)
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if not self._rejected:
            self._disarm()
            super().allContentReceived()
