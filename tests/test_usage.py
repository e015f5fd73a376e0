"""llmhop.usage: token usage from the tail of an answer, however it was split (SPEC §8)."""

import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from llmhop import usage
from llmhop.usage import TAIL_BYTES, Tail, Usage

USAGE = {"prompt_tokens": 17, "completion_tokens": 42, "total_tokens": 59}


def events(n, with_usage=True, done=True):
    out = [
        b"data: " + json.dumps({"choices": [{"delta": {"content": "tok%d" % i}}]}).encode() + b"\n\n" for i in range(n)
    ]
    if with_usage:
        out.append(b"data: " + json.dumps({"choices": [], "usage": USAGE}).encode() + b"\n\n")
    if done:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def split(data, cuts):
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)]) if a < b]


def read(chunks, streamed):
    tail = Tail()
    for chunk in chunks:
        tail.add(chunk)
    return usage.read(tail, streamed)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 2000), cuts=st.lists(st.integers(0, 200_000), max_size=30))
def test_a_streams_usage_is_found_however_the_stream_was_split(n, cuts):
    assert read(split(events(n), cuts), True) == Usage(17, 42)


@settings(max_examples=200, deadline=None)
@given(pad=st.integers(0, 60_000), cuts=st.lists(st.integers(0, 70_000), max_size=20))
def test_a_json_answers_usage_is_found_at_any_length(pad, cuts):
    answer = json.dumps({"id": "x", "choices": [{"message": {"content": "y" * pad}}], "usage": USAGE}).encode()
    assert read(split(answer, cuts), False) == Usage(17, 42)


@pytest.mark.parametrize(
    "data, streamed",
    [
        (events(3, with_usage=False), True),
        (b'data: {"usage": null}\n\ndata: [DONE]\n\n', True),
        (b'{"choices": [], "usage": {"prompt_tokens": "17", "completion_tokens": 1}}', False),
        (b'{"choices": [], "usage": {"prompt_tokens": -1, "completion_tokens": 1}}', False),
        (b'{"choices": [], "usage": {"prompt_tokens": true, "completion_tokens": 1}}', False),
        (b"not json", False),
        (b'[{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}]', False),
    ],
)
def test_no_usage_or_a_malformed_one_counts_nothing(data, streamed):
    assert read([data], streamed) is None


def test_usage_quoted_inside_the_content_is_not_taken_for_the_answers():
    # Inside a JSON string every quote is escaped: only the real key counts.
    content = 'say "usage": {"prompt_tokens": 1, "completion_tokens": 2}' + "z" * TAIL_BYTES
    answer = json.dumps({"choices": [{"message": {"content": content}}], "usage": USAGE}).encode()
    assert read([answer], False) == Usage(17, 42)
    without = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
    assert read([without], False) is None


def test_the_responses_and_anthropic_names_count_too():
    answer = b'{"type": "message", "usage": {"input_tokens": 5, "output_tokens": 7}}'
    assert read([answer], False) == Usage(5, 7)


def test_the_tail_keeps_a_bounded_number_of_bytes():
    tail = Tail()
    for _ in range(10_000):
        tail.add(b"x" * 100)
    assert TAIL_BYTES <= tail.kept < TAIL_BYTES + 100
    assert tail.total == 1_000_000


def test_a_json_answer_that_fits_the_tail_is_read_whole():
    # Whole, its top-level usage counts, not a nested object of the same name after it.
    nested = {"prompt_tokens": 1, "completion_tokens": 1}
    answer = json.dumps({"usage": USAGE, "choices": [{"message": {"metadata": {"usage": nested}}}]}).encode()
    assert read([answer], False) == Usage(17, 42)


def events_oracle(data):
    """The plain reading of an SSE tail: split it into events at every blank line, then look from the end."""
    for event in reversed(re.split(rb"\r?\n\r?\n", data)):
        if b'"usage"' not in event:
            continue
        payload = b"\n".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        found = usage._from_document(payload)
        if found is not None:
            return found
    return None


_EVENT_PAYLOADS = st.sampled_from(
    [
        b'{"choices": [{"delta": {"content": "hi"}}]}',
        b'{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}',
        b'{"choices": [], "usage": {"input_tokens": 5, "output_tokens": 6}}',
        b'{"choices": [{"delta": {}}], "usage": null}',
        b'{"choices": [{"delta": {"content": "\\"usage\\": {\\"prompt_tokens\\": 9}"}}]}',
        b'{"usage": {"prompt_tokens": 7, "completion_tokens"',
        b"[DONE]",
    ]
)
_LINE_ENDS = st.sampled_from([b"\n", b"\r\n"])


@st.composite
def sse_tails(draw):
    """A stream's tail as servers write it, \\n or \\r\\n line ends, cut anywhere at its start."""
    out = b""
    for payload in draw(st.lists(_EVENT_PAYLOADS, max_size=12)):
        end = draw(_LINE_ENDS)
        out += draw(st.sampled_from([b"", b": keep-alive" + end, b"event: chunk" + end]))
        out += b"data: " + payload + end + draw(_LINE_ENDS)
    return out[draw(st.integers(0, len(out))) :]


@settings(max_examples=500, deadline=None)
@given(sse_tails())
def test_the_usage_found_from_the_end_is_the_one_a_split_into_events_finds(data):
    assert usage._from_events(data) == events_oracle(data)
