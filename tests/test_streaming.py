"""Streaming (SPEC §2.6–§2.7): no added buffering, backpressure, cancellation, aborts."""

import json
import socket
import time

import treq
from pytest_twisted import inlineCallbacks
from twisted.internet import threads

from tests import rawhttp
from tests.helpers import wait_for


def sse_request(test_id, **script):
    body = json.dumps({"model": "m", "stream": True, "script": script}).encode()
    return rawhttp.request(b"POST", b"/v1/chat/completions", body, headers=[(b"X-Test-Id", test_id.encode())])


@inlineCallbacks
def test_events_arrive_as_the_backend_sends_them(router):
    # With a usage event at the end: keeping the answer's tail for it (SPEC §8)
    # must not hold anything back.
    arrivals = []
    usage = {"prompt_tokens": 3, "completion_tokens": 5}
    body = json.dumps(
        {"model": "m", "stream": True, "script": {"kind": "sse", "n": 5, "interval": 0.2, "usage": usage}}
    )
    response = yield treq.post(router.url + "/v1/chat/completions", body.encode(), unbuffered=True)
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    yield treq.collect(response, lambda chunk: arrivals.append((time.time(), chunk)))
    events, buffer = [], b""
    for arrived, chunk in arrivals:
        *complete, buffer = (buffer + chunk).split(b"\n\n")
        for line in complete:
            if line.startswith(b'data: {"i"'):
                events.append((arrived, json.loads(line[len(b"data: ") :])))
    assert [e["i"] for _, e in events] == [0, 1, 2, 3, 4]
    # Each event reaches the client promptly, long before the stream ends.
    for arrived, event in events:
        assert arrived - event["sent"] < 0.1, (arrived - event["sent"], event["i"])
    assert events[0][0] < events[-1][1]["sent"] - 0.5


@inlineCallbacks
def test_slow_client_pauses_the_backend(router, backend):
    size = 128 * 1024 * 1024
    body = json.dumps({"model": "m", "script": {"kind": "big", "size": size}}).encode()
    raw = rawhttp.request(b"POST", b"/v1/files", body, headers=[(b"X-Test-Id", b"big")])

    def start():
        sock = socket.create_connection(("127.0.0.1", router.port))
        sock.sendall(raw)
        return sock, rawhttp.read_until(sock, b"\r\n\r\n")

    sock, head = yield threads.deferToThread(start)
    try:
        assert head.startswith(b"HTTP/1.1 200")
        # The client reads nothing more: the backend must come to a stop.
        history = []

        def stalled():
            history.append(backend.events["big"].get("written", 0))
            return len(history) > 30 and history[-1] == history[-30]

        yield wait_for(stalled, timeout=20, interval=0.02)
        assert backend.events["big"]["written"] < 48 * 1024 * 1024

        def drain():
            return len(rawhttp.read_response_body_after_head(sock, head, timeout=30))

        received = yield threads.deferToThread(drain)
        assert received == size
    finally:
        sock.close()


@inlineCallbacks
def test_client_leaving_before_headers_cancels_the_backend_request(router, backend):
    sock = yield threads.deferToThread(socket.create_connection, ("127.0.0.1", router.port))
    yield threads.deferToThread(sock.sendall, sse_request("early", kind="hang"))
    yield wait_for(lambda: "early" in backend.events)
    closed = time.time()
    sock.close()
    lost = yield wait_for(lambda: backend.events["early"]["lost"], timeout=1.0)
    assert lost - closed < 1.0


@inlineCallbacks
def test_client_leaving_mid_stream_cancels_the_backend_request(router, backend):
    def start():
        sock = socket.create_connection(("127.0.0.1", router.port))
        sock.sendall(sse_request("mid", kind="sse", n=10000, interval=0.01))
        rawhttp.read_until(sock, b"data: {")
        return sock

    sock = yield threads.deferToThread(start)
    closed = time.time()
    sock.close()
    lost = yield wait_for(lambda: backend.events["mid"]["lost"], timeout=1.0)
    assert lost - closed < 1.0


@inlineCallbacks
def test_backend_dying_mid_stream_aborts_the_client_connection(router):
    response = yield threads.deferToThread(
        rawhttp.exchange_until_closed, router.port, sse_request("die", kind="die", n=3, interval=0.01)
    )
    head, body = rawhttp.split(response)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding: chunked" in head
    assert body.count(b"data: {") == 3
    # Never the last chunk: the client must see an incomplete response.
    assert not body.endswith(b"0\r\n\r\n")


@inlineCallbacks
def test_complete_stream_ends_cleanly(router):
    response = yield threads.deferToThread(
        rawhttp.exchange, router.port, sse_request("ok", kind="sse", n=3, interval=0)
    )
    head, body = rawhttp.split(response)
    assert body.count(b"data: {") == 3
    assert body.endswith(b"0\r\n\r\n")


@inlineCallbacks
def test_client_leaving_during_upload_is_logged_and_not_forwarded(router, backend):
    from twisted.logger import globalLogPublisher

    lines = []

    def observe(event):
        if event.get("log_namespace") == "llmhop.access":
            lines.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Test-Id: upload\r\nContent-Length: 1000\r\n\r\n"

        def send_half():
            with socket.create_connection(("127.0.0.1", router.port)) as sock:
                sock.sendall(head + b'{"model": "m", ')

        yield threads.deferToThread(send_half)
        yield wait_for(lambda: lines)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert (lines[0]["method"], lines[0]["path"]) == ("POST", "/v1/chat/completions")
    assert lines[0]["outcome"] == "client-gone"
    assert lines[0]["line"].endswith(" aborted=client-gone")
    assert lines[0]["status"] is None
    assert "upload" not in backend.events
