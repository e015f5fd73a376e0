"""Replica choice, cool-down and the concurrency limit (llmhop/routing.py), without a reactor."""

import pytest
from prometheus_client import CollectorRegistry, Gauge
from twisted.internet import defer
from twisted.python.failure import Failure

from llmhop import config as configlib
from llmhop.routing import Limiter, RoutingTable


def route_of(urls, **model):
    config = configlib.parse({"models": {"m": dict({"url": urls}, **model)}}, {})
    return RoutingTable.from_config(config).lookup("m")


THREE = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]


def test_ties_go_round_robin():
    route = route_of(THREE)
    assert [route.pick(0.0, frozenset()) for _ in range(4)] == [0, 1, 2, 0]


def test_the_replica_with_fewest_requests_in_flight_is_picked():
    route = route_of(THREE)
    route.health[0].in_flight, route.health[1].in_flight, route.health[2].in_flight = 2, 1, 3
    assert [route.pick(0.0, frozenset()) for _ in range(3)] == [1, 1, 1]


@pytest.mark.parametrize(
    "now, picked",
    [(5.0, [1, 1, 2]), (10.0, [0, 1, 2])],
    ids=["cooling-down", "cool-down-over"],
)
def test_a_replica_that_failed_is_skipped_until_its_cool_down_ends(now, picked):
    route = route_of(THREE)
    route.health[0].failed_until = 10.0
    assert [route.pick(now, frozenset()) for _ in range(3)] == picked


def test_when_every_untried_replica_cools_down_the_cool_down_is_ignored():
    route = route_of(THREE)
    for health in route.health:
        health.failed_until = 100.0
    assert route.pick(0.0, frozenset({0})) in (1, 2)


def test_tried_replicas_are_not_picked_again_and_none_is_left_at_the_end():
    route = route_of(THREE)
    assert route.pick(0.0, frozenset({0, 2})) == 1
    assert route.pick(0.0, frozenset({0, 1, 2})) is None


def waiting_gauge():
    return Gauge("waiting", "", registry=CollectorRegistry())


def test_the_limit_lets_in_up_to_limit_queues_up_to_max_queued_and_refuses_the_rest():
    limiter, waiting = Limiter(limit=1, max_queued=1), waiting_gauge()
    first, second = defer.Deferred(), defer.Deferred()
    through = limiter.admit(first, waiting)
    queued = limiter.admit(second, waiting)
    assert through.called and not queued.called
    assert waiting._value.get() == 1
    assert limiter.admit(defer.Deferred(), waiting) is None
    first.callback(None)  # the first request ends: the next one goes
    assert queued.called
    assert waiting._value.get() == 0
    second.callback(None)
    assert limiter.semaphore.tokens == 1


def test_a_client_that_leaves_the_queue_gives_up_its_place():
    limiter = Limiter(limit=1, max_queued=2)
    first, leaving, third = defer.Deferred(), defer.Deferred(), defer.Deferred()
    limiter.admit(first)
    gave_up = limiter.admit(leaving)
    later = limiter.admit(third)
    failures = []
    gave_up.addErrback(failures.append)
    leaving.errback(Failure(ConnectionError("client left")))
    assert failures and failures[0].check(defer.CancelledError)
    assert len(limiter.waiting) == 1
    first.callback(None)
    assert later.called  # the place went to the one behind
    third.callback(None)
    assert limiter.semaphore.tokens == 1


def test_a_client_that_leaves_once_through_lets_the_next_one_in():
    limiter = Limiter(limit=1, max_queued=1)
    first, second = defer.Deferred(), defer.Deferred()
    limiter.admit(first)
    queued = limiter.admit(second)
    first.errback(Failure(ConnectionError("client left")))
    assert queued.called
    second.callback(None)
    assert limiter.semaphore.tokens == 1
