"""Token usage, read from the tail of an answer (SPEC §8).

OpenAI-compatible servers put C{usage} last: at the end of a JSON answer, and
in the last data event of a stream (with C{stream_options.include_usage}, or
always, as vLLM and llama.cpp do).  So the relay keeps only the last
L{TAIL_BYTES} of an answer (L{Tail}: the chunks as they came, no copy per
chunk, no parsing per chunk) and this module reads them once, when the answer
has ended.  That works for answers of any length and for a usage event that
arrived split across reads.

A JSON answer that fits in the tail is parsed whole (its top-level C{usage});
a longer one's usage is the last C{"usage": {…}} object in its tail, which is
where the servers put it.
"""

import json
import re
from collections import deque
from typing import Optional

import attrs

# Bytes of an answer kept: a usage event is some 200 bytes; the slack covers
# the events that follow it (finish reasons, [DONE]) and verbose servers.
TAIL_BYTES = 16 * 1024

# An event ends at a blank line; whatever its line ends (\n or \r\n), one of
# these is where it does.
_BLANK_LINES = (b"\n\n", b"\n\r\n")
_USAGE_KEY = re.compile(rb'(?<!\\)"usage"\s*:\s*')
# The names of OpenAI's chat and completions APIs, then of its Responses and Anthropic's APIs.
_NAMES = (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens"))


@attrs.frozen
class Usage:
    prompt: int
    completion: int


class Tail:
    """The last L{TAIL_BYTES} (at least) of a body, as the chunks that brought them."""

    __slots__ = ("chunks", "kept", "total")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.kept = 0
        self.total = 0

    def add(self, data: bytes) -> None:
        chunks = self.chunks
        chunks.append(data)
        size = len(data)
        self.kept += size
        self.total += size
        while self.kept - len(chunks[0]) >= TAIL_BYTES:
            self.kept -= len(chunks.popleft())

    def value(self) -> bytes:
        return b"".join(self.chunks)[-TAIL_BYTES:]


def read(tail: Tail, streamed: bool) -> Optional[Usage]:
    """The usage the answer whose tail is C{tail} reports, or None."""
    data = tail.value()
    if b'"usage"' not in data:
        return None  # most answers without usage are told apart without parsing
    if streamed:
        return _from_events(data)
    if tail.total == len(data):
        return _from_document(data)
    return _from_last_key(data)


def _from_events(data: bytes) -> Optional[Usage]:
    """The usage of the last event that reports one.

    Found from the end with C{rfind}: splitting the whole tail into events
    with a regular expression cost a stream 130 µs on CPython and 790 µs on
    PyPy (bench/RESULTS.md).
    """
    end = len(data)
    while True:
        found = data.rfind(b'"usage"', 0, end)
        if found < 0:
            return None
        start = _event_start(data, found)
        usage = _from_document(_payload(data[start : _event_end(data, found)]))
        if usage is not None:
            return usage
        end = start


def _event_start(data: bytes, at: int) -> int:
    """Where the event holding C{data[at]} begins: after the blank line before it, else at 0."""
    start = 0
    for blank in _BLANK_LINES:
        before = data.rfind(blank, 0, at)
        if before >= 0:
            start = max(start, before + len(blank))
    return start


def _event_end(data: bytes, at: int) -> int:
    """Where the event holding C{data[at]} ends: at the blank line after it, else at the end."""
    end = len(data)
    for blank in _BLANK_LINES:
        after = data.find(blank, at)
        if after >= 0:
            end = min(end, after)
    return end


def _payload(event: bytes) -> bytes:
    """An event's data: its C{data:} lines, joined (SSE)."""
    return b"\n".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))


def _from_document(data: bytes) -> Optional[Usage]:
    try:
        document = json.loads(data)
    except ValueError:
        return None  # not JSON, or the first event of the tail, cut
    return _counts(document.get("usage")) if isinstance(document, dict) else None


def _from_last_key(data: bytes) -> Optional[Usage]:
    keys = list(_USAGE_KEY.finditer(data))
    if not keys:
        return None
    found = keys[-1]
    try:
        value, _ = json.JSONDecoder().raw_decode(data[found.end() :].decode("utf-8", "replace"))
    except ValueError:
        return None
    return _counts(value)


def _counts(usage: object) -> Optional[Usage]:
    if not isinstance(usage, dict):
        return None
    for prompt_name, completion_name in _NAMES:
        prompt, completion = _count(usage.get(prompt_name)), _count(usage.get(completion_name))
        if prompt is not None and completion is not None:
            return Usage(prompt, completion)
    return None


def _count(value: object) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
