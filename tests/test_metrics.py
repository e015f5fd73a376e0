"""GET /metrics: Prometheus text, checked with prometheus_client's own parser."""

import json

import treq
from pytest_twisted import inlineCallbacks
from twisted.internet import threads

from tests import rawhttp
from tests.helpers import dead_url, post, scrape
from tests.test_channel import head_then_wait


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


@inlineCallbacks
def test_requests_durations_bytes_and_failures_by_model(make_router, backend):
    router = make_router({"models": {"m": {"url": backend.url}, "down": {"url": dead_url()}}})
    bodies = [json.dumps({"model": "m", "n": "x" * i}).encode() for i in range(5)]
    sent = 0
    for body in bodies:
        response, content = yield post(router, body)
        assert response.code == 200
        sent += len(content)
    assert (yield post(router, b'{"model": "down"}'))[0].code == 502
    assert (yield post(router, b'{"model": "nope"}'))[0].code == 404
    samples = yield scrape(router)
    assert value(samples, "llmhop_requests_total", model="m", status="200", token="") == 5
    assert value(samples, "llmhop_requests_total", model="down", status="502", token="") == 1
    # A name no route matches is counted without it: clients cannot grow the label set.
    assert value(samples, "llmhop_requests_total", model="", status="404", token="") == 1
    assert value(samples, "llmhop_request_duration_seconds_count", model="m") == 5
    assert value(samples, "llmhop_time_to_first_byte_seconds_count", model="m") == 5
    assert value(samples, "llmhop_request_bytes_total", model="m") == sum(len(b) for b in bodies)
    assert value(samples, "llmhop_response_bytes_total", model="m") == sent
    assert value(samples, "llmhop_upstream_failures_total", model="down", kind="refused") == 1
    assert value(samples, "llmhop_requests_in_flight", model="m") == 0
    assert value(samples, "llmhop_requests_queued", model="m") == 0


@inlineCallbacks
def test_prefix_routes_are_labelled_by_their_pattern(make_router, backend):
    router = make_router({"models": {"local/*": {"url": backend.url}}})
    for i in range(3):
        assert (yield post(router, json.dumps({"model": "local/%d" % (i,)}).encode()))[0].code == 200
    samples = yield scrape(router)
    assert value(samples, "llmhop_requests_total", model="local/*", status="200", token="") == 3
    assert not any(
        dict(labels).get("model", "").startswith("local/") and dict(labels)["model"] != "local/*"
        for _, labels in samples
    )


@inlineCallbacks
def test_metrics_need_a_token_unless_public(make_router, backend):
    guarded = make_router({"authTokens": ["tok"], "models": {"m": {"url": backend.url}}})
    response = yield treq.get(guarded.url + "/metrics")
    assert response.code == 401
    samples = yield scrape(guarded, headers={"Authorization": "Bearer tok"})
    assert ("llmhop_requests_in_flight", (("model", "m"),)) in samples

    public = make_router({"authTokens": ["tok"], "metrics": {"public": True}, "models": {"m": {"url": backend.url}}})
    yield scrape(public)
    # Only /metrics is opened.
    assert (yield post(public, b'{"model": "m"}'))[0].code == 401
    # With metrics on an address of their own, /metrics on the main port is
    # an ordinary request, and no way past the token check.
    elsewhere = make_router(
        {
            "authTokens": ["tok"],
            "metrics": {"public": True, "listen": "127.0.0.1:0"},
            "models": {"m": {"url": backend.url}},
        }
    )
    assert (yield post(elsewhere, b'{"model": "m"}', path="/metrics"))[0].code == 401
    # Answered from the head: no body is read for an unauthenticated client.
    head = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    response = yield threads.deferToThread(head_then_wait, elsewhere.port, head)
    assert rawhttp.status(response) == 401
    assert backend.served == 0


@inlineCallbacks
def test_metrics_answer_get_only(make_router, backend):
    router = make_router({"models": {"m": {"url": backend.url}}})
    response = yield treq.post(router.url + "/metrics", b"")
    assert response.code == 405


@inlineCallbacks
def test_process_metrics_and_no_created_series(make_router, backend):
    router = make_router({"models": {"m": {"url": backend.url}}})
    assert (yield post(router, b'{"model": "m"}'))[0].code == 200
    samples = yield scrape(router)
    names = {name for name, _ in samples}
    assert not [name for name in names if name.endswith("_created")]
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") > 0
    assert "process_cpu_seconds_total" in names
