"""Request framing (RFC 9112 §2, §5, §6, §7.1): where a request head ends and its body ends.

This is the part of a front door that request smuggling attacks: when two
HTTP parsers on one path disagree about where a message ends, bytes that one of
them takes for body, the other takes for a second request, which never passed
the first one's controls.  So llmhop frames requests itself, strictly, and
refuses anything a careful parser could read two ways:

- A head line holding a bare CR, a bare LF or a NUL, an obsolete line folding
  (a line starting with SP or HTAB), a request line that is not exactly
  C{method SP target SP HTTP/1.x}, or a field name that is not a token: 400.
- The only transfer coding accepted is one C{chunked} (in any case), whether
  it came on one field line or several: C{identity}, C{gzip},
  C{chunked, chunked}, C{chunked, identity}: 501.  Twisted's own parser
  silently drops a C{Transfer-Encoding: identity} line, which makes
  C{chunked} + C{identity} (RFC: not chunked, so no valid framing) look like
  plain chunked; llmhop never lets Twisted see either framing field.
- C{Transfer-Encoding} with C{Content-Length}, a C{Transfer-Encoding} in an
  HTTP/1.0 request, a C{Content-Length} that is not one run of digits, or more
  than one of them: 400.
- A chunked body is read by L{ChunkedBody}, which fails at the first byte
  that does not fit (a bad size, a bare LF, a missing CRLF after the data),
  not after the body timeout.

The channel (L{llmhop.site}) answers every refusal and closes the
connection: after a framing error nothing later on it can be trusted.
"""

import re
from typing import Callable, NamedTuple, Optional, Union

import attrs

from llmhop import errors

# RFC 9110 §5.6.2: token = 1*tchar.
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, with
# the target of visible ASCII only (RFC 3986 has no place for anything else).
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/1\.[01]")
_FORBIDDEN_IN_HEAD = re.compile(rb"[\r\n\x00]")
_DIGITS = re.compile(rb"[0-9]+")
_HEXDIGITS = re.compile(rb"[0-9A-Fa-f]+")
# A chunk extension (ignored) may hold visible ASCII, SP and HTAB.  White
# space before its ";" (RFC 9112's BWS) is refused: h11 refuses it too.
_CHUNK_EXTENSION = re.compile(rb";[\t\x20-\x7e]*")

# A Content-Length with more digits than this is above any maxBodyBytes.
MAX_LENGTH_DIGITS = 18
# One chunk-size line (size and extensions) and all trailer lines at most.
MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 16 * 1024

VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")

CHUNKED = "chunked"
"""The body length of a chunked request: known only at its end."""

BodyLength = Union[int, str]


