"""Token usage through the router (SPEC §8): counted per model and token, time per output token for streams."""

import json

import pytest
import treq
from pytest_twisted import inlineCallbacks

from tests.helpers import scrape

USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


@pytest.fixture
def counted(make_router, backend):
    return make_router(
        {
            "authTokens": ["tok-open-1234", {"token": "tok-team-5678", "name": "team-a"}],
            "models": {"m": {"url": backend.url}},
        }
    )


@inlineCallbacks
def ask(router, script, token="tok-open-1234", stream=False):
    body = json.dumps({"model": "m", "stream": stream, "script": script}).encode()
    response = yield treq.post(router.url + "/v1/chat/completions", body, headers={"Authorization": "Bearer " + token})
    content = yield response.content()
    return response.code, content


def tokens(samples, token):
    labels = (("model", "m"), ("token", token))
    return (
        samples.get(("llmhop_prompt_tokens_total", labels), 0),
        samples.get(("llmhop_completion_tokens_total", labels), 0),
    )


@inlineCallbacks
def test_usage_of_streams_and_json_answers_is_counted_per_token(counted):
    yield ask(counted, {"kind": "sse", "n": 4, "interval": 0.01, "usage": USAGE}, stream=True)
    # A JSON answer longer than the tail window: its usage comes last.
    code, _ = yield ask(counted, {"kind": "echo", "pad": 100_000, "usage": USAGE}, token="tok-team-5678")
    assert code == 200
    yield ask(counted, {"kind": "echo", "usage": USAGE}, token="tok-team-5678")
    samples = yield scrape(counted, {"Authorization": "Bearer tok-open-1234"})
    assert tokens(samples, "token-0") == (11, 4)
    assert tokens(samples, "team-a") == (22, 8)
    # One stream: one observation of its time per output token.
    assert samples[("llmhop_time_per_output_token_seconds_count", (("model", "m"),))] == 1
    assert samples[("llmhop_time_per_output_token_seconds_sum", (("model", "m"),))] > 0


@inlineCallbacks
def test_answers_without_usage_or_not_ok_count_no_tokens(counted):
    yield ask(counted, {"kind": "sse", "n": 2, "interval": 0.01}, stream=True)
    yield ask(counted, {"kind": "status", "code": 400, "usage": USAGE})
    yield ask(counted, {"kind": "echo"})
    samples = yield scrape(counted, {"Authorization": "Bearer tok-open-1234"})
    assert tokens(samples, "token-0") == (0, 0)
    assert samples.get(("llmhop_time_per_output_token_seconds_count", (("model", "m"),)), 0) == 0
