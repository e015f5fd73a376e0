"""The request target: what a client may ask a backend for (SPEC §5, "Paths").

The forwarded URL is the backend URL (with its path prefix, such as
C{https://openrouter.ai/api}) followed by the client's path and query.  A
client must never reach a path outside that prefix with the operator's
injected credentials, so a target that anything along the way could resolve
upwards is refused before a body byte is read:

- a dot-segment (C{.} or C{..}, RFC 3986 §5.2.4), literal or percent-encoded in
  any case (C{%2e%2E}), also once more encoded (C{%252e}): some servers decode
  twice;
- an encoded C{/} or C{\\} (C{%2f}, C{%5c}), which servers split on after
  decoding, and a literal C{\\}, which some treat as C{/};
- a fragment (C{#}), malformed percent-encoding, an encoded control
  character, or a decoded path that is not UTF-8 (overlong encodings of C{.});
- any target that is not origin-form (C{http://host/x}, C{host:443}, C{*}).

The query is passed on as it is: dot-segments there resolve nothing.

One exception: the model segment of C{/route/<model>/<rest>} (SPEC §7) may
hold C{%2F}, since model names hold C{/} (C{qwen/qwen2.5-7b}).  That segment
is llmhop's, never forwarded; everything else of the target is checked as
above, and C{<rest>} is what the backend gets.
"""

from typing import Optional
from urllib.parse import unquote_to_bytes

from llmhop import errors

# Decoding rounds checked: a target encoded three times over is refused too.
_ROUNDS = 3
_DOT_SEGMENTS = (b".", b"..")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# /route/<model>/<rest>: routed by the path, for requests whose body names no model.
ROUTE_PREFIX = b"/route/"


def check_target(uri: bytes) -> Optional[errors.ApiError]:
    """The answer to a request target that could leave the backend's prefix, or None."""
    if not uri.startswith(b"/"):
        return errors.invalid_path("Only origin-form request targets (starting with /) are accepted.")
    if b"#" in uri:
        return errors.invalid_path("A request target must not carry a fragment (#).")
    path = uri.partition(b"?")[0]
    if path.startswith(ROUTE_PREFIX):
        path = _model_slashes_read(path)
    if b"%" not in path and b"." not in path and b"\\" not in path:
        return None  # the usual /v1/chat/completions: nothing to resolve
    problem = _path_problem(path)
    return None if problem is None else errors.invalid_path(problem)


def _model_slashes_read(path: bytes) -> bytes:
    """C{path} with the C{%2F} of its C{/route/} model segment read as a plain character."""
    start = len(ROUTE_PREFIX)
    end = path.find(b"/", start)
    end = len(path) if end == -1 else end
    segment = path[start:end].replace(b"%2F", b"_").replace(b"%2f", b"_")
    return path[:start] + segment + path[end:]


def _path_problem(path: bytes) -> Optional[str]:
    if b"\\" in path:
        return "A request path must not contain a backslash."
    if not _well_encoded(path):
        return "A request path must use valid percent-encoding."
    level = path
    for _ in range(_ROUNDS):
        for segment in level.split(b"/"):
            problem = _segment_problem(segment)
            if problem is not None:
                return problem
        decoded = unquote_to_bytes(level)
        if decoded == level:
            break
        level = decoded
    else:
        return "A request path must not be percent-encoded more than twice over."
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return "A request path must decode to UTF-8."
    return None


def _segment_problem(segment: bytes) -> Optional[str]:
    if segment in _DOT_SEGMENTS:
        return "A request path must not contain . or .. segments."
    if b"%" not in segment:
        return None
    decoded = unquote_to_bytes(segment)
    if decoded in _DOT_SEGMENTS:
        return "A request path must not contain . or .. segments, encoded or not."
    if b"/" in decoded or b"\\" in decoded:
        return "A request path must not contain an encoded slash or backslash (%2F, %5C)."
    if any(byte < 0x20 or byte == 0x7F for byte in decoded):
        return "A request path must not contain encoded control characters."
    return None


def _well_encoded(path: bytes) -> bool:
    """Every % starts a %XX escape (RFC 3986 §2.1)."""
    start = path.find(b"%")
    while start != -1:
        escape = path[start + 1 : start + 3]
        if len(escape) != 2 or not all(c in _HEX for c in escape):
            return False
        start = path.find(b"%", start + 3)
    return True
