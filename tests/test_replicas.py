"""Several upstreams per model: spreading, failover before any byte is sent, passive health."""

import json
import socket
import time

import treq
from pytest_twisted import inlineCallbacks
from twisted.internet import defer, reactor, threads
from twisted.internet.protocol import Factory, Protocol

from tests import backend as backendlib, rawhttp
from tests.helpers import chat, dead_url, post, scrape, wait_for


def failures(samples, kind):
    return samples.get(("llmhop_upstream_failures_total", (("kind", kind), ("model", "m"))), 0)


@inlineCallbacks
def test_three_replicas_one_down_under_concurrent_load_no_client_sees_an_error(make_router, make_backend):
    first, second = make_backend(), make_backend()
    router = make_router({"models": {"m": {"url": [first.url, dead_url(), second.url]}}})

    statuses = yield defer.gatherResults([post(router, chat()) for _ in range(60)])
    assert [response.code for response, _ in statuses] == [200] * 60
    assert first.served + second.served == 60
    assert first.served >= 15 and second.served >= 15

    # The dead replica is skipped during its cool-down: a second burst
    # meets no refused connection at all.
    before = failures((yield scrape(router)), "refused")
    assert 1 <= before < 30
    statuses = yield defer.gatherResults([post(router, chat()) for _ in range(30)])
    assert [response.code for response, _ in statuses] == [200] * 30
    assert failures((yield scrape(router)), "refused") == before


@inlineCallbacks
def test_after_the_cool_down_a_failed_replica_is_tried_again(make_router, make_backend):
    live = make_backend()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    router = make_router(
        {"models": {"m": {"url": ["http://127.0.0.1:%d" % (port,), live.url]}}, "timeouts": {"replicaCooldown": 0.2}}
    )
    assert (yield post(router, chat()))[0].code == 200
    # The replica comes back on its port; after the cool-down it gets traffic again.
    site = backendlib.site(reactor)
    listening = reactor.listenTCP(port, site, interface="127.0.0.1")
    try:
        deadline = time.monotonic() + 5
        while site.resource.served == 0 and time.monotonic() < deadline:
            assert (yield post(router, chat()))[0].code == 200
        assert site.resource.served > 0
    finally:
        yield listening.stopListening()


@inlineCallbacks
def test_requests_go_to_the_replica_with_fewest_in_flight(make_router, make_backend):
    first, second = make_backend(), make_backend()
    router = make_router({"models": {"m": {"url": [first.url, second.url]}}})
    # A long stream holds one replica; everything else goes to the other.
    stream = treq.post(
        router.url + "/v1/chat/completions",
        chat(stream=True, script={"kind": "sse", "n": 200, "interval": 0.05}),
        headers={"Content-Type": "application/json"},
    )
    yield wait_for(lambda: first.served + second.served == 1)
    busy, idle = (first, second) if first.served else (second, first)
    for _ in range(6):
        assert (yield post(router, chat()))[0].code == 200
    assert busy.served == 1 and idle.served == 6
    stream.cancel()
    stream.addErrback(lambda _: None)


@inlineCallbacks
def test_ties_go_round_robin(make_router, make_backend):
    backends = [make_backend() for _ in range(3)]
    router = make_router({"models": {"m": {"url": [b.url for b in backends]}}})
    for _ in range(9):
        assert (yield post(router, chat()))[0].code == 200
    assert [b.served for b in backends] == [3, 3, 3]


class _AcceptThenClose(Protocol):
    """Reads the request, then hangs up without answering."""

    def dataReceived(self, data):
        self.factory.received.append(data)
        self.transport.loseConnection()


@inlineCallbacks
def test_a_request_that_reached_a_replica_is_never_retried(make_router, make_backend):
    factory = Factory.forProtocol(_AcceptThenClose)
    factory.received = []
    swallowing = reactor.listenTCP(0, factory, interface="127.0.0.1")
    live = make_backend()
    try:
        router = make_router(
            {"models": {"m": {"url": ["http://127.0.0.1:%d" % (swallowing.getHost().port,), live.url]}}}
        )
        response, content = yield post(router, chat())
        assert response.code == 502
        assert json.loads(content)["error"]["code"] == "upstream_bad_response"
        assert factory.received and live.served == 0
    finally:
        yield swallowing.stopListening()


@inlineCallbacks
def test_all_replicas_down_is_a_502(make_router):
    router = make_router({"models": {"m": {"url": [dead_url(), dead_url()]}}})
    response, content = yield post(router, chat())
    assert response.code == 502
    assert json.loads(content)["error"]["code"] == "upstream_unreachable"
    assert failures((yield scrape(router)), "refused") == 2


@inlineCallbacks
def test_unix_socket_backends_with_and_without_a_path_prefix(make_router, make_backend, tmp_path):
    backend = make_backend(tmp_path / "vllm.sock")
    router = make_router(
        {
            "models": {
                "m": {"url": backend.url},
                "prefixed": {"url": backend.url + ":/v1-proxy"},
            }
        }
    )
    response, content = yield post(router, chat())
    assert response.code == 200
    seen = json.loads(content)
    assert seen["uri"] == "/v1/chat/completions"
    assert ["Host", "localhost"] in seen["headers"]
    response, content = yield post(router, chat("prefixed"))
    assert response.code == 200 and json.loads(content)["uri"] == "/v1-proxy/v1/chat/completions"


@inlineCallbacks
def test_a_missing_socket_fails_over_to_the_next_replica(make_router, make_backend, tmp_path):
    live = make_backend(tmp_path / "live.sock")
    router = make_router({"models": {"m": {"url": ["unix:%s" % (tmp_path / "gone.sock",), live.url]}}})
    response, _ = yield post(router, chat())
    assert response.code == 200 and live.served == 1


@inlineCallbacks
def test_raw_client_sees_one_clean_answer_when_failing_over(make_router, make_backend):
    live = make_backend()
    router = make_router({"models": {"m": {"url": [dead_url(), live.url]}}})
    body = chat()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    response = yield threads.deferToThread(rawhttp.exchange, router.port, request)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.count(b"HTTP/1.1") == 1
