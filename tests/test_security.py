"""SPEC §5 as an attacker tries it: raw requests through a real router to a recording backend.

Each refused shape is checked three ways: the exact status, a connection
closed after it (nothing after the refusal is read as another request), and
not one byte at the backend.  Each accepted shape is checked against what a
strict independent parser (h11, in L{tests.recorder}) reads in the bytes the
backend received.  The router's body timeout is long here (30 s) and the
client gives up after 5 s: a malformed body must be refused at once, not
when the body deadline passes.
"""

import json
import re
import socket

import pytest
from pytest_twisted import inlineCallbacks
from twisted.internet import threads

from tests import rawhttp
from tests.recorder import Recorder

TOKEN = b"client-token"
UPSTREAM_KEY = "Bearer operator-upstream-key"
BODY = b'{"model": "m"}'
SMUGGLED = b"GET /v1/smuggled HTTP/1.1\r\nHost: x\r\nX-Smuggled: yes\r\n\r\n"


@pytest.fixture
def recorder():
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.fixture
def gateway(make_router, recorder):
    return make_router(
        {
            "authTokens": [TOKEN.decode()],
            "timeouts": {"requestHead": 30, "requestBody": 30},
            "models": {
                "m": {
                    "url": recorder.url + "/api",
                    "headers": {"Authorization": UPSTREAM_KEY, "X-Api-Key": "operator-secret"},
                }
            },
        }
    )


def head(*lines: bytes, target: bytes = b"/v1/chat/completions", method: bytes = b"POST") -> bytes:
    """A request head with the client token, and C{lines} (each without its CRLF)."""
    start = [b"%s %s HTTP/1.1" % (method, target), b"Authorization: Bearer " + TOKEN]
    return b"\r\n".join(start + list(lines)) + b"\r\n\r\n"


