"""Random mutations of valid and hostile requests on a raw socket: the router stays up, keeps
answering, and whatever reaches the backend is well-formed HTTP/1.1 under the backend's prefix."""

import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests import rawhttp

# Minutes of mutated requests: the slow tier (pytest -m 'not slow' leaves it out).
pytestmark = pytest.mark.slow

VALID = [
    rawhttp.request(b"POST", b"/v1/chat/completions", json.dumps({"model": "m", "messages": []}).encode()),
    rawhttp.request(b"GET", b"/v1/models"),
    b'POST /v1/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\ne\r\n{"model": "m"}\r\n0\r\n\r\n',
    # SPEC §5's shapes, for the mutations to start from.
    b"POST /v1/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
    b'e;ext=1\r\n{"model": "m"}\r\n0\r\nX-Trailer: 1\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: h\r\n\r\n',
    b'POST /v1/../x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\nContent-Length: 14\r\n\r\n{"model": "m"}',
    b'POST /v1/%2e%2E/x HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\nContent-Length: 14\r\n\r\n{"model": "m"}',
    b'POST /v1/x HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\ne\n{"model": "m"}\n0\n\n',
]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_router(tmp_path_factory):
    from tests.e2e.procs import router_before_recorder

    with router_before_recorder(tmp_path_factory.mktemp("fuzz"), deadline=0.3) as (router, port, backend):
        # Memory is measured from here: PyPy's JIT and heap settle at a size
        # of their own (about 250 MiB with today's packages) once warm.
        for _ in range(50):
            rawhttp.exchange(port, VALID[0])
        yield router, port, backend, rss_kib(router.pid)


def rss_kib(pid):
    with open("/proc/%d/status" % (pid,)) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def send(port, data, half_close):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return rawhttp.read_all(sock, timeout=5)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=mutated(), half_close=st.booleans())
def test_mutated_requests_never_take_the_router_down(fuzz_router, data, half_close):
    router, port, backend, _ = fuzz_router
    try:
        response = send(port, data, half_close)
    except (BrokenPipeError, ConnectionResetError):
        response = b""
    if response and response != b"<RESET>":
        assert response.startswith(b"HTTP/1.1 "), response[:100]
    assert router.proc.poll() is None
    good = rawhttp.exchange(port, VALID[0])
    assert rawhttp.status(good) == 200
    # requests() fails the test on bytes h11 refuses.
    for seen in backend.requests():
        assert seen.target.startswith(b"/api/") and b"/../" not in seen.target, seen


def test_the_fuzzer_found_no_traceback_and_memory_stayed_bounded(fuzz_router):
    router, _, _, warm_kib = fuzz_router
    assert "Traceback" not in router.output and "Unhandled Error" not in router.output
    assert rss_kib(router.pid) - warm_kib < 64 * 1024
