"""Fleet behaviour end to end (SPEC §6): retry on refusal, fallbacks, health checks, /ready, /status, affinity.

Router and scripted backends on 127.0.0.1 sockets; a backend's ``health`` and
``refuse`` settings play an inference server that is loading or full.
"""

import hashlib
import io
import json

import pytest
import treq
from pytest_twisted import inlineCallbacks
from twisted.internet import defer
from twisted.web.client import ResponseFailed

from llmhop.extract import rename
from tests.helpers import chat, dead_url, post, scrape, wait_for

FAST_CHECK = {"interval": 0.05, "timeout": 1, "failures": 2}


def echoed(content):
    return json.loads(content)


def requests_of(samples, model, status):
    return samples.get(("llmhop_requests_total", (("model", model), ("status", status), ("token", ""))), 0)


# --- retry on refusal ------------------------------------------------------


@inlineCallbacks
def test_a_replica_answering_503_is_passed_over_for_the_next(make_router, make_backend):
    full, free = make_backend(), make_backend()
    full.refuse = 503
    router = make_router({"models": {"m": {"url": [full.url, free.url]}}})
    for _ in range(4):
        response, _ = yield post(router, chat())
        assert response.code == 200
    assert full.refused >= 1 and free.served == 4
    assert router.routes.routes["m"].health[0].last_error == "answered 503"
    samples = yield scrape(router)
    kind = ("llmhop_upstream_failures_total", (("kind", "status-503"), ("model", "m")))
    assert samples[kind] == full.refused


@inlineCallbacks
def test_retry_on_is_configurable_and_can_be_turned_off(make_router, make_backend):
    full, free = make_backend(), make_backend()
    full.refuse = 429
    router = make_router({"models": {"m": {"url": [full.url, free.url], "retryOn": []}}})
    codes = []
    for _ in range(4):
        response, _ = yield post(router, chat())
        codes.append(response.code)
    # Least-in-flight ties go in turn: half the requests meet the full replica.
    assert sorted(codes) == [200, 200, 429, 429]
    full.refuse, router2 = 500, make_router({"models": {"m": {"url": [full.url, free.url], "retryOn": [500]}}})
    for _ in range(2):
        assert (yield post(router2, chat()))[0].code == 200


@inlineCallbacks
def test_when_every_replica_refuses_the_last_answer_is_relayed_unchanged(make_router, make_backend):
    first, second = make_backend(), make_backend()
    first.refuse = second.refuse = 429
    router = make_router({"models": {"m": {"url": [first.url, second.url]}}})
    response, content = yield post(router, chat())
    assert response.code == 429
    assert json.loads(content) == {"scripted": 429}
    assert first.refused == 1 and second.refused == 1


@inlineCallbacks
def test_a_status_not_in_retry_on_is_the_answer(make_router, make_backend):
    first, second = make_backend(), make_backend()
    first.refuse = second.refuse = 500
    router = make_router({"models": {"m": {"url": [first.url, second.url]}}})
    response, _ = yield post(router, chat())
    assert response.code == 500
    assert first.refused + second.refused == 1


@inlineCallbacks
def test_a_started_answer_is_never_retried(make_router, make_backend):
    """A replica dying mid-stream (bytes already relayed) is not retried: the client sees the cut."""
    first, second = make_backend(), make_backend()
    router = make_router({"models": {"m": {"url": [first.url, second.url]}}})
    response = yield treq.post(
        router.url + "/v1/chat/completions",
        chat(stream=True, script={"kind": "die", "n": 2}),
        headers={"Content-Type": "application/json"},
    )
    assert response.code == 200
    with pytest.raises(ResponseFailed):
        yield treq.content(response)
    assert first.served + second.served == 1


# --- fallbacks ---------------------------------------------------------------


@inlineCallbacks
def test_a_route_that_cannot_take_the_request_falls_back_with_the_body_renamed(make_router, make_backend):
    spare = make_backend()
    router = make_router(
        {
            "models": {
                "m": {"url": dead_url(), "fallbacks": ["spare"]},
                "spare": {"url": spare.url, "model": "Qwen/Qwen3-8B", "headers": {"X-Key": "spare-key"}},
            }
        }
    )
    body = b'{"model":  "m", "messages": [{"role": "user", "content": "\\u00e9 hi"}], "n": 1}'
    response, content = yield post(router, body)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"x-llmhop-fallback") == [b"spare"]
    got = echoed(content)
    expected = rename(body, None, "Qwen/Qwen3-8B")
    assert got["sha256"] == hashlib.sha256(expected).hexdigest()
    assert ["X-Key", "spare-key"] in got["headers"]
    samples = yield scrape(router)
    assert requests_of(samples, "spare", "200") == 1 and requests_of(samples, "m", "200") == 0


