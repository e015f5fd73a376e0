"""One exchange (llmhop/proxy.py) on a fake clock: replica attempts, the response timeout, the relay's watchdog."""

import attrs
import pytest
from twisted.internet import defer, error as neterror
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from llmhop.attempts import Attempts
from llmhop.proxy import Exchange
from llmhop.upstream import Upstream
from tests.test_routing import THREE, route_of

READ_TIMEOUT = 30.0
RESPONSE_TIMEOUT = 60.0


@attrs.define
class ScriptedUpstream(Upstream):
    """An Upstream whose sends are Deferreds the test fires."""

    sent: list = attrs.Factory(list)

    def send(self, request, url, host, headers):
        answer = defer.Deferred()
        self.sent.append((url, answer))
        return answer


def upstream(clock):
    return ScriptedUpstream(None, clock, RESPONSE_TIMEOUT, READ_TIMEOUT, strip_credentials=False)


class Request(DummyRequest):
    """DummyRequest, with a push producer kept (DummyRequest would pull from it) and a transport to abort."""

    producer = None
    # What a GatewayRequest carries that a DummyRequest lacks.
    span = None
    replica = None
    request_id = b"test-request-1"

    def __init__(self, postpath):
        super().__init__(postpath)
        self.channel = attrs.make_class("Channel", ["transport"])(StringTransport())

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def request():
    req = Request([b"v1", b"chat"])
    req.method, req.uri, req.body, req.model = b"POST", b"/v1/chat", b"{}", "m"
    req.outcome = ""
    return req


class Response:
    """An IResponse; its body's transport is a StringTransport (stopped: dropped unread)."""

    phrase, length = b"OK", 5
    headers = Headers()

    def __init__(self, code=200):
        self.code = code
        self.transport = StringTransport()

    @property
    def dropped(self):
        return self.transport.producerState == "stopped"

    def deliverBody(self, protocol):
        protocol.makeConnection(self.transport)
        self.protocol = protocol


def refused():
    return Failure(neterror.ConnectionRefusedError())


def lost_after_sending():
    return Failure(ResponseNeverReceived([Failure(neterror.ConnectionLost())]))


def test_a_replica_that_refuses_is_cooled_down_and_the_next_one_tried():
    clock, route = Clock(), route_of(THREE)
    clock.advance(100)
    up = upstream(clock)
    answers = Attempts(request(), route, up, Headers()).send()
    up.sent[0][1].errback(refused())
    assert [url for url, _ in up.sent] == [b"http://127.0.0.1:1", b"http://127.0.0.1:2"]
    assert route.health[0].failed_until == 100 + up.cooldown
    response = Response(200)
    up.sent[1][1].callback(response)
    assert answers.result is response
    assert (route.health[0].in_flight, route.health[1].in_flight) == (0, 1)


def test_a_retry_on_status_is_dropped_unread_and_the_next_replica_tried():
    clock, route = Clock(), route_of(THREE)
    up = upstream(clock)
    answers = Attempts(request(), route, up, Headers()).send()
    full = Response(503)
    up.sent[0][1].callback(full)
    assert full.dropped and len(up.sent) == 2
    assert route.health[0].in_flight == 0 and route.health[0].failed_until == 0.0  # no cool-down
    assert route.health[0].last_error == "answered 503"
    up.sent[1][1].callback(Response(200))
    assert answers.result.code == 200
    assert (route.state.in_flight, route.health[1].in_flight) == (1, 1)


def test_the_last_replicas_refusal_is_the_answer_and_other_statuses_are_not_retried():
    clock, route = Clock(), route_of(THREE[:2], retryOn=[429])
    up = upstream(clock)
    answers = Attempts(request(), route, up, Headers()).send()
    up.sent[0][1].callback(Response(429))
    last = Response(429)
    up.sent[1][1].callback(last)
    assert answers.result is last and not last.dropped
    other = Attempts(request(), route, up, Headers()).send()
    up.sent[2][1].callback(Response(503))
    assert other.result.code == 503 and len(up.sent) == 3


def test_down_replicas_are_not_tried_and_all_down_fails_unavailable():
    from llmhop.errors import Unavailable

    clock, route = Clock(), route_of(THREE, healthCheck={"interval": 7.5})
    up = upstream(clock)
    route.health[0].down = True
    Attempts(request(), route, up, Headers()).send()
    assert up.sent[0][0] == b"http://127.0.0.1:2"
    for health in route.health:
        health.down = True
    failures = []
    Attempts(request(), route, up, Headers()).send().addErrback(failures.append)
    assert len(up.sent) == 1
    assert failures[0].check(Unavailable) and failures[0].value.retry_after == 8