def exchange(port: int, data: bytes) -> bytes:
    """Send C{data}; everything the router answers until it closes the connection (5 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                got = b"".join(chunks)[:300]
                raise AssertionError("the router kept the connection open: %r" % (got,)) from None
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def statuses(answer: bytes):
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]


def error_code(answer: bytes) -> str:
    return json.loads(rawhttp.split(answer)[1])["error"]["code"]


@inlineCallbacks
def still_serves(gateway, recorder):
    raw = head(b"Host: gw", b"Content-Length: %d" % len(BODY), b"Connection: close") + BODY
    answer = yield threads.deferToThread(exchange, gateway.port, raw)
    assert statuses(answer) == [200], answer[:300]
    assert recorder.requests()[-1].target == b"/api/v1/chat/completions"


def ask(*lines: bytes, target: bytes = b"/v1/chat/completions") -> bytes:
    return head(b"Host: x", *lines, target=target)


CHUNKED = b"e\r\n" + BODY + b"\r\n0\r\n\r\n"
TE_CHUNKED = b"Transfer-Encoding: chunked"


# name: (request bytes, expected status).  Every one is followed by SMUGGLED.
REFUSED = {
    # Transfer-Encoding other than one chunked: 501 (SPEC §5).
    "te-chunked-then-te-identity": (ask(TE_CHUNKED, b"Transfer-Encoding: identity") + CHUNKED, 501),
    "te-identity-then-te-chunked": (ask(b"Transfer-Encoding: identity", TE_CHUNKED) + CHUNKED, 501),
    "te-chunked-identity-one-line": (ask(b"Transfer-Encoding: chunked, identity") + CHUNKED, 501),
    "te-identity": (ask(b"Transfer-Encoding: identity") + BODY, 501),
    "te-gzip": (ask(b"Transfer-Encoding: gzip") + BODY, 501),
    "te-gzip-chunked": (ask(b"Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n", 501),
    "te-chunked-twice-one-line": (ask(b"Transfer-Encoding: chunked, chunked") + b"0\r\n\r\n", 501),
    "te-chunked-twice-two-lines": (ask(TE_CHUNKED, TE_CHUNKED) + b"0\r\n\r\n", 501),
    "te-chunked-with-parameter": (ask(b"Transfer-Encoding: chunked;q=1") + b"0\r\n\r\n", 501),
    "te-xchunked": (ask(b"Transfer-Encoding: xchunked") + b"0\r\n\r\n", 501),
    "te-empty": (ask(b"Transfer-Encoding: ") + BODY, 501),
    # Transfer-Encoding with Content-Length: 400.
    "te-identity-and-content-length": (
        ask(b"Transfer-Encoding: identity", b"Content-Length: 14") + BODY,
        400,
    ),
    "content-length-and-te-chunked": (ask(b"Content-Length: 19", TE_CHUNKED) + CHUNKED, 400),
    "te-chunked-and-content-length": (ask(TE_CHUNKED, b"Content-Length: 19") + CHUNKED, 400),
    "te-in-http-1.0": (ask(TE_CHUNKED).replace(b"HTTP/1.1", b"HTTP/1.0", 1) + CHUNKED, 400),
    # Content-Length that is not exactly one run of digits.
    "two-content-lengths": (ask(b"Content-Length: 14", b"Content-Length: 15") + BODY, 400),
    "two-equal-content-lengths": (ask(b"Content-Length: 14", b"Content-Length: 14") + BODY, 400),
    "content-length-list": (ask(b"Content-Length: 14, 14") + BODY, 400),
    "negative-length": (ask(b"Content-Length: -14") + BODY, 400),
    "signed-length": (ask(b"Content-Length: +14") + BODY, 400),
    "hex-length": (ask(b"Content-Length: 0xe") + BODY, 400),
    "spaced-length": (ask(b"Content-Length: 1 4") + BODY, 400),
    # Malformed chunks: 400 at once.
    "bad-chunk-size": (ask(TE_CHUNKED) + b"zz\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    "chunk-size-0x": (ask(TE_CHUNKED) + b"0xe\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    "negative-chunk-size": (ask(TE_CHUNKED) + b"-e\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    "chunk-size-with-space": (ask(TE_CHUNKED) + b" e\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    "chunk-lines-with-bare-lf": (ask(TE_CHUNKED) + b"e\n" + BODY + b"\n0\n\n", 400),
    "chunk-size-with-bare-cr": (ask(TE_CHUNKED) + b"e\rX\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    "chunk-data-without-crlf": (ask(TE_CHUNKED) + b"5\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    "chunk-extension-with-nul": (ask(TE_CHUNKED) + b"e;a=\x00\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    "chunk-size-overlong": (ask(TE_CHUNKED) + b"1" * 20 + b"\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    "trailer-with-bare-lf": (ask(TE_CHUNKED) + b"e\r\n" + BODY + b"\r\n0\r\nX: y\nZ: w\r\n\r\n", 400),
    # The head itself.
    "obs-fold-te": (ask(b"Transfer-Encoding:", b" chunked") + CHUNKED, 400),
    "obs-fold-other": (ask(b"X-Long: a", b"\tb", b"Content-Length: 14") + BODY, 400),
    "space-before-colon": (ask(b"Transfer-Encoding : chunked") + CHUNKED, 400),
    "bare-lf-in-header-line": (ask(b"X-A: 1\nTransfer-Encoding: chunked", b"Content-Length: 14") + BODY, 400),
    "bare-cr-in-header-line": (ask(b"X-A: 1\rContent-Length: 0", b"Content-Length: 14") + BODY, 400),
    "nul-in-header-value": (ask(b"X-A: 1\x00", b"Content-Length: 14") + BODY, 400),
    "tab-in-request-line": (ask(b"Content-Length: 14").replace(b"POST ", b"POST\t", 1) + BODY, 400),
    "double-space-in-request-line": (ask(b"Content-Length: 14").replace(b"POST ", b"POST  ", 1) + BODY, 400),
    "bare-cr-in-request-line": (ask(b"Content-Length: 14").replace(b" HTTP", b"\rHTTP", 1) + BODY, 400),
    "no-host": (head(b"Content-Length: 14") + BODY, 400),
    "two-hosts": (ask(b"Host: y", b"Content-Length: 14") + BODY, 400),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
@inlineCallbacks
def test_a_request_framed_two_ways_is_refused_and_the_connection_closed(gateway, recorder, name):
    raw, status = REFUSED[name]
    answer = yield threads.deferToThread(exchange, gateway.port, raw + SMUGGLED)
    assert statuses(answer) == [status], answer[:300]
    assert b"Connection: close" in rawhttp.split(answer)[0]
    assert error_code(answer)
    assert recorder.received() == b""
    yield still_serves(gateway, recorder)
    assert b"smuggled" not in recorder.received()


GOOD = ask(b"Content-Length: 14") + BODY
FIELD = b"X-Filler: " + b"f" * 90
# Heads Twisted's own parser would refuse with a bare "400 Bad Request" (or,
# for an overlong line, by closing without a word): llmhop refuses each first,
# as every other bad request, in JSON with a request ID (SPEC §8).
HEAD_REFUSED = {
    "one-word": (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
    "two-words": (b"GET /v1/models\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    "four-words": (b"GET /v1/models HTTP/1.1 x\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    "http-2-version": (GOOD.replace(b"HTTP/1.1", b"HTTP/2.0", 1), 400, "invalid_request"),
    "lower-case-version": (GOOD.replace(b"HTTP/1.1", b"http/1.1", 1), 400, "invalid_request"),
    "two-blank-lines-first": (b"\r\n\r\n" + GOOD, 400, "invalid_request"),
    "bad-line-after-a-good-request": (GOOD + b"GET /v1/models\r\n\r\n", 400, "invalid_request"),
    "over-500-fields": (ask(*[b"X-F: 1"] * 501, b"Content-Length: 14") + BODY, 431, "request_header_fields_too_large"),
    "head-over-16-KiB": (ask(*[FIELD] * 170, b"Content-Length: 14") + BODY, 431, "request_header_fields_too_large"),
    "field-line-over-16-KiB": (ask(b"X-Long: " + b"a" * 17000) + BODY, 431, "request_header_fields_too_large"),
    "request-line-over-16-KiB": (ask(target=b"/v1/" + b"a" * 17000) + BODY, 414, "uri_too_long"),
    "endless-line": (b"GET /v1/" + b"a" * 40000, 414, "uri_too_long"),
}


@pytest.mark.parametrize("name", sorted(HEAD_REFUSED))
@inlineCallbacks
def test_a_head_twisted_would_refuse_bare_gets_a_json_error_with_a_request_id(gateway, recorder, name):
    raw, status, code = HEAD_REFUSED[name]
    answer = yield threads.deferToThread(exchange, gateway.port, raw + SMUGGLED)
    assert statuses(answer)[-1:] == [status], answer[:300]
    last = answer[answer.rfind(b"HTTP/1.1 ") :]
    head = rawhttp.split(last)[0] + b"\r\n"
    assert b"\r\nConnection: close\r\n" in head
    assert re.search(rb"\r\nX-Request-Id: [0-9a-f]{16}-[0-9a-f]+\r\n", head), last
    assert error_code(last) == code
    if status == 431:
        # Twisted has no reason phrase for 431: llmhop gives RFC 6585's, and the limits themselves.
        from twisted.web.http import HTTPChannel

        assert last.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), last[:100]
        limits = b"(%d bytes and 500 fields at most)" % (HTTPChannel.totalHeadersSize,)
        assert limits in rawhttp.split(last)[1], last
    assert b"smuggled" not in recorder.received()
    yield still_serves(gateway, recorder)


def test_the_limits_llmhop_checks_first_are_twisteds_own():
    """The head limits are Twisted's public ones, so its bare refusals never come first."""
    from twisted.web.http import HTTPChannel

    from llmhop.site import GatewayChannel

    assert (GatewayChannel.totalHeadersSize, GatewayChannel.maxHeaders) == (HTTPChannel.totalHeadersSize, 500)
    assert GatewayChannel.MAX_LENGTH == HTTPChannel.MAX_LENGTH == 16384