@inlineCallbacks
def test_fallbacks_are_tried_in_order_after_refusals(make_router, make_backend):
    own, first, second = make_backend(), make_backend(), make_backend()
    own.refuse = first.refuse = 503
    router = make_router(
        {
            "models": {
                "m": {"url": own.url, "fallbacks": ["a", "b"]},
                "a": {"url": first.url},
                "b": {"url": second.url},
            }
        }
    )
    response, content = yield post(router, chat())
    assert response.code == 200
    assert response.headers.getRawHeaders(b"x-llmhop-fallback") == [b"b"]
    assert json.loads(content)["length"] == len(chat("b"))
    assert (own.refused, first.refused, second.served) == (1, 1, 1)


@inlineCallbacks
def test_an_answer_from_the_own_route_carries_no_fallback_header(router):
    response, _ = yield post(router, chat())
    assert response.code == 200 and not response.headers.hasHeader(b"x-llmhop-fallback")


# --- active health checks ------------------------------------------------------


@inlineCallbacks
def test_a_replica_whose_health_fails_gets_no_requests_until_it_recovers(make_router, make_backend):
    loading, ready = make_backend(), make_backend()
    loading.health = 503
    router = make_router({"models": {"m": {"url": [loading.url, ready.url], "healthCheck": FAST_CHECK}}})
    health = router.routes.routes["m"].health
    yield wait_for(lambda: health[0].down)
    assert loading.probes >= 2 and not health[1].down
    for _ in range(5):
        assert (yield post(router, chat()))[0].code == 200
    assert loading.served == 0 and ready.served == 5
    # One good probe brings it back.
    loading.health = 200
    yield wait_for(lambda: not health[0].down)
    for _ in range(6):
        assert (yield post(router, chat()))[0].code == 200
    assert loading.served > 0


@inlineCallbacks
def test_every_replica_down_is_503_model_unavailable_without_touching_a_backend(make_router, make_backend):
    backend = make_backend()
    backend.health = 500
    router = make_router({"models": {"m": {"url": backend.url, "healthCheck": dict(FAST_CHECK, interval=3)}}})
    yield wait_for(lambda: router.routes.routes["m"].health[0].failures >= 1)
    # failures: 2 needs a second probe, three seconds later: take it down directly.
    router.routes.routes["m"].health[0].down = True
    response, content = yield post(router, chat())
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after") == [b"3"]
    error = json.loads(content)["error"]
    assert (error["type"], error["code"]) == ("api_error", "model_unavailable")
    assert backend.served == 0


@inlineCallbacks
def test_a_model_whose_replicas_are_down_falls_back(make_router, make_backend):
    down, spare = make_backend(), make_backend()
    down.health = 503
    router = make_router(
        {"models": {"m": {"url": down.url, "healthCheck": FAST_CHECK, "fallbacks": ["s"]}, "s": {"url": spare.url}}}
    )
    yield wait_for(lambda: router.routes.routes["m"].all_down)
    response, _ = yield post(router, chat())
    assert response.code == 200 and response.headers.getRawHeaders(b"x-llmhop-fallback") == [b"s"]
    assert down.served == 0 and spare.served == 1


@inlineCallbacks
def test_probes_carry_the_models_headers_and_a_dead_replica_goes_down(make_router, make_backend):
    backend = make_backend()
    router = make_router(
        {
            "models": {
                "m": {"url": [backend.url, dead_url()], "healthCheck": FAST_CHECK, "headers": {"X-Key": "k"}},
                "plain": {"url": backend.url.replace("127.0.0.1", "localhost")},
            }
        }
    )
    health = router.routes.routes["m"].health
    yield wait_for(lambda: health[1].down)
    assert backend.probes >= 2 and not health[0].down
    assert "ConnectionRefusedError" in health[1].last_error
    # Only models with a healthCheck are probed.
    assert sorted(router.health.probers) == sorted(router.routes.routes["m"].replicas[i].url for i in (0, 1))


# --- /ready and /status ---------------------------------------------------------


@inlineCallbacks
def test_ready_answers_without_auth_and_503_while_draining(make_router, backend):
    router = make_router({"models": {"m": {"url": backend.url}}, "authTokens": ["tok-123456"]})
    response = yield treq.get(router.url + "/ready")
    assert response.code == 200 and json.loads((yield response.content())) == {"status": "ready"}
    router.site.draining = True
    response = yield treq.get(router.url + "/ready")
    assert response.code == 503 and json.loads((yield response.content())) == {"status": "draining"}
    # Liveness stays.
    assert (yield treq.get(router.url + "/health")).code == 200
    router.site.draining = False


