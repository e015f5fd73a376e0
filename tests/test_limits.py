"""models.<name>.maxConcurrentRequests: a FIFO queue in front of a model, 429 beyond it."""

import json
import time

import treq
from pytest_twisted import inlineCallbacks
from twisted.internet import reactor, task

from tests.helpers import scrape, wait_for


def request(router, test_id, **script):
    body = json.dumps({"model": "m", "stream": bool(script), "script": script or {"kind": "echo"}}).encode()
    return treq.post(
        router.url + "/v1/chat/completions",
        body,
        headers={"Content-Type": "application/json", "X-Test-Id": test_id},
    )


def limited(make_router, backend, limit, queue):
    return make_router(
        {"models": {"m": {"url": backend.url, "maxConcurrentRequests": limit, "maxQueuedRequests": queue}}}
    )


@inlineCallbacks
def held(make_router, backend, queue, events=10):
    """A router for model m with a limit of 1 and C{queue} places, and stream "a" holding the 1."""
    router = limited(make_router, backend, 1, queue)
    first = request(router, "a", kind="sse", n=events, interval=0.05)
    yield wait_for(lambda: "a" in backend.events)
    return router, first


@inlineCallbacks
def gauge(router, name):
    return (yield scrape(router)).get((name, (("model", "m"),)))


@inlineCallbacks
def queued(router, count, timeout=5.0):
    """Wait (scraping /metrics, up to C{timeout}) until C{count} requests wait in m's queue."""
    deadline = time.monotonic() + timeout
    while (yield gauge(router, "llmhop_requests_queued")) != count:
        assert time.monotonic() < deadline, "the queue never held %d" % (count,)
        yield task.deferLater(reactor, 0.01, lambda: None)


@inlineCallbacks
def test_requests_over_the_limit_wait_and_go_in_arrival_order(make_router, backend):
    router, first = yield held(make_router, backend, 10)
    waiting = []
    for index, test_id in enumerate("bcd"):
        waiting.append(request(router, test_id))
        yield queued(router, index + 1)
    assert (yield gauge(router, "llmhop_requests_in_flight")) == 1
    responses = [(yield first)]
    for pending in waiting:
        responses.append((yield pending))
    assert [r.code for r in responses] == [200] * 4
    yield treq.content(responses[0])
    events = backend.events
    # One at a time: each began after the one before had ended.
    for before, after in zip("abc", "bcd"):
        assert events[before]["lost"] is not None and events[before]["lost"] <= events[after]["received"]
    assert (yield gauge(router, "llmhop_requests_queued")) == 0


@inlineCallbacks
def test_a_full_queue_answers_429_with_retry_after(make_router, backend):
    router, first = yield held(make_router, backend, 1)
    second = request(router, "b")
    yield queued(router, 1)
    response = yield request(router, "c")
    assert (response.code, response.phrase) == (429, b"Too Many Requests")
    assert response.headers.getRawHeaders("Retry-After") == ["1"]
    error = (yield response.json())["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "c" not in backend.events
    assert [(yield first).code, (yield second).code] == [200, 200]


@inlineCallbacks
def test_a_client_that_leaves_the_queue_frees_its_place(make_router, backend):
    router, first = yield held(make_router, backend, 1, events=20)
    leaving = request(router, "b")
    leaving.addErrback(lambda _: None)
    yield queued(router, 1)
    leaving.cancel()
    yield queued(router, 0)
    # Its place is free: the next request queues instead of getting a 429.
    third = request(router, "c")
    yield queued(router, 1)
    assert [(yield first).code, (yield third).code] == [200, 200]
    assert "b" not in backend.events


@inlineCallbacks
def test_without_a_limit_nothing_queues(make_router, backend):
    router = make_router({"models": {"m": {"url": backend.url}}})
    streams = [request(router, str(i), kind="sse", n=5, interval=0.05) for i in range(5)]
    yield wait_for(lambda: len(backend.events) == 5)
    assert (yield gauge(router, "llmhop_requests_in_flight")) == 5
    for stream in streams:
        assert (yield stream).code == 200