# A valid chunked body, extensions and trailers included, and pipelining: the
# backend gets exactly the requests a strict parser reads, nothing more.
ACCEPTED = {
    "content-length": ask(b"Content-Length: 14") + BODY,
    "chunked": ask(TE_CHUNKED) + CHUNKED,
    "chunked-in-any-case": ask(b"Transfer-Encoding: ChUnKeD") + CHUNKED,
    "chunked-in-pieces": ask(TE_CHUNKED)
    + (b"5\r\n" + BODY[:5] + b'\r\n9;ext=1;q="a b"\r\n' + BODY[5:] + b"\r\n0\r\n\r\n"),
    "chunked-with-trailers": ask(TE_CHUNKED)
    + (b"e\r\n" + BODY + b"\r\n0\r\nX-Trailer: 1\r\nContent-Length: 99\r\n\r\n"),
    "leading-zeros": ask(TE_CHUNKED) + b"000e\r\n" + BODY + b"\r\n00\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
@inlineCallbacks
def test_a_well_framed_request_reaches_the_backend_once_as_a_strict_parser_reads_it(gateway, recorder, name):
    raw = ACCEPTED[name]
    second = ask(b"Content-Length: 14", b"Connection: close", target=b"/v1/second") + BODY
    answer = yield threads.deferToThread(exchange, gateway.port, raw + second)
    assert statuses(answer) == [200, 200], answer[:500]
    seen = recorder.requests()
    assert [(r.method, r.target, r.body) for r in seen] == [
        (b"POST", b"/api/v1/chat/completions", BODY),
        (b"POST", b"/api/v1/second", BODY),
    ]
    for request in seen:
        assert request.header(b"content-length") == [b"14"]
        assert request.header(b"transfer-encoding") == []
        assert request.header(b"x-trailer") == []


@inlineCallbacks
def test_an_oversized_chunk_size_is_413_at_once(gateway, recorder):
    raw = ask(TE_CHUNKED) + b"7fffffff\r\n" + BODY
    answer = yield threads.deferToThread(exchange, gateway.port, raw)
    assert statuses(answer) == [413]
    assert recorder.received() == b""


BAD_TARGETS = [
    b"/../admin",
    b"/v1/../../x",
    b"/..",
    b"/.",
    b"/v1/./chat/completions",
    b"/%2e%2e/x",
    b"/%2E%2E/x",
    b"/%2e%2E/x",
    b"/.%2e/x",
    b"/%2e./x",
    b"/..%2fx",
    b"/v1/..%2f..%2fx",
    b"/v1/..%2F..%2Fx",
    b"/v1%2fchat",
    b"/v1%5c..%5cx",
    b"/v1\\..\\x",
    b"/v1/chat#frag",
    b"/v1/chat?x=1#frag",
    b"/%252e%252e/x",
    b"/v1/%00/x",
    b"/v1/%zz",
    b"/v1/%c0%ae%c0%ae/x",
    b"http://evil.example/v1/chat/completions",
    b"evil.example:443",
    b"*",
]


@pytest.mark.parametrize("target", BAD_TARGETS, ids=[t.decode("latin-1") for t in BAD_TARGETS])
@inlineCallbacks
def test_a_target_that_could_leave_the_prefix_is_invalid_path_and_not_forwarded(gateway, recorder, target):
    raw = ask(b"Content-Length: 14", target=target) + BODY
    answer = yield threads.deferToThread(exchange, gateway.port, raw)
    assert statuses(answer) == [400], answer[:300]
    assert error_code(answer) == "invalid_path"
    assert json.loads(rawhttp.split(answer)[1])["error"]["type"] == "invalid_request_error"
    assert recorder.received() == b""
    yield still_serves(gateway, recorder)


GOOD_TARGETS = [
    b"/v1/chat/completions?next=../../x&u=a%2Fb",
    b"/v1/files/file.abc..def",
    b"/v1/a...b/c",
    b"/v1/files/name%20with%20space",
    b"/v1/.well-known/x",
]


@pytest.mark.parametrize("target", GOOD_TARGETS, ids=[t.decode() for t in GOOD_TARGETS])
@inlineCallbacks
def test_a_target_that_stays_inside_the_prefix_is_forwarded_byte_for_byte(gateway, recorder, target):
    raw = ask(b"Content-Length: 14", b"Connection: close", target=target) + BODY
    answer = yield threads.deferToThread(exchange, gateway.port, raw)
    assert statuses(answer) == [200], answer[:300]
    assert [r.target for r in recorder.requests()] == [b"/api" + target]


@inlineCallbacks
def test_header_twins_with_underscores_never_reach_the_backend(gateway, recorder):
    raw = (
        head(
            b"Host: gw.example",
            b"X_Api_Key: client-chosen",
            b"x-api_key: client-chosen",
            b"X_Forwarded_For: 10.9.9.9",
            b"X_Forwarded_Host: evil.example",
            b"X-Forwarded_Proto: https",
            b"Content_Length: 99",
            b"Transfer_Encoding: chunked",
            b"Proxy_Authorization: x",
            b"X_Ordinary_Header: kept",
            b"Content-Length: 14",
            b"Connection: close",
        )
        + BODY
    )
    answer = yield threads.deferToThread(exchange, gateway.port, raw)
    assert statuses(answer) == [200]
    (seen,) = recorder.requests()
    names = [name for name, _ in seen.headers]
    assert seen.header(b"x-api-key") == [b"operator-secret"]
    assert seen.header(b"authorization") == [UPSTREAM_KEY.encode()]
    assert seen.header(b"x-forwarded-for") == [b"127.0.0.1"]
    assert seen.header(b"x-forwarded-host") == [b"gw.example"]
    assert seen.header(b"x-forwarded-proto") == [b"http"]
    assert seen.header(b"x_ordinary_header") == [b"kept"]
    assert not [n for n in names if b"_" in n and n != b"x_ordinary_header"], names


def backend_answer(*lines: bytes, body: bytes = b"{}") -> bytes:
    return b"\r\n".join([b"HTTP/1.1 200 OK"] + list(lines) + [b"Content-Length: %d" % len(body), b"", body])


@inlineCallbacks
def test_headers_the_backend_names_in_connection_are_not_relayed(gateway, recorder):
    recorder.answer = backend_answer(
        b"Connection: X-Upstream-Secret, keep-alive",
        b"Connection: X-Other",
        b"X-Upstream-Secret: s3cret",
        b"X-Other: 1",
        b"Keep-Alive: timeout=5",
        b"X-Kept: yes",
        b"Content-Type: application/json",
    )
    raw = ask(b"Content-Length: 14", b"Connection: close") + BODY
    answer = yield threads.deferToThread(exchange, gateway.port, raw)
    response_head = rawhttp.split(answer)[0].lower()
    assert statuses(answer) == [200]
    assert b"x-kept: yes" in response_head
    assert b"s3cret" not in response_head and b"x-other" not in response_head
    assert b"keep-alive" not in response_head


@pytest.mark.parametrize(
    "line",
    [b"X-Bad: a\rb", b"X-Bad: a\nb", b"X-Bad: a\x00b", b"X-Bad: a\r\nb", b"Bad Name: x"],
    ids=["bare-cr", "bare-lf", "nul", "crlf-inside", "bad-name"],
)
@inlineCallbacks
def test_a_response_header_with_cr_lf_or_nul_is_502_and_nothing_is_relayed(gateway, recorder, line):
    recorder.answer = backend_answer(line, b"X-Before: relayed?", body=b'{"leak": "model output"}')
    raw = ask(b"Content-Length: 14", b"Connection: close") + BODY
    answer = yield threads.deferToThread(exchange, gateway.port, raw)
    assert statuses(answer) == [502]
    assert error_code(answer) == "upstream_bad_response"
    assert b"model output" not in answer and b"relayed?" not in answer


@inlineCallbacks
def test_no_header_is_invented_for_a_relayed_answer(gateway, recorder):
    recorder.answer = backend_answer(b"X-Only: this", body=b"plain words")
    raw = ask(b"Content-Length: 14", b"Connection: close") + BODY
    answer = yield threads.deferToThread(exchange, gateway.port, raw)
    response_head, body = rawhttp.split(answer)
    names = sorted(line.split(b":")[0].lower() for line in response_head.split(b"\r\n")[1:])
    assert statuses(answer) == [200] and body == b"plain words"
    # X-Request-Id is llmhop's own (SPEC §8), and what the backend was sent.
    assert names == [b"connection", b"content-length", b"x-only", b"x-request-id"], response_head
    returned = [
        line.split(b": ", 1)[1] for line in response_head.split(b"\r\n") if line.lower().startswith(b"x-request-id:")
    ]
    assert recorder.requests()[-1].header(b"x-request-id") == returned
