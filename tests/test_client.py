"""llmhop.client on a StringTransport: what it takes from Twisted's client, and what it adds.

The module touches Twisted internals (see its docstring); these tests pin the
behaviour that rests on them, on every Twisted CI runs (22.4 and the newest).
"""

import pytest
from twisted.internet.testing import StringTransport
from twisted.web._newclient import Request
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers

from llmhop import client


def answer(*chunks: bytes) -> list[object]:
    """The result (a Response or a Failure) of one GET on a BackendProtocol fed C{chunks}."""
    protocol = client.BackendProtocol(lambda p: None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    results: list[object] = []
    request = Request(b"GET", b"/", Headers({b"host": [b"x"]}), None, persistent=True)
    protocol.request(request).addBoth(results.append)
    for chunk in chunks:
        protocol.dataReceived(chunk)
    results.append(transport)
    return results


def split_bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


HEAD = b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("chunks", [[HEAD], split_bytewise(HEAD)], ids=["whole", "byte-by-byte"])
def test_the_response_keeps_its_connection_field(chunks):
    response, transport = answer(*chunks)
    assert response.headers.getRawHeaders(b"connection") == [b"X-Secret, keep-alive"]
    assert response.headers.getRawHeaders(b"x-secret") == [b"1"]
    assert not transport.disconnecting


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Bad: a\rb\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nX-Bare-Lf: a\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: a\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["bare-cr", "nul", "bare-lf", "bad-name"],
)
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])
def test_an_unsafe_head_fails_the_request_and_drops_the_connection(head, bytewise):
    failure, transport = answer(*(split_bytewise(head) if bytewise else [head]))
    # Newer Twisted refuses a bad field name itself; 22.4 leaves it to llmhop.
    assert failure.check(ResponseFailed), failure
    assert isinstance(failure.value, client.UnsafeResponseHead) or b"Name" in head, failure.value.reasons
    assert transport.disconnecting
