"""Where the access log's one line per request goes.

By default through twisted.logger, so that twistd's log file, syslog or any
observer gets it.  The ``llmhop`` command writes it straight to its stderr
instead, in the same format as its other lines: twisted.logger's formatting
and dispatch cost a small request about 15% of its CPU (bench/RESULTS.md).
"""

import re
import time
from typing import Optional, TextIO

import attrs
from twisted.logger import Logger

_access = Logger(namespace="llmhop.access")

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


@attrs.define
class AccessLog:
    """Call with the line and its fields; C{stream} None means twisted.logger.

    @ivar plain: write C{info LINE} for a supervisor to relay (see
        L{llmhop.workers}) rather than timestamped lines.
    """

    stream: Optional[TextIO] = None
    system: str = DEFAULT_SYSTEM
    plain: bool = False
    _second: int = -1
    _prefix: str = ""

    def request(
        self,
        method: Optional[bytes],
        path: Optional[bytes],
        model: Optional[str],
        status: Optional[int],
        sent: int,
        duration: float,
        outcome: str,
        fallback: Optional[str] = None,
        token: str = "",
    ) -> None:
        """The line for one request: what the client sent is escaped, so no client can forge a line.

        C{fallback}: the route that answered instead of the model's own (SPEC §6).
        C{token}: the name of the client's token (SPEC §7; config-checked, so never escaped).
        """
        fields = {
            "method": printable(method),
            "path": printable(path),
            "model": "-" if model is None else printable(model.encode("utf-8", "replace")),
            "status": "-" if status is None else status,
        }
        # Formatted here, in one step: twisted.logger's formatter is pure
        # Python per field.  The fields stay in the event for structured observers.
        line = "%s %s model=%s status=%s bytes=%d duration=%.3fs%s" % (
            fields["method"],
            fields["path"],
            fields["model"],
            fields["status"],
            sent,
            duration,
            " aborted=" + outcome if outcome else "",
        )
        if fallback is not None:
            line += " fallback=" + printable(fallback.encode("utf-8", "replace"))
        if token:
            line += " token=" + token
        self(line, bytes=sent, duration=duration, outcome=outcome, token=token, **fields)

    def __call__(self, line: str, **fields: object) -> None:
        if self.stream is None:
            _access.info("{line}", line=line, **fields)
            return
        self.stream.write(self._line_prefix() + line + "\n")

    def _line_prefix(self) -> str:
        if self.plain:
            return "info "
        second = int(time.time())
        if second != self._second:
            # textFileLogObserver's format, computed once a second.
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
            self._second, self._prefix = second, "%s [%s] " % (stamp, self.system)
        return self._prefix


_UNPRINTABLE = re.compile(rb"[^\x21-\x7e]|\\")


def printable(value: Optional[bytes]) -> str:
    """Log-safe text (at most 512 bytes of C{value}, escaped); "-" for None."""
    if value is None:
        return "-"
    return _UNPRINTABLE.sub(_escaped, value[:512]).decode("ascii")


def _escaped(match: "re.Match[bytes]") -> bytes:
    return b"\\x%02x" % (match.group()[0],)
