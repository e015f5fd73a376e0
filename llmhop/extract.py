"""Which model a request is for: the top-level ``model`` of its body (SPEC §2.4).

The router must pick exactly the model the backend will see, so the JSON path
agrees with C{json.loads}: the last duplicate key wins, escapes are decoded and
nested ``model`` keys are ignored.  For ``multipart/form-data`` (audio
transcription, image edits) the last ``model`` text field wins, as in the
form parsers that vLLM and the OpenAI-compatible servers use.
"""

import contextlib
import json
import re
from collections.abc import Generator
from email.message import Message
from typing import Any, Optional, TypeVar, Union

from twisted.internet import defer
from twisted.internet.task import TaskStopped, cooperate
from twisted.python.failure import Failure

from llmhop.errors import ApiError, unroutable_body

MULTIPART = b"multipart/form-data"
# Up to this size json.loads takes a few milliseconds: exact and fast enough.
# Above it, the scanner below keeps the reactor free.
SMALL_BODY = 256 * 1024
# Bytes one scanning step may look at before handing the reactor back.
_SLICE = 1 << 20
# Strings and brackets one body may make the scanner visit (about a second of
# CPU); a body needing more is refused rather than routed slowly.
_STEP_BUDGET = 2_000_000

# json.loads refuses documents nested about 1,000 deep (Python's recursion
# limit); refusing them earlier keeps the scanner from routing a body that the
# backend's parser would choke on.
MAX_DEPTH = 512

_WS = re.compile(rb"[ \t\n\r]*")
_BRACKETS = re.compile(rb"[\[\]{}]")
_SCALAR_END = re.compile(rb"[,}\] \t\n\r]")
_OPENERS, _CLOSERS = (b"[", b"{"), (b"]", b"}")

# Top-level keys whose values the affinity policies read (SPEC §6), recorded
# by the same walk that finds the model: name → (start, end) in the body.
KEYED = ("messages", "prompt", "input", "user")
Spans = dict[str, tuple[int, int]]

Steps = Generator[None, None, str]
T = TypeVar("T")
# A request body: the bytearray it was collected in, or bytes.
Body = Union[bytes, bytearray]


class ModelError(ValueError):
    """The body names no usable model; the message is safe to show the client."""

    # The OpenAI-shaped error's code (and its param) for the client.
    code = "model_required"
    param: Optional[str] = "model"

    def api_error(self) -> ApiError:
        return unroutable_body(str(self), self.code, self.param)


class InvalidJSON(ModelError):
    """The body is not JSON (or nests deeper than any parser should follow)."""

    code = "invalid_json"
    param = None


def extract_model(body: Body, content_type: Optional[bytes]) -> str:
    """The model of C{body}, computed in one go."""
    return _run(model_steps(body, content_type))


