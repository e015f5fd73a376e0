"""Differential check (SPEC §5): the router forwards only what a strict independent parser reads.

Hypothesis builds requests from the shapes smuggling attacks use (obfuscated
Transfer-Encoding and Content-Length, folding, bare LF and CR, NUL, chunk
extensions and trailers, a pipelined second request) and sends each to a real
router process in front of the recording backend.  Whatever the router
forwards must be, request for request, what h11 reads in the client's bytes:
the same method, the target under the backend's prefix, the same body, and
never a request h11 does not see, never out of order.  Refusing is always
allowed.
"""

import contextlib
import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests import rawhttp
from tests.recorder import parse_requests

BODY = b'{"model": "m"}'

FRAMING_LINES = [
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: CHUNKED",
    b"Transfer-Encoding:chunked",
    b"Transfer-Encoding: chunked ",
    b"Transfer-Encoding: \tchunked",
    b"Transfer-Encoding: identity",
    b"Transfer-Encoding : chunked",
    b"Transfer-Encoding: chunked, identity",
    b"Transfer-Encoding: identity, chunked",
    b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding: chunked\x00",
    b"Transfer-Encoding:\r\n chunked",
    b"X-Folded: a\r\n\tTransfer-Encoding: chunked",
    b"X-Bare-Lf: a\nTransfer-Encoding: chunked",
    b"X-Bare-Cr: a\rTransfer-Encoding: chunked",
    b"Transfer_Encoding: chunked",
    b"Content-Length: 14",
    b"Content-Length: 15",
    b"Content-Length: 13",
    b"Content-Length: 014",
    b"Content-Length: +14",
    b"Content-Length: 14, 14",
    b"Content-Length:14",
    b"content-length: 14",
    b"Content-Length: 0",
    b"Host: other",
]

BODIES = [
    BODY,
    b"e\r\n" + BODY + b"\r\n0\r\n\r\n",
    b"E;ext=1\r\n" + BODY + b"\r\n0\r\nX-Trailer: 1\r\n\r\n",
    b"7\r\n" + BODY[:7] + b"\r\n7\r\n" + BODY[7:] + b"\r\n0\r\n\r\n",
    b"e\n" + BODY + b"\n0\n\n",
    b"e\r\n" + BODY + b"0\r\n\r\n",
    b"",
]


@st.composite
def hostile_request(draw):
    target = draw(st.sampled_from([b"/v1/chat/completions", b"/v1/x?y=1"]))
    lines = [b"POST %s HTTP/1.1" % (target,)]
    if draw(st.integers(0, 9)):
        lines.append(b"Host: x")
    lines += draw(st.lists(st.sampled_from(FRAMING_LINES), max_size=3))
    ending = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]))
    head = ending.join(lines) + b"\r\n\r\n"
    second = rawhttp.request(b"POST", b"/v1/second", BODY)  # ends with Connection: close
    return head + draw(st.sampled_from(BODIES)) + draw(st.sampled_from([second, b"", BODY + second]))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from tests.e2e.procs import router_before_recorder

    with router_before_recorder(tmp_path_factory.mktemp("differential"), deadline=0.5) as started:
        yield started


def send(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        return rawhttp.read_all(sock, timeout=5)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=hostile_request())
def test_the_router_forwards_only_what_a_strict_parser_reads(gateway, raw):
    router, port, recorder = gateway
    before = len(recorder.requests())
    send(port, raw)
    forwarded = recorder.requests()[before:]
    strict = [(r.method, b"/api" + r.target, r.body) for r in parse_requests(raw)[0]]
    # The router may answer a request itself (400 for a body without a
    # model, say), so what it forwards is a subsequence of what h11 reads.
    unmatched = iter(strict)
    for sent in forwarded:
        assert (sent.method, sent.target, sent.body) in unmatched, (raw, forwarded, strict)
    assert router.proc.poll() is None


def test_the_differential_run_left_no_traceback(gateway):
    router, port, recorder = gateway
    answer = rawhttp.exchange(port, rawhttp.request(b"POST", b"/v1/ok", BODY))
    assert rawhttp.status(answer) == 200 and json.loads(rawhttp.split(answer)[1])["target"] == "/api/v1/ok"
    assert "Traceback" not in router.output and "Unhandled Error" not in router.output