@inlineCallbacks
def test_status_lists_every_replica_and_no_secret(make_router, make_backend):
    live = make_backend()
    dead = dead_url()
    router = make_router(
        {
            "models": {"m": {"url": [live.url, dead], "headers": {"Authorization": "Bearer sk-SECRET"}}},
            "authTokens": ["tok-123456"],
        }
    )
    assert (yield treq.get(router.url + "/status")).code == 401
    yield post(router, chat(), headers={"Authorization": b"Bearer tok-123456"})
    yield post(router, chat(), headers={"Authorization": b"Bearer tok-123456"})
    response = yield treq.get(router.url + "/status", headers={"Authorization": "Bearer tok-123456"})
    content = yield response.content()
    assert response.code == 200 and b"sk-SECRET" not in content
    replicas = json.loads(content)["routes"]["m"]["replicas"]
    assert [r["url"] for r in replicas] == [live.url, dead]
    assert replicas[0] == {"url": live.url, "state": "up", "inFlight": 0, "lastError": None, "lastCheck": None}
    assert replicas[1]["state"] == "cooling" and "ConnectionRefusedError" in replicas[1]["lastError"]


# --- affinity -----------------------------------------------------------------


def conversation(prefix, turn):
    # Longer than affinityBytes (2048): the turns differ only after the key.
    messages = [{"role": "system", "content": prefix * 400}, {"role": "user", "content": "turn %d" % (turn,)}]
    return json.dumps({"model": "m", "messages": messages}).encode()


@inlineCallbacks
def test_prefix_affinity_sends_a_shared_prefix_to_one_replica(make_router, make_backend):
    backends = [make_backend() for _ in range(3)]
    settings = {"models": {"m": {"url": [b.url for b in backends], "policy": "prefix-affinity"}}}
    router, other_copy = make_router(settings), make_router(settings)
    where = {}
    for prefix in ("alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta "):
        before = [b.served for b in backends]
        for turn in range(4):
            # Turns alternate between two router copies: they agree without sharing state.
            yield post(router if turn % 2 else other_copy, conversation(prefix, turn))
        grew = [i for i, b in enumerate(backends) if b.served != before[i]]
        assert len(grew) == 1, (prefix, grew)
        where[prefix] = grew[0]
    assert len(set(where.values())) > 1  # different prefixes spread


@inlineCallbacks
def test_session_affinity_follows_the_header_else_the_user(make_router, make_backend):
    backends = [make_backend() for _ in range(3)]
    router = make_router({"models": {"m": {"url": [b.url for b in backends], "policy": "session-affinity"}}})

    @defer.inlineCallbacks
    def replica_of(**kw):
        before = [b.served for b in backends]
        for _ in range(3):
            yield post(router, chat(**kw.get("body", {})), headers=kw.get("headers"))
        grew = [i for i, b in enumerate(backends) if b.served != before[i]]
        assert len(grew) == 1
        return grew[0]

    yield replica_of(headers={"X-Session-Id": b"s-1"})
    yield replica_of(body={"user": "u-42"})


@inlineCallbacks
def test_the_access_line_and_metrics_name_the_fallback(make_router, make_backend):
    spare = make_backend()
    router = make_router({"models": {"m": {"url": dead_url(), "fallbacks": ["s"]}, "s": {"url": spare.url}}})
    router.site.access_log.stream = lines = io.StringIO()
    yield post(router, chat())
    assert "model=m status=200" in lines.getvalue() and "fallback=s\n" in lines.getvalue(), lines.getvalue()


@inlineCallbacks
def test_every_replica_down_is_refused_before_waiting_for_a_place_in_the_queue(make_router, make_backend):
    backend = make_backend()
    router = make_router({"models": {"m": {"url": backend.url, "maxConcurrentRequests": 1, "healthCheck": True}}})
    holder = treq.post(
        router.url + "/v1/chat/completions",
        chat(script={"kind": "hang"}),
        headers={"Content-Type": "application/json"},
    )
    yield wait_for(lambda: backend.served == 1)
    router.routes.routes["m"].health[0].down = True
    response, content = yield post(router, chat())
    assert response.code == 503 and json.loads(content)["error"]["code"] == "model_unavailable"
    assert response.headers.getRawHeaders(b"retry-after") == [b"5"]
    holder.cancel()
    holder.addErrback(lambda _: None)
