"""Cross-origin requests from browser chat UIs (SPEC §7, C{cors}).

A browser asks before a cross-origin request with credentials or JSON (a
preflight: C{OPTIONS} with C{Origin} and C{Access-Control-Request-Method},
never carrying a token); llmhop answers it for an allowed origin without
auth.  Every other answer to an allowed origin names it in
C{Access-Control-Allow-Origin}, with C{Vary: Origin} so that caches keep
answers to different origins apart.  Nothing else gets CORS headers, and a
backend's own are not relayed (L{llmhop.proxy}): which origins may read
answers is the gateway's policy, not each backend's (llama.cpp's server,
for one, allows every origin).
"""

import re
from collections.abc import Iterable
from typing import Optional

import attrs
from twisted.web.http_headers import Headers

from llmhop.auth import CREDENTIAL_HEADERS

ANY = "*"
METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# Chromium caps the cache at 2 hours; Firefox at 24.
MAX_AGE = b"7200"
# Allowed when a preflight's own list is absent or malformed: what clients of
# an OpenAI-compatible gateway send beyond the CORS-safelisted headers.
DEFAULT_ALLOW_HEADERS = b", ".join((*CREDENTIAL_HEADERS, b"content-type", b"x-request-id"))
# What a preflight may ask to send: a comma-separated list of field names (RFC 9110 §5.1).
_FIELD_NAMES = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")


@attrs.frozen
class Cors:
    """The origins allowed to read answers; none by default."""

    origins: frozenset[bytes] = frozenset()
    any_origin: bool = False

    @classmethod
    def from_origins(cls, origins: Iterable[str]) -> "Cors":
        origins = list(origins)
        if origins == [ANY]:
            return cls(any_origin=True)
        return cls(frozenset(o.encode("ascii") for o in origins))

    def allowed(self, headers: Headers) -> Optional[bytes]:
        """The C{Access-Control-Allow-Origin} value for the request's C{Origin}, or None: no CORS headers."""
        if not self.origins and not self.any_origin:
            return None
        values = headers.getRawHeaders(b"origin")
        if values is None or len(values) != 1:
            return None
        if self.any_origin:
            return b"*"
        return values[0] if values[0] in self.origins else None


def is_preflight(method: bytes, headers: Headers) -> bool:
    """Whether the request is a browser's CORS preflight (Fetch standard, "CORS-preflight request")."""
    return method == b"OPTIONS" and headers.hasHeader(b"access-control-request-method")


def preflight_headers(origin: bytes, headers: Headers) -> list[tuple[bytes, bytes]]:
    """The headers of the 204 answering a preflight from allowed C{origin}."""
    return [
        (b"Access-Control-Allow-Origin", origin),
        (b"Access-Control-Allow-Methods", METHODS),
        (b"Access-Control-Max-Age", MAX_AGE),
        (b"Vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        (b"Access-Control-Allow-Headers", _allow_headers(headers)),
    ]


def _allow_headers(headers: Headers) -> bytes:
    """Echo the preflight's well-formed list (the origin is trusted; which
    headers its requests carry is its business), else the default list."""
    asked = headers.getRawHeaders(b"access-control-request-headers")
    if asked is not None and len(asked) == 1 and _FIELD_NAMES.fullmatch(asked[0].strip()):
        return asked[0].strip()
    return DEFAULT_ALLOW_HEADERS