def _run(steps: Generator[None, None, T]) -> T:
    """What a step generator returns, without handing the reactor back in between."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def model_steps(body: Body, content_type: Optional[bytes], spans: Optional[Spans] = None) -> Steps:
    """The model of C{body}, as a generator that yields between bounded steps.

    Run it with C{twisted.internet.task.cooperate} for large bodies so that
    other connections are served while a 100 MiB body is scanned.  A large
    JSON body's walk fills C{spans} with where the L{KEYED} values lie.
    """
    if content_type is not None and media_type(content_type) == MULTIPART:
        return _from_multipart(body, content_type)
    if len(body) <= SMALL_BODY:
        return _from_small_json(body)
    return (yield from _from_large_json(body, spans))


def keyed_spans(body: Body, content_type: Optional[bytes]) -> Spans:
    """Where the top-level L{KEYED} values of a JSON body lie, in one go; empty for other bodies.

    For bodies up to L{SMALL_BODY}, which were routed with json.loads and not
    walked; a larger one's spans come from its model scan.
    """
    spans: Spans = {}
    if content_type is not None and media_type(content_type) == MULTIPART:
        return spans
    # A body without a model was refused before; the spans found so far stand.
    with contextlib.suppress(ModelError, IndexError):
        _run(_Scan(body, spans).model_span())
    return spans


def rename_steps(body: Body, content_type: Optional[bytes], name: str) -> Generator[None, None, bytes]:
    """C{body} with its model replaced by C{name}; nothing else changes.

    The bytes of the one value are spliced (a 100 MiB body is copied once,
    never decoded and re-encoded), at the place C{model_steps} read the name
    from.  A generator, like C{model_steps}, for large bodies.
    """
    if content_type is not None and media_type(content_type) == MULTIPART:
        start, end = _multipart_span(body, content_type)
        value = name.encode("utf-8")
    else:
        try:
            start, end = yield from _Scan(body).model_span()
        except IndexError:
            raise InvalidJSON("The request body is not valid JSON.") from None
        value = json.dumps(name).encode("ascii")
    return b"".join((body[:start], value, body[end:]))


def rename(body: Body, content_type: Optional[bytes], name: str) -> bytes:
    """C{rename_steps} in one go."""
    return _run(rename_steps(body, content_type, name))


def media_type(content_type: bytes) -> bytes:
    """A Content-Type value without its parameters, in lower case."""
    return content_type.split(b";", 1)[0].strip().lower()


def _from_small_json(body: Body) -> str:
    if not body.strip():
        raise ModelError("The request needs a JSON body with a 'model' field.")
    try:
        # Decoding first skips json's encoding sniffing, written in Python;
        # the sniffing (UTF-16, UTF-32, a BOM) is kept for bodies that fail.
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidJSON("The request body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise ModelError("The request body must be a JSON object.")
    return _model_value(document.get("model", None), "model" in document)


def _model_value(value: object, present: bool) -> str:
    if not present:
        raise ModelError("The request body has no 'model' field.")
    if not isinstance(value, str):
        raise ModelError("The 'model' field must be a string.")
    return value


def _from_large_json(body: Body, spans: Optional[Spans] = None) -> Steps:
    """Walk the top-level object only, skipping nested values at C speed.

    For a valid document the result is what json.loads gives: the last
    top-level "model" wins, its key and value are decoded by json.loads
    itself.  Only the top-level structure is checked: a body that is invalid
    deeper inside is forwarded, and the backend's own parser refuses it.
    """
    scan = _Scan(body, spans)
    try:
        return (yield from scan.top_level_model())
    except IndexError:
        raise InvalidJSON("The request body is not valid JSON.") from None


class _Scan:
    def __init__(self, body: Body, spans: Optional[Spans] = None) -> None:
        self.body = body
        self.end = len(body)
        self.steps = 0
        self.spans = spans

    def step(self) -> bool:
        """Count a step; True when it is time to hand the reactor back."""
        self.steps += 1
        if self.steps > _STEP_BUDGET:
            raise ModelError("The request body has too many JSON values to route; send the model in a simpler body.")
        return self.steps % 4096 == 0

    def invalid(self) -> ModelError:
        return InvalidJSON("The request body is not valid JSON.")

    def char(self, pos: int) -> Body:
        return self.body[pos : pos + 1]

    def whitespace(self, pos: int) -> Generator[None, None, int]:
        while True:
            limit = pos + _SLICE
            pos = _WS.match(self.body, pos, limit).end()  # type: ignore[union-attr]  # \s* always matches
            if pos < limit or pos >= self.end:
                return pos
            yield

    def top_level_model(self) -> Steps:
        start, end = yield from self.model_span()
        return _model_value(self.decode(start, end), True)

    def model_span(self) -> Generator[None, None, tuple[int, int]]:
        """Where the value of the last top-level "model" lies in the body."""
        pos = yield from self.whitespace(0)
        first = self.char(pos)
        if first != b"{":
            # Only the start is looked at: another JSON value, or no JSON at all.
            if first and first in b'["-0123456789tfn':
                raise ModelError("The request body must be a JSON object.")
            raise InvalidJSON("The request body is not valid JSON.")
        model: Optional[tuple[int, int]] = None
        pos = yield from self.whitespace(pos + 1)
        if self.char(pos) == b"}":
            pos += 1
        else:
            while True:
                if self.char(pos) != b'"':
                    raise self.invalid()
                key_end = yield from self.string_end(pos)
                key = self.decode(pos, key_end) if key_end - pos <= 64 else None
                pos = yield from self.whitespace(key_end)
                if self.char(pos) != b":":
                    raise self.invalid()
                start = yield from self.whitespace(pos + 1)
                pos = yield from self.value_end(start)
                if key == "model":
                    model = (start, pos)
                elif self.spans is not None and key in KEYED:
                    self.spans[key] = (start, pos)
                pos = yield from self.whitespace(pos)
                separator = self.char(pos)
                pos = yield from self.whitespace(pos + 1)
                if separator == b"}":
                    break
                if separator != b",":
                    raise self.invalid()
        if (yield from self.whitespace(pos)) != self.end:
            raise self.invalid()
        if model is None:
            raise ModelError("The request body has no 'model' field.")
        return model

    def decode(self, start: int, end: int) -> Any:
        try:
            return json.loads(self.body[start:end])
        except ValueError:
            raise self.invalid() from None

    def value_end(self, pos: int) -> Generator[None, None, int]:
        first = self.char(pos)
        if first == b'"':
            return (yield from self.string_end(pos))
        if first in _OPENERS:
            return (yield from self.container_end(pos))
        while True:
            limit = pos + _SLICE
            match = _SCALAR_END.search(self.body, pos, limit)
            if match is not None:
                return match.start()
            if limit >= self.end:
                return self.end
            pos = limit
            yield

    def string_end(self, pos: int) -> Generator[None, None, int]:
        """The index after the string starting with the quote at C{pos}."""
        body, start, i = self.body, pos + 1, pos + 1
        while True:
            quote = body.find(b'"', i, i + _SLICE)
            if quote < 0:
                if i + _SLICE >= self.end:
                    raise self.invalid()
                i += _SLICE
                yield
                continue
            if _backslashes_before(body, quote, start) % 2 == 0:
                return quote + 1
            i = quote + 1
            if self.step():
                yield

    def container_end(self, pos: int) -> Generator[None, None, int]:
        """The index after the array or object opening at C{pos}.

        Between two strings, brackets are counted with bytes.count.  In a
        valid document nothing opens after the container closes until the
        next key's quote, so where the count drops to zero the container's
        end is the last closer that belongs to it.
        """
        body, depth, i = self.body, 0, pos
        while True:
            quote = body.find(b'"', i, i + _SLICE)
            stop = quote if quote >= 0 else min(self.end, i + _SLICE)
            opened = body.count(b"[", i, stop) + body.count(b"{", i, stop)
            closed = body.count(b"]", i, stop) + body.count(b"}", i, stop)
            if depth + opened + 1 > MAX_DEPTH:
                yield from self.check_depth(i, stop, depth)
            if depth + opened - closed <= 0:
                return _closer_end(body, i, stop, closed - (depth + opened) + 1)
            depth += opened - closed
            if quote >= 0:
                i = yield from self.string_end(quote)
                if self.step():
                    yield
            elif stop >= self.end:
                raise self.invalid()
            else:
                i = stop
                yield

    def check_depth(self, lo: int, hi: int, depth: int) -> Generator[None, None, None]:
        """Refuse if the brackets in body[lo:hi] nest deeper than MAX_DEPTH.

        Top-level nesting counts one level (the object being scanned).
        """
        for match in _BRACKETS.finditer(self.body, lo, hi):
            depth += 1 if self.body[match.start()] in b"[{" else -1
            if depth + 1 > MAX_DEPTH:
                raise InvalidJSON("The request body is nested more than %d levels deep." % (MAX_DEPTH,))
            if self.step():
                yield


def _closer_end(body: Body, lo: int, hi: int, nth_from_last: int) -> int:
    """The index after the C{nth_from_last} closing bracket in body[lo:hi]."""
    for _ in range(nth_from_last):
        hi = max(body.rfind(b"]", lo, hi), body.rfind(b"}", lo, hi))
        if hi < 0:
            raise InvalidJSON("The request body is not valid JSON.")
    return hi + 1


def _backslashes_before(body: Body, quote: int, start: int) -> int:
    """How many backslashes immediately precede C{body[quote]} (not before C{start})."""
    width = 64
    while True:
        lo = max(start, quote - width)
        window = body[lo:quote]
        run = len(window) - len(window.rstrip(b"\\"))
        if run < len(window) or lo == start:
            return run
        width *= 4


def _boundary(content_type: bytes) -> bytes:
    message = Message()
    message["content-type"] = content_type.decode("latin-1")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
        raise ModelError("The multipart/form-data body has no valid boundary.")
    return boundary.encode("latin-1")


def _from_multipart(body: Body, content_type: bytes) -> str:
    start, end = _multipart_span(body, content_type)
    try:
        return body[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError("The 'model' field is not UTF-8.") from None


def _multipart_span(body: Body, content_type: bytes) -> tuple[int, int]:
    delimiter = b"--" + _boundary(content_type)
    found = None
    # The body is "--B\r\n<part>\r\n--B\r\n<part>\r\n--B--"; skipping from one
    # delimiter to the next with bytes.find keeps a 100 MiB upload cheap.
    pos = body.find(delimiter)
    while pos >= 0:
        start = pos + len(delimiter)
        if body.startswith(b"--", start):
            break
        head_start = body.find(b"\r\n", start)
        head_end = body.find(b"\r\n\r\n", start)
        end = body.find(b"\r\n" + delimiter, head_end)
        if head_start < 0 or head_end < 0 or end < 0:
            raise ModelError("The multipart/form-data body is malformed.")
        head = body[head_start + 2 : head_end]
        if b"model" in head.lower() and _field_name(head) == "model":
            found = (head_end + 4, end)
        pos = end + 2
    if found is None:
        raise ModelError("The multipart/form-data body has no 'model' field.")
    return found


def _field_name(head: Body) -> Optional[str]:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            message = Message()
            message["content-disposition"] = value.decode("latin-1").strip()
            if message.get_param("filename", header="content-disposition") is not None:
                return None
            field = message.get_param("name", header="content-disposition")
            return field if isinstance(field, str) else None
    return None


def model_of(body: Body, content_type: Optional[bytes], spans: Optional[Spans] = None) -> Union[str, defer.Deferred]:
    """The model C{body} names: at once for a small body, else a Deferred of the scan in slices.

    L{ModelError} when there is none (raised, or the Deferred's failure).
    A big body's scan fills C{spans} (see L{model_steps}).
    """
    if len(body) <= SMALL_BODY:
        return extract_model(body, content_type)
    return scan_in_slices(model_steps(body, content_type, spans))


def renamed(body: Body, content_type: Optional[bytes], name: str) -> Union[bytes, defer.Deferred]:
    """C{body} naming model C{name}: at once for a small body, else a Deferred of the rewrite in slices."""
    if len(body) <= SMALL_BODY:
        return rename(body, content_type, name)
    return scan_in_slices(rename_steps(body, content_type, name))


def scan_in_slices(steps: Generator[None, None, T]) -> defer.Deferred:
    """Run a scanning generator with task.cooperate, so other connections are served meanwhile; fire with its result.

    Cancelling the Deferred stops the scan.
    """
    found: list[T] = []

    def drive() -> Generator[None, None, None]:
        found.append((yield from steps))

    task = cooperate(drive())
    result: defer.Deferred[T] = defer.Deferred(lambda _: task.stop())

    def failed(failure: Failure) -> None:
        if not result.called and not failure.check(TaskStopped):
            result.errback(failure)

    def done(_: object) -> None:
        if not result.called:
            result.callback(found[0])

    task.whenDone().addCallbacks(done, failed)
    return result
