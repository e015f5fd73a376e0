"""Active health checks on a fake clock: down and up rules, no pile-up, reloads (SPEC §6)."""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from llmhop import config as configlib
from llmhop.health import HealthChecks, Prober, targets
from llmhop.routing import RoutingTable


@implementer(IAgent)
class ScriptedAgent:
    """Answers each probe with the next of C{answers}: a status, or None to hang until cancelled."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.sent = []  # (method, url, headers)
        self.pending = []
        self.cancelled = 0

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.sent.append((method, uri, headers))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if answer is None:
            hung = defer.Deferred(self._cancelled)
            self.pending.append(hung)
            return hung
        return defer.succeed(Answer(answer))

    def _cancelled(self, _):
        self.cancelled += 1

    @property
    def outstanding(self):
        return sum(1 for d in self.pending if not d.called)


class Answer:
    """An IResponse with an empty body."""

    def __init__(self, code):
        self.code = code
        self.headers = Headers()

    def deliverBody(self, protocol):
        protocol.makeConnection(_Transport())
        protocol.connectionLost(None)


class _Transport:
    def stopProducing(self):
        pass


def table(check=True, urls=("http://a:1", "http://b:2"), **model):
    spec = {"url": list(urls), "healthCheck": check, **model}
    return RoutingTable.from_config(configlib.parse({"models": {"m": spec}}, {}))


def prober_for(agent, check=None, clock=None):
    routes = table(check or {"interval": 5, "timeout": 2, "failures": 2}, urls=("http://a:1",))
    target, health = targets(routes)["http://a:1"]
    return Prober(target, health, agent, clock or Clock()), health


def test_down_after_failures_in_a_row_and_up_after_one_success():
    clock = Clock()
    agent = ScriptedAgent(503, 200, 503, 503, 200)
    prober, health = prober_for(agent, clock=clock)
    prober.start()
    assert not health.down  # up until the first probe
    clock.advance(0)
    assert health.failures == 1 and not health.down and health.last_error == "answered 503"
    clock.advance(5)
    assert health.failures == 0 and not health.down  # one failure is not enough
    clock.advance(5)
    clock.advance(5)
    assert health.down and health.failures == 2
    clock.advance(5)
    assert not health.down and health.last_check == 20
    assert len(agent.sent) == 5


def test_a_probe_is_a_get_of_the_path_with_the_models_headers():
    agent = ScriptedAgent(200)
    routes = RoutingTable.from_config(
        configlib.parse(
            {
                "models": {
                    "m": {
                        "url": "http://a:1/prefix",
                        "healthCheck": {"path": "/v1/models"},
                        "headers": {"Authorization": "Bearer k"},
                    }
                }
            },
            {},
        )
    )
    checks = HealthChecks(Clock())
    checks.update(routes, agent)
    checks.reactor.advance(0)
    method, url, headers = agent.sent[0]
    assert (method, url) == (b"GET", b"http://a:1/prefix/v1/models")
    assert headers.getRawHeaders(b"authorization") == [b"Bearer k"]
    assert headers.getRawHeaders(b"host") == [b"a:1"]


def test_a_hung_backend_gets_one_probe_at_a_time_and_each_times_out():
    clock = Clock()
    agent = ScriptedAgent(*[None] * 100)
    prober, health = prober_for(agent, {"interval": 1, "timeout": 3, "failures": 2}, clock)
    prober.start()
    for _ in range(300):
        clock.advance(0.1)
        assert agent.outstanding <= 1
    # A probe every timeout (3 s): the interval (1 s) passed while it hung.
    assert 9 <= len(agent.sent) <= 11
    assert agent.cancelled == len(agent.sent) - agent.outstanding
    assert health.down and health.last_error == "no answer within 3s"


def test_no_health_check_means_no_prober_and_no_timer():
    clock = Clock()
    checks = HealthChecks(clock)
    checks.update(table(check=False), ScriptedAgent())
    assert checks.probers == {} and clock.getDelayedCalls() == []


def test_stop_cancels_the_timer_and_the_probe_under_way():
    clock = Clock()
    agent = ScriptedAgent(None, None)
    checks = HealthChecks(clock)
    checks.update(table(), agent)
    clock.advance(0)
    assert agent.outstanding == 2
    checks.stop()
    assert agent.outstanding == 0 and clock.getDelayedCalls() == []


def test_a_reload_keeps_probers_and_state_by_url_and_forgets_removed_checks():
    clock = Clock()
    agent = ScriptedAgent(*[503] * 10)
    checks = HealthChecks(clock)
    first = table({"failures": 1})
    checks.update(first, agent)
    clock.advance(0)
    assert first.routes["m"].all_down
    # Same settings: the same probers, the same (down) state.
    probers = dict(checks.probers)
    second = RoutingTable.from_config(
        configlib.parse({"models": {"m": {"url": ["http://a:1", "http://b:2"], "healthCheck": {"failures": 1}}}}, {}),
        first,
    )
    checks.update(second, agent)
    assert checks.probers == probers and second.routes["m"].all_down
    # The check removed: nothing probes, and nothing stays down.
    third = RoutingTable.from_config(
        configlib.parse({"models": {"m": {"url": ["http://a:1", "http://b:2"]}}}, {}), second
    )
    checks.update(third, agent)
    assert checks.probers == {} and not any(h.down for h in third.routes["m"].health)
    assert clock.getDelayedCalls() == []


def test_changed_settings_restart_the_prober():
    clock = Clock()
    checks = HealthChecks(clock)
    first = table({"interval": 5})
    checks.update(first, ScriptedAgent())
    old = checks.probers["http://a:1"]
    checks.update(
        RoutingTable.from_config(
            configlib.parse(
                {"models": {"m": {"url": ["http://a:1", "http://b:2"], "healthCheck": {"interval": 7}}}}, {}
            ),
            first,
        ),
        ScriptedAgent(),
    )
    assert checks.probers["http://a:1"] is not old and checks.probers["http://a:1"].target.check.interval == 7


def test_a_connection_failure_is_described_without_secrets():
    from twisted.internet.error import ConnectionRefusedError

    clock = Clock()
    agent = ScriptedAgent(ConnectionRefusedError("127.0.0.1", 1))
    prober, health = prober_for(agent, clock=clock)
    prober.start()
    clock.advance(0)
    assert health.last_error.startswith("ConnectionRefusedError")
    assert json.dumps(health.last_error)
