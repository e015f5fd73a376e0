"""Request IDs: the client's C{X-Request-Id} when it is a fair one, else one made here (SPEC §8).

A fair one is printable ASCII of at most 128 bytes, sent once: it goes into
log lines and a backend's logs, so nothing else is taken from a client.
llmhop's own are a random prefix per process and a counter: unique across
processes and copies without a syscall per request.
"""

import itertools
import os
import re

from twisted.web.http_headers import Headers

REQUEST_ID_HEADER = b"X-Request-Id"
MAX_BYTES = 128

_FAIR = re.compile(rb"[\x20-\x7e]{1,%d}" % (MAX_BYTES,))
_PREFIX = os.urandom(8).hex().encode("ascii")
_next = itertools.count(1).__next__


def request_id_of(headers: Headers) -> bytes:
    """The request's ID: the client's, when fair, else a new one."""
    values = headers.getRawHeaders(b"x-request-id")
    if values is not None and len(values) == 1 and _FAIR.fullmatch(values[0]):
        return values[0]
    return b"%s-%x" % (_PREFIX, _next())
