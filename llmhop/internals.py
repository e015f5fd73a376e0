"""The Twisted internals llmhop relies on: here, and in no other module.

Where no public API does what llmhop needs, it reads or replaces a private
name of Twisted's.  Each such name is touched in this module alone
(tests/test_internals.py checks the rest of the package for underscore names
of Twisted's), is checked when this module is imported, and is pinned by a
contract test in tests/test_internals.py.  What a missing name does depends
on what it carries:

- Behaviour (the client's checks, a client that left, the TLS context of an
  inherited socket): the import fails, naming what is missing.  A degraded
  fallback would silently relay what llmhop must not, or keep forwarding for
  a client that left.
- Speed only (write-through): L{WRITE_QUEUE_VISIBLE} is False, the
  optimisation is off and Twisted's transports are used as they are.
"""

from collections.abc import Sequence
from typing import Callable, Optional

from twisted.internet import abstract
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from twisted.web import http
from twisted.web._newclient import HTTP11ClientProtocol, HTTPClientParser, HTTPParser, Request
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http_headers import Headers

__all__ = [
    "HTTP11ClientProtocol",
    "HTTPClientParser",
    "Request",
    "HTTP11ClientFactory",
    "WRITE_QUEUE_VISIBLE",
    "client_gone",
    "connection_field",
    "nothing_queued",
    "pending_parser",
    "quiescent_callback",
    "set_connection_factory",
    "tls_context_factory",
]

# The client's factory class, subclassed by llmhop.client for a quiet one.
HTTP11ClientFactory = _HTTP11ClientFactory


def _sets(function: Callable[..., object], attribute: str) -> bool:
    """Whether C{function}'s code names C{attribute} (it sets the attribute we read)."""
    return attribute in function.__code__.co_names  # type: ignore[attr-defined]


def required() -> list[tuple[str, bool]]:
    """What behaviour depends on: (the name as an import error gives it, whether this Twisted has it)."""
    return [
        # The stock pool logs two lines per new backend connection ("Starting
        # factory", https://github.com/twisted/twisted/issues/9330, open); the
        # factory is swapped for a quiet one, for which there is no public setter.
        ("HTTPConnectionPool._factory", hasattr(HTTPConnectionPool, "_factory")),
        # The parser of the request under way: where the response's Connection
        # field is kept apart from Response.headers (RFC 9110 §7.6.1 needs it).
        ("HTTP11ClientProtocol._parser", _sets(HTTP11ClientProtocol.request, "_parser")),
        ("HTTPParser.connHeaders", _sets(HTTPParser.connectionMade, "connHeaders")),
        ("_HTTP11ClientFactory._quiescentCallback", _sets(_HTTP11ClientFactory.__init__, "_quiescentCallback")),
        # Whether the client has left: Request has no public flag for it
        # (notifyFinish fires once, for a callback).
        ("Request._disconnected", hasattr(http.Request, "_disconnected")),
        # The TLS context an ssl: listen string loads: a worker wraps the socket
        # it inherits in the same one.  Twisted has no public parser to a context
        # factory (twisted.internet.endpoints._parseSSL is private too).
        ("SSL4ServerEndpoint._sslContextFactory", _sets(SSL4ServerEndpoint.__init__, "_sslContextFactory")),
    ]


# How FileDescriptor queues writes (twisted/internet/abstract.py): a list
# _tempDataBuffer, flushed into the bytes dataBuffer sent from offset;
# _writeDisconnected after loseWriteConnection.  llmhop.writethrough sends
# directly only while that queue is empty.
_WRITE_QUEUE = ("dataBuffer", "offset", "_writeDisconnected", "_tempDataBuffer")


def check() -> None:
    """Fail, naming what is missing, on a Twisted without what behaviour relies on."""
    absent = [name for name, present in required() if not present]
    if absent:
        raise ImportError("llmhop: this Twisted lacks %s" % (", ".join(absent),))


def write_queue_visible() -> bool:
    probe = abstract.FileDescriptor(reactor=object())  # type: ignore[arg-type]
    return all(hasattr(probe, name) for name in _WRITE_QUEUE)


check()
WRITE_QUEUE_VISIBLE = write_queue_visible()
if not WRITE_QUEUE_VISIBLE:
    Logger().warn(
        "this Twisted queues writes differently: responses are sent on the reactor's turn (write-through is off)"
    )


def client_gone(request: http.Request) -> bool:
    """Whether the client of C{request} has left."""
    return bool(request._disconnected)


def set_connection_factory(pool: HTTPConnectionPool, factory: type[_HTTP11ClientFactory]) -> None:
    """Make C{pool} build its backend connections with C{factory}."""
    pool._factory = factory  # type: ignore[attr-defined]


def quiescent_callback(factory: _HTTP11ClientFactory) -> Callable[..., object]:
    """What a protocol built by C{factory} calls when idle, to go back to the pool."""
    return factory._quiescentCallback  # type: ignore[no-any-return]


def pending_parser(protocol: HTTP11ClientProtocol) -> Optional[HTTPClientParser]:
    """The parser of the response C{protocol} awaits; None if the request was refused."""
    return getattr(protocol, "_parser", None)


def connection_field(parser: HTTPParser) -> Optional[Sequence[bytes]]:
    """The response's C{Connection} field values, which Twisted keeps out of C{Response.headers}."""
    headers: Headers = parser.connHeaders
    return headers.getRawHeaders(b"connection")


def tls_context_factory(endpoint: SSL4ServerEndpoint) -> IOpenSSLContextFactory:
    """The TLS context factory an C{ssl:} endpoint string was parsed into."""
    return endpoint._sslContextFactory


def nothing_queued(transport: abstract.FileDescriptor) -> bool:
    """Whether C{transport} holds no byte to send (only when L{WRITE_QUEUE_VISIBLE})."""
    return (
        not transport._writeDisconnected
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    )
