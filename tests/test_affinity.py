"""Affinity: the key a request carries, rendezvous hashing and bounded load (SPEC §6)."""

import collections
import json

from hypothesis import given, strategies as st
from twisted.web.http_headers import Headers

from llmhop import affinity, config as configlib
from llmhop.extract import keyed_spans
from llmhop.routing import RoutingTable

URLS = ["http://10.0.0.%d:8000" % (i,) for i in range(1, 6)]


def route(policy="prefix-affinity", urls=URLS[:3], **extra):
    spec = {"url": list(urls), "policy": policy, **extra}
    return RoutingTable.from_config(configlib.parse({"models": {"m": spec}}, {})).routes["m"]


def key(body, policy="prefix-affinity", limit=2048, headers=None):
    return affinity.key_of(policy, limit, b"x-session-id", Headers(headers or {}), body, keyed_spans(body, None))


def test_the_prefix_key_is_the_first_bytes_of_the_value_as_sent():
    body = b'{"model": "m",  "messages" :  [ {"role":"user","content":"\\u00e9t\\u00e9"} ], "n": 2}'
    assert key(body) == b'[ {"role":"user","content":"\\u00e9t\\u00e9"} ]'
    assert key(body, limit=5) == b'[ {"r'
    assert key(b'{"model": "m", "prompt": "Once upon"}') == b'"Once upon"'
    assert key(b'{"model": "m", "input": ["a", "b"]}') == b'["a", "b"]'
    # messages first, then prompt, then input; the last duplicate, as json.loads reads it.
    assert key(b'{"input": 1, "prompt": 2, "messages": 3, "messages": 4, "model": "m"}') == b"4"
    assert key(b'{"model": "m"}') is None
    assert key(b'{"model": "m", "messages": []}', policy="least-in-flight") is None


def test_the_session_key_is_the_header_else_the_user():
    body = b'{"model": "m", "user": "u-1"}'
    assert key(body, "session-affinity", headers={b"X-Session-Id": [b"s-9"]}) == b"s-9"
    assert key(body, "session-affinity") == b'"u-1"'
    assert key(b'{"model": "m"}', "session-affinity") is None


def test_a_big_bodys_model_scan_finds_the_same_spans():
    from llmhop.extract import SMALL_BODY, _run, model_steps

    body = json.dumps({"model": "m", "tools": ["x" * SMALL_BODY], "messages": [{"content": "hi"}]}).encode()
    spans = {}
    assert _run(model_steps(body, None, spans)) == "m"
    assert spans == keyed_spans(body, None)
    start, end = spans["messages"]
    assert body[start:end] == b'[{"content": "hi"}]'


def test_two_router_copies_pick_the_same_replica_without_sharing_state():
    one, other = route(), route()
    for n in range(200):
        digest = affinity.digest(b"prefix %d" % (n,))
        assert one.pick(0, frozenset(), digest) == other.pick(0, frozenset(), digest)


def test_keys_spread_evenly_and_a_down_replica_moves_only_its_own_keys():
    r = route(urls=URLS)
    digests = [affinity.digest(b"conversation %d" % (n,)) for n in range(2000)]
    before = [r.pick(0, frozenset(), d) for d in digests]
    counts = collections.Counter(before)
    assert len(counts) == 5 and min(counts.values()) > 300
    r.health[2].down = True
    after = [r.pick(0, frozenset(), d) for d in digests]
    assert 2 not in after
    assert all(a == b for a, b in zip(before, after) if a != 2)


def test_bounded_load_passes_over_a_replica_holding_its_share_and_a_half():
    r = route()
    digest = affinity.digest(b"hot prefix")
    favourite = r.pick(0, frozenset(), digest)
    # m = 3 requests of the route in flight, all at the favourite; n = 3:
    # ceil(1.5 × 4 / 3) = 2, and the favourite holds 3.
    r.health[favourite].in_flight = r.state.in_flight = 3
    second = r.pick(0, frozenset(), digest)
    assert second != favourite
    # At 1 in flight (cap ceil(1.5 × 2 / 3) = 1) it is passed over too; at 0, not.
    r.health[favourite].in_flight = r.state.in_flight = 1
    assert r.pick(0, frozenset(), digest) != favourite
    r.health[favourite].in_flight = r.state.in_flight = 0
    assert r.pick(0, frozenset(), digest) == favourite


@given(st.lists(st.integers(0, 6), min_size=3, max_size=3), st.binary(min_size=1, max_size=64))
def test_the_choice_is_under_the_bound_whenever_a_replica_is(loads, raw):
    r = route()
    for health, load in zip(r.health, loads):
        health.in_flight = load
    r.state.in_flight = sum(loads)
    cap = affinity.bound(sum(loads), 3)
    chosen = r.pick(0, frozenset(), affinity.digest(raw))
    if any(load < cap for load in loads):
        assert loads[chosen] < cap
    else:
        assert loads[chosen] == min(loads)


def test_retries_follow_the_keys_hash_order():
    r = route()
    digest = affinity.digest(b"k")
    order = sorted(range(3), key=lambda i: affinity.score(digest, r.replicas[i].base_url), reverse=True)
    assert r.pick(0, frozenset(), digest) == order[0]
    assert r.pick(0, frozenset({order[0]}), digest) == order[1]
    assert r.pick(0, frozenset(order[:2]), digest) == order[2]
