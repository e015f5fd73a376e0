"""Which replica a request prefers: rendezvous hashing of an affinity key (SPEC §6).

An inference server's prefix cache only helps if the requests sharing a prefix
reach the same replica.  The stateful cache-aware routers remember where each
prefix went, which several router copies behind a load balancer cannot share.
Rendezvous (highest-random-weight) hashing needs no memory: every replica gets
a score from a hash of the key and its URL, and the highest score wins, so
every llmhop copy with the same config picks the same replica, and a replica
that goes down moves only its own keys elsewhere.

The key is taken from the client's body as it arrived, before any rename:
the first C{affinityBytes} bytes of the top-level C{messages}, C{prompt} or
C{input} value (prefix-affinity), or the C{affinityHeader} header, else the
top-level C{user} value (session-affinity).
"""

import hashlib
import math
from collections.abc import Sequence
from typing import Optional

from twisted.web.http_headers import Headers

from llmhop.extract import Body, Spans

PREFIX, SESSION = "prefix-affinity", "session-affinity"
# The values prefix-affinity reads, in the order it looks for them.
_PROMPT_KEYS = ("messages", "prompt", "input")
# A replica already holding LOAD_FACTOR times its fair share is passed over.
LOAD_FACTOR = 1.5


def key_of(policy: str, limit: int, header: bytes, headers: Headers, body: Body, spans: Spans) -> Optional[bytes]:
    """The request's affinity key under C{policy}, or None (then least-in-flight decides)."""
    if policy == PREFIX:
        for name in _PROMPT_KEYS:
            span = spans.get(name)
            if span is not None:
                start, end = span
                return bytes(body[start : min(end, start + limit)])
        return None
    if policy == SESSION:
        values = headers.getRawHeaders(header)
        if values and values[0]:
            return values[0]
        span = spans.get("user")
        return None if span is None else bytes(body[span[0] : span[1]])
    return None


def digest(key: bytes) -> bytes:
    """The key hashed once; each replica's score hashes this with its URL."""
    return hashlib.blake2b(key, digest_size=16).digest()


def score(key_digest: bytes, url: bytes) -> bytes:
    """The replica's weight for the key: compared as bytes, the highest wins."""
    return hashlib.blake2b(url + b"\0" + key_digest, digest_size=8).digest()


def bound(in_flight: int, up: int) -> int:
    """The load at which a replica is passed over: ceil(1.5 × (m + 1) / n)."""
    return math.ceil(LOAD_FACTOR * (in_flight + 1) / up)


def choose(key_digest: bytes, urls: Sequence[bytes], loads: Sequence[int], candidates: Sequence[int], cap: int) -> int:
    """The first of C{candidates} in the key's hash order whose load is under C{cap}.

    If every one is at the cap (replicas shared with other routes can be),
    the least loaded, the key's order breaking ties.
    """
    order = sorted(candidates, key=lambda i: score(key_digest, urls[i]), reverse=True)
    for index in order:
        if loads[index] < cap:
            return index
    return min(order, key=lambda i: loads[i])
