"""Early answers from the headers alone (SPEC §2.2–§2.3): auth and the body cap."""

import contextlib
import json
import socket

import pytest
import treq
from pytest_twisted import inlineCallbacks
from twisted.internet import threads

from tests import rawhttp

CAP = 4096


@pytest.fixture
def capped(make_router, backend):
    return make_router({"maxBodyBytes": CAP, "models": {"m": {"url": backend.url}}})


@pytest.fixture
def guarded(make_router, backend):
    return make_router({"authTokens": ["tok-1", "tok-2"], "models": {"m": {"url": backend.url}}})


def head_then_wait(port, head, then_send=b"", timeout=5.0):
    """Send only C{head}; read the response before any body is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        response = rawhttp.read_response(sock, timeout)
        if then_send:
            with contextlib.suppress(OSError):
                sock.sendall(then_send)
        return response


def chat_body(size=0, model="m"):
    return json.dumps({"model": model, "pad": "x" * size}).encode()


@inlineCallbacks
def test_oversized_content_length_is_413_before_the_body_without_100_continue(capped, backend):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Test-Id: big\r\n"
        b"Content-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n"
    )
    response = yield threads.deferToThread(head_then_wait, capped.port, head)
    assert b"100 Continue" not in response
    assert rawhttp.status(response) == 413
    assert b"Connection: close" in response
    assert json.loads(rawhttp.split(response)[1])["error"]["code"] == "request_too_large"
    assert "big" not in backend.events


@inlineCallbacks
def test_413_reaches_a_client_that_sends_its_whole_body_first(capped):
    # A naive client sends everything before it reads.  Closing on it with its
    # body unread would make the kernel reset the connection and lose the 413.
    raw = rawhttp.request(b"POST", b"/v1/chat/completions", chat_body(64 * 1024 * 1024))

    def send_all_then_read():
        with socket.create_connection(("127.0.0.1", capped.port), timeout=5) as sock:
            sock.sendall(raw)
            return rawhttp.read_response(sock)

    response = yield threads.deferToThread(send_all_then_read)
    assert rawhttp.status(response) == 413


@inlineCallbacks
def test_body_at_the_cap_is_accepted_and_one_byte_more_is_not(capped):
    body = chat_body()
    body = body[:-2] + b"x" * (CAP - len(body)) + body[-2:]
    assert len(body) == CAP
    response = yield treq.post(capped.url + "/v1/chat/completions", body)
    assert response.code == 200
    response = yield treq.post(capped.url + "/v1/chat/completions", body[:-2] + b"x" + body[-2:])
    assert response.code == 413


@inlineCallbacks
def test_chunked_body_is_cut_off_at_the_cap(capped, backend):
    payload = chat_body(CAP * 2)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(payload[i : i + 1000]), payload[i : i + 1000]) for i in range(0, len(payload), 1000)
    )
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Test-Id: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    response = yield threads.deferToThread(rawhttp.exchange_until_closed, capped.port, raw)
    assert rawhttp.status(response) == 413
    assert "chunked" not in backend.events


@inlineCallbacks
def test_chunked_body_under_the_cap_is_forwarded_with_a_content_length(capped):
    payload = chat_body(100)
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    )
    response = yield threads.deferToThread(rawhttp.exchange, capped.port, raw)
    seen = json.loads(rawhttp.split(response)[1])
    assert ["Content-Length", str(len(payload))] in seen["headers"]
    assert not any(name.lower() == "transfer-encoding" for name, _ in seen["headers"])


@inlineCallbacks
def test_accepted_request_gets_100_continue(capped):
    body = chat_body()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (
        len(body),
    )

    def talk():
        with socket.create_connection(("127.0.0.1", capped.port), timeout=5) as sock:
            sock.sendall(head)
            interim = rawhttp.read_until(sock, b"\r\n\r\n")
            sock.sendall(body)
            return interim, rawhttp.read_response(sock)

    interim, response = yield threads.deferToThread(talk)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    assert rawhttp.status(response) == 200
    assert not any(name.lower() == "expect" for name, _ in json.loads(rawhttp.split(response)[1])["headers"])


@inlineCallbacks
def test_failed_auth_is_401_before_the_body_without_100_continue(guarded, backend):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nX-Test-Id: unauth\r\n"
        b"Content-Length: 50000000\r\nExpect: 100-continue\r\n\r\n"
    )
    response = yield threads.deferToThread(head_then_wait, guarded.port, head)
    assert b"100 Continue" not in response
    assert rawhttp.status(response) == 401
    assert b"WWW-Authenticate: Bearer" in response
    assert json.loads(rawhttp.split(response)[1])["error"]["code"] == "invalid_api_key"
    assert "unauth" not in backend.events


@pytest.mark.parametrize(
    "authorization, code",
    [
        (None, 401),
        ("Bearer tok-1", 200),
        ("Bearer tok-2", 200),
        ("bearer tok-1", 200),
        ("BEARER tok-2", 200),
        ("Bearer tok-3", 401),
        ("Bearer tok-", 401),
        ("Bearer tok-1x", 401),
        ("Basic tok-1", 401),
        ("tok-1", 401),
        ("Bearer", 401),
    ],
)
@inlineCallbacks
def test_bearer_tokens(guarded, authorization, code):
    headers = {"Authorization": authorization} if authorization else {}
    response = yield treq.post(guarded.url + "/v1/chat/completions", chat_body(), headers=headers)
    assert response.code == code
    if code == 401:
        assert response.headers.getRawHeaders("www-authenticate") == ["Bearer"]
    yield response.content()
    response = yield treq.get(guarded.url + "/v1/models", headers=headers)
    assert response.code == code
    yield response.content()


@inlineCallbacks
def test_health_needs_no_token_and_the_token_is_not_forwarded(guarded):
    for path in ("/health", "/healthz"):
        response = yield treq.get(guarded.url + path)
        assert response.code == 200
        yield response.content()
    response = yield treq.post(guarded.url + "/v1/x", chat_body(), headers={"Authorization": "Bearer tok-1"})
    seen = yield response.json()
    assert not any(name.lower() == "authorization" for name, _ in seen["headers"])


@inlineCallbacks
def test_two_authorization_headers_are_refused(guarded):
    raw = rawhttp.request(
        b"GET", b"/v1/models", headers=[(b"Authorization", b"Bearer tok-1"), (b"Authorization", b"Bearer tok-2")]
    )
    response = yield threads.deferToThread(rawhttp.exchange, guarded.port, raw)
    assert rawhttp.status(response) == 401


@inlineCallbacks
def test_keep_alive_connection_serves_several_requests(router):
    body = chat_body()
    one = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def talk():
        with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
            return [rawhttp.status(rawhttp.read_response(sock)) for _ in range(3) if sock.sendall(one) is None]

    assert (yield threads.deferToThread(talk)) == [200, 200, 200]
