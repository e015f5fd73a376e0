"""Where the access log's one line per request goes.

By default through twisted.logger, so that twistd's log file, syslog or any
observer gets it.  The ``llmhop`` command writes it straight to its stderr
instead, in the same format as its other lines: twisted.logger's formatting
and dispatch cost a small request about 15% of its CPU (bench/RESULTS.md).
"""

import functools
import json
import re
import time
from typing import Optional, TextIO

import attrs
from twisted.logger import Logger

_access = Logger(namespace="llmhop.access")

# How a worker marks a JSON access line for its supervisor (L{llmhop.workers}).
JSON_LINE = "access "
# What textFileLogObserver shows for an event without a log_system.
DEFAULT_SYSTEM = "llmhop.access#info"


class Outcome:
    """Why a request did not end normally: the access line's C{aborted=}, the event's C{outcome}.

    Set once, by whichever stage saw the end: the channel for the client's
    side, the proxy for the backend's.
    """

    NORMAL = ""
    CLIENT_GONE = "client-gone"
    CLIENT_TOO_SLOW = "client-too-slow"
    UPSTREAM_STALLED = "upstream-stalled"
    UPSTREAM_DIED = "upstream-died"
    # Every replica of the route (and of its fallbacks) was down.
    UNAVAILABLE = "unavailable"

    @staticmethod
    def upstream_failed(kind: str) -> str:
        """No answer from the backend: C{kind} as the failures metric counts it (refused, timeout, tls, …)."""
        return "upstream-" + kind


@attrs.frozen
class Entry:
    """One request, as its access line tells it (SPEC §8).

    @ivar status: None when no answer was started.
    @ivar first_byte: seconds from arrival to the answer's first byte, if any.
    @ivar client: the client's address (None: unknown, such as a unix socket peer).
    @ivar replica: the URL of the replica that answered, if one did.
    @ivar fallback: the route that answered instead of the model's own (SPEC §6).
    @ivar token: the name of the client's token (config-checked; "" without auth).
    """

    method: Optional[bytes]
    path: Optional[bytes]
    model: Optional[str]
    status: Optional[int]
    sent: int
    duration: float
    first_byte: Optional[float]
    outcome: str
    client: Optional[str]
    replica: Optional[str]
    request_id: bytes
    fallback: Optional[str] = None
    token: str = ""


@attrs.define
class AccessLog:
    """Writes one line per request; C{stream} None means twisted.logger.

    @ivar plain: write C{info LINE} for a supervisor to relay (see
        L{llmhop.workers}) rather than timestamped lines.
    @ivar json: write each line as one JSON object (C{accessLog.format}),
        nothing else on the line.
    """

    stream: Optional[TextIO] = None
    system: str = DEFAULT_SYSTEM
    plain: bool = False
    json: bool = False
    _second: int = -1
    _prefix: str = ""

    def request(self, entry: Entry) -> None:
        """The line for one request: what the client sent is escaped, so no client can forge a line."""
        if self.json:
            fields = _fields(entry)
            self(json.dumps(fields, separators=(",", ":")), **fields)
            return
        # Formatted in one step: twisted.logger's formatter is pure Python
        # per field.  The fields are made only for its observers.
        line = _text(entry)
        if self.stream is None:
            self(line, **_fields(entry))
        else:
            self.stream.write(self._line_prefix() + line + "\n")

    def __call__(self, line: str, **fields: object) -> None:
        if self.stream is None:
            _access.info("{line}", line=line, **fields)
        elif not self.json:
            self.stream.write(self._line_prefix() + line + "\n")
        elif self.plain:
            self.stream.write(JSON_LINE + line + "\n")  # the supervisor writes it as it is
        else:
            self.write_line(line)

    def write_line(self, line: str) -> None:
        """A JSON access line: the whole line, nothing before it (a worker's, too)."""
        if self.stream is None:
            _access.info("{line}", line=line)
        else:
            self.stream.write(line + "\n")

    def _line_prefix(self) -> str:
        if self.plain:
            return "info "
        second = int(time.time())
        if second != self._second:
            # textFileLogObserver's format, computed once a second.
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
            self._second, self._prefix = second, "%s [%s] " % (stamp, self.system)
        return self._prefix


def _text(entry: Entry) -> str:
    line = "%s %s model=%s status=%s bytes=%d duration=%.3fs ttfb=%s client=%s replica=%s id=%s" % (
        _recurring(entry.method),
        _recurring(entry.path),
        "-" if entry.model is None else _model_text(entry.model),
        "-" if entry.status is None else entry.status,
        entry.sent,
        entry.duration,
        "-" if entry.first_byte is None else "%.3fs" % (entry.first_byte,),
        entry.client or "-",
        entry.replica or "-",
        _request_id_text(entry.request_id),
    )
    if entry.outcome:
        line += " aborted=" + entry.outcome
    if entry.fallback is not None:
        line += " fallback=" + printable(entry.fallback.encode("utf-8", "replace"))
    if entry.token:
        line += " token=" + entry.token
    return line


def _fields(entry: Entry) -> dict[str, object]:
    """The entry as JSON-ready fields: the JSON line, and the event for twisted.logger's observers."""
    return {
        "method": printable(entry.method),
        "path": printable(entry.path),
        "model": entry.model,
        "status": entry.status,
        "bytes": entry.sent,
        "duration": round(entry.duration, 6),
        "ttfb": None if entry.first_byte is None else round(entry.first_byte, 6),
        "client": entry.client,
        "replica": entry.replica,
        "requestId": entry.request_id.decode("ascii", "replace"),
        "outcome": entry.outcome or None,
        "fallback": entry.fallback,
        "token": entry.token or None,
    }


_UNPRINTABLE = re.compile(rb"[^\x21-\x7e]|\\")
_SAFE = re.compile(rb"[\x21-\x5b\x5d-\x7e]{0,512}")


def printable(value: Optional[bytes]) -> str:
    """Log-safe text (at most 512 bytes of C{value}, escaped); "-" for None."""
    if value is None:
        return "-"
    return _UNPRINTABLE.sub(_escaped, value[:512]).decode("ascii")


# Methods, paths and models recur from request to request: escaped once.
# Bounded, so that clients sending new paths cannot grow it.
_recurring = functools.lru_cache(maxsize=1024)(printable)


@functools.lru_cache(maxsize=1024)
def _model_text(model: str) -> str:
    return printable(model.encode("utf-8", "replace"))


def _request_id_text(request_id: bytes) -> str:
    # New each time; llmhop's own, and most clients', need no escaping.
    return request_id.decode("ascii") if _SAFE.fullmatch(request_id) else printable(request_id)


def _escaped(match: "re.Match[bytes]") -> bytes:
    return b"\\x%02x" % (match.group()[0],)
