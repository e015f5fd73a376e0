"""The connections to backends: Twisted's HTTP/1.1 client, with three changes.

The Twisted internals they need are reached through L{llmhop.internals}, which
checks them at import; C{tests/test_client.py} pins how these changes behave.

- The pool's connection factory (C{HTTPConnectionPool._factory}) is replaced:
  the stock one logs two lines for every new backend connection (as Synapse
  found).
- Twisted's client parser keeps the response's C{Connection} field apart
  (C{HTTPParser.connHeaders}), so C{Response.headers} never shows which other
  fields the backend declared hop-by-hop (RFC 9110 §7.6.1), and the relay
  could not remove them.  Each response gets its C{Connection} field back in
  C{headers}, where the relay reads it and never forwards it.
- Twisted's client takes a bare LF as a line end and turns a bare CR in a
  field value into a space, so a response head that other parsers would split
  differently looks clean by the time it is a L{Response}.  The raw head is
  checked as it arrives: CR, LF or NUL anywhere but in CRLF line ends, or a
  field name that is not a token, fails the request with
  L{UnsafeResponseHead} (a L{ResponseFailed}: 502 C{upstream_bad_response})
  and drops the connection; nothing of that answer is relayed (SPEC §5).
"""

import re
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime, ITCPTransport
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseFailed
from twisted.web.iweb import IResponse

from llmhop import internals
from llmhop.framing import TOKEN
from llmhop.internals import HTTP11ClientFactory, HTTP11ClientProtocol, HTTPClientParser, Request

# The end of a response head as Twisted's client finds it (LF line ends, CR optional).
_HEAD_END = re.compile(rb"\n\r?\n")
# CR, LF or NUL outside a CRLF pair.
_UNSAFE_IN_HEAD = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")
# Heads longer than this are not scanned further (Twisted's own limits apply).
_MAX_HEAD = 1024 * 1024


class UnsafeResponseHead(ResponseFailed):
    """The backend's response head holds CR, LF or NUL outside line ends, or a malformed field name."""


class BackendProtocol(HTTP11ClientProtocol):
    """An HTTP/1.1 client connection that checks response heads and keeps their C{Connection} field.

    @ivar _head: the response head received so far, until its end is found;
        None once it was (or while no request is under way).
    @ivar _head_safe: whether the last complete head passed the check.
    """

    # TCP, UNIX or TLS: each can be aborted (ITCPTransport names the method).
    transport: ITCPTransport
    _head: Optional[bytearray] = None
    _head_safe = True

    def request(self, request: Request) -> Deferred:
        self._head, self._head_safe = bytearray(), True
        answered = super().request(request)
        parser = internals.pending_parser(self)
        if parser is not None:  # None: the request was refused (RequestNotSent)
            answered.addCallback(self._checked_response, parser)
        return answered

    def dataReceived(self, data: bytes) -> None:
        if self._head is not None:
            self._scan_head(self._head, data)
        super().dataReceived(data)

    def _scan_head(self, head: bytearray, data: bytes) -> None:
        start = max(0, len(head) - 2)
        head += data
        end = _HEAD_END.search(head, start)
        if end is None and len(head) < _MAX_HEAD:
            return
        complete = head if end is None else head[: end.end()]
        self._head = None
        self._head_safe = _UNSAFE_IN_HEAD.search(complete) is None

    def _checked_response(self, response: IResponse, parser: HTTPClientParser) -> IResponse:
        names_ok = all(TOKEN.fullmatch(name) is not None for name, _ in response.headers.getAllRawHeaders())
        if not (self._head_safe and names_ok):
            self.transport.abortConnection()
            raise UnsafeResponseHead([Failure(ValueError("unsafe response head"))])
        named = internals.connection_field(parser)
        if named:
            response.headers.setRawHeaders(b"connection", named)
        return response


class BackendConnectionFactory(HTTP11ClientFactory):
    noisy = False

    def buildProtocol(self, addr: Optional[IAddress]) -> BackendProtocol:
        return BackendProtocol(internals.quiescent_callback(self))


def build_pool(reactor: IReactorTime, max_persistent: int, keep_alive: float) -> HTTPConnectionPool:
    pool = HTTPConnectionPool(reactor, persistent=True)
    internals.set_connection_factory(pool, BackendConnectionFactory)
    pool.maxPersistentPerHost = max_persistent
    pool.cachedConnectionTimeout = keep_alive  # type: ignore[assignment]  # typed int; seconds work
    return pool


def inner_failures(reason: Failure) -> list[Failure]:
    """The failures a ResponseNeverReceived or RequestTransmissionFailed wraps, else C{reason} itself."""
    return getattr(reason.value, "reasons", None) or [reason]


def describe_failure(reason: Failure) -> str:
    """A backend request's failure in one line, for logs and C{/status}: the wrapped failures' types and messages."""
    return "; ".join("%s: %s" % (f.type.__name__, f.getErrorMessage()) for f in inner_failures(reason))
