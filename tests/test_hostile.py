"""Hostile clients and backends (in process): each must not hurt anyone else.

Every test ends by checking that the router still answers a normal request.
"""

import json
import os
import socket
import time

import pytest
import treq
from pytest_twisted import inlineCallbacks
from twisted.internet import threads

from tests import rawhttp
from tests.helpers import wait_for


@inlineCallbacks
def still_serves(router):
    response = yield treq.post(router.url + "/v1/chat/completions", json.dumps({"model": "m"}).encode())
    assert response.code == 200
    yield response.content()


@pytest.fixture
def strict(make_router, backend):
    return make_router(
        {
            "maxBodyBytes": 256 * 1024 * 1024,
            "timeouts": {"requestHead": 0.5, "requestBody": 0.5, "read": 0.5},
            "models": {"m": {"url": backend.url}},
        }
    )


def trickle(port, head, pieces, interval):
    """Send C{head}, then C{pieces} one by one, until answered; return what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return trickle_on(sock, head, pieces, interval)


def trickle_on(sock, head, pieces, interval):
    sock.sendall(head)
    for piece in pieces:
        try:
            sock.sendall(piece)
        except OSError:
            break
        time.sleep(interval)
        sock.setblocking(False)
        try:
            if sock.recv(1, socket.MSG_PEEK):
                break  # answered
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)
    return rawhttp.read_all(sock, timeout=5)


@inlineCallbacks
def test_slowloris_headers_are_cut_off(strict):
    head = b"POST /v1/chat/completions HTTP/1.1\r\n"
    pieces = [b"X-Slow-%d: 1\r\n" % i for i in range(100)]
    response = yield threads.deferToThread(trickle, strict.port, head, pieces, 0.05)
    # The trickle would last 5 s: a 408 is the head deadline (timed on a clock in test_site.py).
    assert rawhttp.status(response) == 408
    yield still_serves(strict)


@inlineCallbacks
def test_slowloris_on_a_kept_alive_connection_is_cut_off_too(strict):
    body = json.dumps({"model": "m"}).encode()
    first = b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def talk():
        with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
            sock.sendall(first)
            answer = rawhttp.read_response(sock)
            pieces = [b"X-Slow-%d: 1\r\n" % i for i in range(100)]
            return answer, trickle_on(sock, b"POST /v1/x HTTP/1.1\r\n", pieces, 0.05)

    first_answer, second = yield threads.deferToThread(talk)
    assert rawhttp.status(first_answer) == 200
    assert rawhttp.status(second) == 408


@inlineCallbacks
def test_slow_body_is_cut_off(strict, backend):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Test-Id: slowbody\r\nContent-Length: 1000\r\n\r\n"
    response = yield threads.deferToThread(trickle, strict.port, head, [b" "] * 200, 0.05)
    assert rawhttp.status(response) == 408
    assert json.loads(rawhttp.split(response)[1])["error"]["code"] == "request_timeout"
    assert "slowbody" not in backend.events
    yield still_serves(strict)


@inlineCallbacks
def test_a_big_body_at_a_fair_rate_is_not_cut_off(strict):
    # 4 MiB in 1 s: over requestBody (0.5 s), but at a fair rate (4 MiB/s).
    body = json.dumps({"model": "m", "pad": "x" * (4 * 1024 * 1024)}).encode()
    head = b"POST /v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    pieces = [body[i : i + 256 * 1024] for i in range(0, len(body), 256 * 1024)]
    response = yield threads.deferToThread(trickle, strict.port, head, pieces, 1.0 / len(pieces))
    assert rawhttp.status(response) == 200


@inlineCallbacks
def test_backend_silent_mid_stream_aborts_the_client(strict, backend):
    body = json.dumps({"model": "m", "script": {"kind": "hang_mid"}}).encode()
    raw = rawhttp.request(b"POST", b"/v1/chat/completions", body, headers=[(b"X-Test-Id", b"silent")])
    # The backend hangs for good: the connection ends only because the router aborts it.
    response = yield threads.deferToThread(rawhttp.exchange_until_closed, strict.port, raw, 10)
    assert response.startswith(b"HTTP/1.1 200") and b"data: {" in response
    assert not response.endswith(b"0\r\n\r\n")
    yield wait_for(lambda: backend.events["silent"]["lost"], timeout=1)
    yield still_serves(strict)


@inlineCallbacks
def test_backpressure_pauses_do_not_count_as_backend_silence(strict, backend):
    size = 64 * 1024 * 1024
    body = json.dumps({"model": "m", "script": {"kind": "big", "size": size}}).encode()
    raw = rawhttp.request(b"POST", b"/v1/files", body, headers=[(b"X-Test-Id", b"paused")])

    def slow_reader():
        with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
            sock.sendall(raw)
            head = rawhttp.read_until(sock, b"\r\n\r\n")
            time.sleep(1.5)  # the reader is stalled three times longer than the read timeout
            return len(rawhttp.read_response_body_after_head(sock, head, timeout=30))

    assert (yield threads.deferToThread(slow_reader)) == size


GARBAGE = {
    "tls-client-hello": bytes.fromhex("16030100a5010000a10303") + os.urandom(160),
    "random-bytes": bytes(range(256)) * 64,
    "huge-request-line": b"GET /" + b"a" * (1024 * 1024) + b" HTTP/1.1\r\n\r\n",
    "ten-thousand-headers": b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(10000)) + b"\r\n",
    "huge-header-line": b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * (1024 * 1024) + b"\r\n\r\n",
    "no-version": b"GET /healthz\r\n\r\n",
    "bad-version": b"GET /healthz TTP/1.1\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "binary-method": b"\xff\xfe /healthz HTTP/1.1\r\n\r\n",
    "header-without-colon": b"GET /healthz HTTP/1.1\r\nNoColon\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
@inlineCallbacks
def test_garbage_gets_a_json_error_or_a_closed_connection(strict, name):
    response = yield threads.deferToThread(rawhttp.exchange_until_closed, strict.port, GARBAGE[name], 10)
    if response not in (b"", b"<RESET>"):
        assert rawhttp.status(response) in (400, 408, 414, 431), response[:100]
        assert json.loads(rawhttp.split(response)[1])["error"]["code"]
    yield still_serves(strict)


def big_json(model_part, size=60 * 1024 * 1024):
    pad = b"A" * size
    return b'{"messages": [{"role": "user", "content": "' + pad + b'"}], ' + model_part + b"}"


@pytest.mark.parametrize(
    "body, code",
    [
        (big_json(b'"model": "m"'), 200),
        (big_json(b'"model": "nope", "model": "m"'), 200),
        (big_json(b'"mo\\u0064el": "m"'), 200),
        (big_json(b'"x": {"model": "m"}'), 400),
        (big_json(b'"model": "\\u006d"'), 200),
        (big_json(b'"model": "m\xff"'), 400),
        (b'{"x": ' + b"[" * 200000 + b"]" * 200000 + b', "model": "m"}', 400),
        (b'{"model": "m", "x": ' + b"[" * 200000 + b"}", 400),
        (b'{"model": "m", "x": [' + b"[1, 2], " * 100000 + b"[3]]}", 200),
        (b'{"model": "m", "x": ' + b"[" * 400 + b"]" * 400 + b', "pad": "' + b"p" * 300000 + b'"}', 200),
    ],
    ids=[
        "60MiB-model-last",
        "60MiB-duplicate-model",
        "60MiB-escaped-key",
        "60MiB-only-nested-model",
        "60MiB-escaped-value",
        "60MiB-non-utf8-model",
        "200000-deep",
        "200000-deep-unclosed",
        "100000-small-arrays",
        "400-deep-padded",
    ],
)
@inlineCallbacks
def test_hostile_json_routes_as_json_loads_would_or_is_400(strict, body, code):
    response = yield treq.post(strict.url + "/v1/chat/completions", body)
    content = yield response.content()
    assert response.code == code, content[:300]
    if code == 200:
        assert json.loads(content)["length"] == len(body)


@inlineCallbacks
def test_huge_multipart_upload_with_the_model_last(strict):
    boundary = b"llmhop-boundary"
    audio = os.urandom(1024 * 1024) * 100
    body = (
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n\r\n'
        + audio
        + b"\r\n--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--'
        + boundary
        + b"--\r\n"
    )
    response = yield treq.post(
        strict.url + "/v1/images/edits", body, headers={"Content-Type": b"multipart/form-data; boundary=" + boundary}
    )
    assert response.code == 200
    assert (yield response.json())["length"] == len(body)


@inlineCallbacks
def test_client_leaving_while_its_body_is_scanned_is_not_forwarded(strict, backend):
    # About a million strings: seconds of scanning, within the step budget.
    body = b'{"x": [' + b'"a",' * 1_000_000 + b'"a"], "model": "m"}'
    raw = rawhttp.request(b"POST", b"/v1/chat/completions", body, headers=[(b"X-Test-Id", b"scanned")])

    def send_and_leave():
        with socket.create_connection(("127.0.0.1", strict.port)) as sock:
            sock.sendall(raw)
            time.sleep(0.1)

    yield threads.deferToThread(send_and_leave)
    yield still_serves(strict)
    yield wait_for(lambda: not strict.site.in_flight, timeout=10)
    assert "scanned" not in backend.events
