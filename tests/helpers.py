"""What tests share besides fixtures: a dead URL, waiting on the reactor, one POST, a metrics scrape."""

import json
import socket
import time

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor

from llmhop.metrics import Metrics
from llmhop.service import build_gateway
from llmhop.site import GatewaySite


def dead_url():
    """An http URL at which nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d" % (s.getsockname()[1],)


def wait_for(predicate, timeout=5.0, interval=0.01):
    """A Deferred firing with C{predicate()}'s first true value, or failing at the deadline."""
    deadline = time.monotonic() + timeout
    result = defer.Deferred()

    def check():
        value = predicate()
        if value:
            result.callback(value)
        elif time.monotonic() > deadline:
            result.errback(AssertionError("condition not met within %ss" % (timeout,)))
        else:
            reactor.callLater(interval, check)

    check()
    return result


def chat(model="m", **extra):
    """A chat completion request body for C{model}."""
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


@defer.inlineCallbacks
def post(router, body, path="/v1/chat/completions", headers=None, content_type=b"application/json"):
    """POST C{body} to the in-process C{router}: fires with (the treq response, its body)."""
    sent = {b"Content-Type": [content_type]}
    for name, value in (headers or {}).items():
        sent[name.encode() if isinstance(name, str) else name] = [value]
    response = yield treq.post(router.url + path, body, headers=sent)
    content = yield response.content()
    return response, content


def scrape(router, headers=None):
    """The router's /metrics, parsed: {(name, labels as a sorted tuple): value}."""

    @defer.inlineCallbacks
    def get():
        response = yield treq.get(router.url + "/metrics", headers=headers)
        assert response.code == 200, response.code
        text = yield response.text()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    return get()


def build_site(config, clock, pool):
    """The site GatewayService serves, for in-process tests: gateway and metrics made as the service makes them."""
    metrics = Metrics()
    gateway = build_gateway(config, clock, pool, metrics)
    return GatewaySite(gateway, config, clock, None, metrics)