def test_a_failure_after_the_request_may_have_been_sent_is_not_retried():
    clock, route = Clock(), route_of(THREE)
    up = upstream(clock)
    failures = []
    Attempts(request(), route, up, Headers()).send().addErrback(failures.append)
    up.sent[0][1].errback(lost_after_sending())
    assert len(up.sent) == 1
    assert failures[0].check(ResponseNeverReceived)
    assert route.health[0].failed_until == 0.0


def test_when_every_replica_refuses_the_last_failure_is_the_answer():
    clock, route = Clock(), route_of(THREE)
    up = upstream(clock)
    failures = []
    Attempts(request(), route, up, Headers()).send().addErrback(failures.append)
    for _ in range(3):
        up.sent[-1][1].errback(refused())
    assert len(up.sent) == 3
    assert failures[0].check(neterror.ConnectionRefusedError)


def test_cancelling_the_attempts_cancels_the_one_under_way():
    clock, route = Clock(), route_of(THREE)
    up = upstream(clock)
    failures = []
    answers = Attempts(request(), route, up, Headers()).send()
    answers.addErrback(failures.append)
    answers.cancel()
    assert failures[0].check(defer.CancelledError)
    assert up.sent[0][1].called  # the agent's request was cancelled too, and not retried
    assert len(up.sent) == 1


def test_no_answer_within_the_response_timeout_is_a_504():
    clock, route = Clock(), route_of(THREE[:1])
    up, req = upstream(clock), request()
    Exchange(req, route, up, Attempts(req, route, up, Headers())).start()
    clock.advance(RESPONSE_TIMEOUT - 1)
    assert not req.finished
    clock.advance(1)
    assert req.responseCode == 504
    assert req.outcome == "upstream-timeout"
    assert b'"code": "upstream_timeout"' in b"".join(req.written)


def answered(clock):
    route = route_of(THREE[:1])
    up, req = upstream(clock), request()
    Exchange(req, route, up, Attempts(req, route, up, Headers())).start()
    response = Response()
    up.sent[0][1].callback(response)
    return req, response


def test_a_backend_silent_for_the_read_timeout_mid_body_is_cut_off():
    clock = Clock()
    req, response = answered(clock)
    clock.advance(READ_TIMEOUT - 1)
    response.protocol.dataReceived(b"data:")  # resets the watchdog
    clock.advance(READ_TIMEOUT - 1)
    assert req.outcome == ""
    clock.advance(1)
    assert req.outcome == "upstream-stalled"
    assert response.transport.producerState == "stopped"
    assert req.channel.transport.disconnected  # aborted: the client must not take it for a whole answer


def test_while_the_client_holds_the_backend_paused_silence_is_not_a_stall():
    clock = Clock()
    req, response = answered(clock)
    relay = req.producer
    relay.pauseProducing()
    assert response.transport.producerState == "paused"
    clock.advance(READ_TIMEOUT * 10)
    assert req.outcome == ""
    relay.resumeProducing()
    clock.advance(READ_TIMEOUT - 1)
    assert req.outcome == ""
    clock.advance(1)
    assert req.outcome == "upstream-stalled"


def test_a_body_relayed_to_its_end_finishes_the_request_and_stops_the_watchdog():
    clock = Clock()
    req, response = answered(clock)
    response.protocol.dataReceived(b"hello")
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert req.finished and req.written[-1] == b"hello"
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("when", ["before-the-answer", "mid-body"])
def test_a_client_that_leaves_stops_the_backend(when):
    clock = Clock()
    route = route_of(THREE[:1])
    up, req = upstream(clock), request()
    Exchange(req, route, up, Attempts(req, route, up, Headers())).start()
    if when == "before-the-answer":
        req.processingFailed(Failure(ConnectionError("client left")))
        assert up.sent[0][1].called  # cancelled
        assert req.responseCode is None
    else:
        response = Response()
        up.sent[0][1].callback(response)
        req.processingFailed(Failure(ConnectionError("client left")))
        assert response.transport.producerState == "stopped"
    assert route.health[0].in_flight == 0
    assert clock.getDelayedCalls() == []