class FramingError(Exception):
    """The request cannot be framed safely; C{error} is the answer."""

    def __init__(self, error: errors.ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def malformed(message: str) -> FramingError:
    return FramingError(errors.bad_request(message))


class RequestLine(NamedTuple):
    """A request line's three parts, as the channel records them for itself (a tuple: one per request)."""

    method: bytes
    target: bytes
    version: bytes

    @property
    def path(self) -> bytes:
        return self.target.partition(b"?")[0]

    @property
    def answer_version(self) -> bytes:
        """The version to answer in: the request's, unless that is not one llmhop speaks."""
        return self.version if self.version in VERSIONS else b"HTTP/1.1"


UNREADABLE = RequestLine(b"-", b"-", b"HTTP/1.1")
"""What is logged of a request line that does not split into three words."""


def split_request_line(line: bytes) -> RequestLine:
    """C{line}'s parts split as Twisted splits them (on any white space), to log and answer with.

    Whether the line is acceptable is L{check_request_line}'s to say.
    """
    parts = line.split()
    if len(parts) != 3:
        return UNREADABLE
    return RequestLine(*parts)


def check_request_line(line: bytes) -> None:
    """Refuse a request line that is not exactly C{method SP target SP HTTP/1.x}."""
    if _REQUEST_LINE.fullmatch(line) is None:
        raise malformed("Malformed request line.")


def check_field_line(line: bytes) -> None:
    """Refuse a header field line that strict and lax parsers could read differently."""
    if _FORBIDDEN_IN_HEAD.search(line) is not None:
        raise malformed("Header lines must end with CRLF and hold no bare CR, bare LF or NUL.")
    if line[:1] in (b" ", b"\t"):
        raise malformed("Obsolete line folding is not accepted (RFC 9112 §5.2).")


def split_field(line: bytes) -> tuple[bytes, bytes]:
    """The lower-cased name and the value of a field line, refused unless the name is a token
    directly before the colon."""
    name, colon, value = line.partition(b":")
    if not colon or TOKEN.fullmatch(name) is None:
        raise malformed("Malformed header field name.")
    return name.lower(), value.strip(b" \t")


@attrs.define
class FramingFields:
    """The framing fields of one request head, collected as they arrive."""

    content_length: list[bytes] = attrs.Factory(list)
    transfer_encoding: list[bytes] = attrs.Factory(list)
    hosts: int = 0

    def body_length(self, version: bytes) -> BodyLength:
        """The body's length in bytes, or L{CHUNKED}; L{FramingError} if it cannot be framed."""
        if self.transfer_encoding:
            if self.content_length:
                raise malformed("Transfer-Encoding and Content-Length must not be sent together.")
            if version == b"HTTP/1.0":
                raise malformed("Transfer-Encoding is not defined for HTTP/1.0.")
            codings = [c.strip(b" \t").lower() for v in self.transfer_encoding for c in v.split(b",")]
            if codings != [b"chunked"]:
                raise FramingError(errors.unsupported_transfer_coding())
            return CHUNKED
        if not self.content_length:
            return 0
        if len(self.content_length) > 1:
            raise malformed("More than one Content-Length.")
        value = self.content_length[0]
        if _DIGITS.fullmatch(value) is None:
            raise malformed("Content-Length must be a non-negative decimal number.")
        if len(value) > MAX_LENGTH_DIGITS:
            return 10**MAX_LENGTH_DIGITS  # above every cap: the size check answers 413
        return int(value)

    def check_host(self, version: bytes) -> None:
        """RFC 9112 §3.2: HTTP/1.1 needs exactly one Host; no request may have two."""
        if self.hosts > 1 or (self.hosts == 0 and version == b"HTTP/1.1"):
            raise malformed("An HTTP/1.1 request needs exactly one Host header.")


class ContentLengthBody:
    """A body of a known length: the next C{length} bytes."""

    def __init__(
        self,
        length: int,
        deliver: Callable[[bytes], None],
        done: Callable[[bytes], None],
    ) -> None:
        self._remaining = length
        self._deliver = deliver
        self._done = done

    def feed(self, data: bytes) -> None:
        if len(data) < self._remaining:
            self._remaining -= len(data)
            self._deliver(data)
            return
        body, rest = data[: self._remaining], data[self._remaining :]
        self._remaining = 0
        if body:
            self._deliver(body)
        self._done(rest)


class ChunkedBody:
    """A chunked body (RFC 9112 §7.1), read strictly; trailer fields are checked and dropped.

    A chunk that would take the body past C{limit} bytes fails it as soon as
    its size line arrives (413), before any of its data.

    @ivar _state: where in the body the next byte belongs:
        - C{SIZE}: a chunk-size line (hex size, optional extensions, CRLF);
        - C{DATA}: C{_remaining} more bytes of chunk data;
        - C{DATA_END}: the CRLF that must follow chunk data;
        - C{TRAILER}: trailer field lines, until an empty line;
        - C{DONE}: the body is complete; C{done} was called with what followed it;
        - C{FAILED}: malformed; C{failed} was called, and nothing more is read.
    """

    def __init__(
        self,
        limit: int,
        deliver: Callable[[bytes], None],
        done: Callable[[bytes], None],
        failed: Callable[[FramingError], None],
    ) -> None:
        self._limit = limit
        self._size = 0
        self._deliver = deliver
        self._done = done
        self._failed = failed
        self._state = "SIZE"
        self._buffer = b""
        self._remaining = 0
        self._trailer_bytes = 0

    def feed(self, data: bytes) -> None:
        data = self._buffer + data if self._buffer else data
        self._buffer = b""
        try:
            while data and self._state not in ("DONE", "FAILED"):
                data = getattr(self, "_feed_" + self._state)(data)
        except FramingError as e:
            self._state = "FAILED"
            self._failed(e)

    def _line(self, data: bytes, limit: int) -> Optional[bytes]:
        """The next CRLF-terminated line of C{data}, or None (the partial line is kept)."""
        end = data.find(b"\n")
        if end == -1:
            if b"\r" in data[:-1] or len(data) > limit:
                raise malformed("Malformed chunked body: a line is malformed or too long.")
            self._buffer = data
            return None
        if end == 0 or data[end - 1] != 0x0D or end > limit:
            raise malformed("Malformed chunked body: lines must end with CRLF.")
        line = data[: end - 1]
        if b"\r" in line or b"\x00" in line:
            raise malformed("Malformed chunked body: bare CR or NUL.")
        return line

    def _feed_SIZE(self, data: bytes) -> bytes:
        line = self._line(data, MAX_CHUNK_LINE)
        if line is None:
            return b""
        match = _HEXDIGITS.match(line)
        if match is None or len(match.group()) > 16:
            raise malformed("Malformed chunked body: bad chunk size.")
        if match.end() != len(line) and _CHUNK_EXTENSION.fullmatch(line, match.end()) is None:
            raise malformed("Malformed chunked body: bad chunk extension.")
        self._remaining = int(match.group(), 16)
        self._size += self._remaining
        if self._size > self._limit:
            raise FramingError(errors.body_too_large(self._limit))
        self._state = "DATA" if self._remaining else "TRAILER"
        return data[len(line) + 2 :]

    def _feed_DATA(self, data: bytes) -> bytes:
        if len(data) <= self._remaining:
            self._remaining -= len(data)
            self._deliver(data)
            if not self._remaining:
                self._state = "DATA_END"
            return b""
        piece, rest = data[: self._remaining], data[self._remaining :]
        self._remaining = 0
        self._state = "DATA_END"
        self._deliver(piece)
        return rest

    def _feed_DATA_END(self, data: bytes) -> bytes:
        if data[:2] != b"\r\n"[: len(data)]:
            raise malformed("Malformed chunked body: chunk data must end with CRLF.")
        if len(data) < 2:
            self._buffer = data
            return b""
        self._state = "SIZE"
        return data[2:]

    def _feed_TRAILER(self, data: bytes) -> bytes:
        line = self._line(data, MAX_TRAILERS - self._trailer_bytes)
        if line is None:
            return b""
        rest = data[len(line) + 2 :]
        if not line:
            self._state = "DONE"
            self._done(rest)
            return b""
        self._trailer_bytes += len(line) + 2
        check_field_line(line)
        split_field(line)
        return rest
