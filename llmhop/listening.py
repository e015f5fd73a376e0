"""The listen addresses: checked before binding, bound with a backlog, and a failure told in one line.

C{listen} and C{metrics.listen} are Twisted server endpoint strings by the
time they get here (L{llmhop.config.listen_endpoint} translates the Go
forms).  What can be seen without binding (a TLS key file that is missing, a
unix socket's directory that does not exist) is checked by L{preflight}, which
both C{--check} and a start run; what only binding shows (a port in use, a
privileged port, an address this host does not have) is explained by
L{bind_failure}.  Either way the operator reads one line naming the address
and the likely fix, never Twisted's internals (its unix lock file, its
tracebacks).
"""

import contextlib
import errno
import itertools
import os
import re
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Optional

import attrs
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError

from llmhop.config import listen_places
from llmhop.errors import StartupError

if TYPE_CHECKING:
    from llmhop.config import Config

# The first fd systemd passes (sd_listen_fds(3)).
_SD_LISTEN_FDS_START = 3
# Twisted's systemd endpoint names the address family by its AF_ suffix.
_DOMAINS = {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}

# SPEC §5: a burst of thousands of connections is accepted.  Twisted listens
# with a backlog of 50, which loses handshakes in such a burst.
DEFAULT_BACKLOG = 1024
_SOMAXCONN = "/proc/sys/net/core/somaxconn"
_BACKLOG_FORMS = ("tcp", "tcp6", "unix", "ssl")

# Ports below this need privileges (CAP_NET_BIND_SERVICE) to bind.
_PRIVILEGED_BELOW = 1024

# twisted.internet.endpoints reads these arguments of an ssl: endpoint as files.
_SSL_FILES = ("privateKey", "certKey", "extraCertChain", "dhParameters")


@attrs.frozen
class Endpoint:
    """An endpoint string taken apart as Twisted's parser does: C{kind:arg:name=value…}."""

    kind: str
    args: tuple[str, ...]
    kwargs: dict[str, str]

    @classmethod
    def parse(cls, description: str) -> "Endpoint":
        args, kwargs = [], {}
        for name, value in _split(description):
            if name is None:
                args.append(value)
            else:
                kwargs[name] = value
        # The kind is the first positional field, wherever it stands.
        return cls(args[0] if args else "", tuple(args[1:]), kwargs)

    @property
    def port(self) -> int:
        """The port of a tcp, tcp6 or ssl endpoint (0 when it names none)."""
        text = self.kwargs.get("port", self.args[0] if self.args else "")
        return int(text) if text.isdigit() else 0

    @property
    def unix_path(self) -> str:
        return self.kwargs.get("address", self.args[0] if self.args else "")

    def ssl_files(self) -> list[tuple[str, str]]:
        """(argument, path) of every file an ssl endpoint will read, each path once."""
        files = {name: self.kwargs[name] for name in _SSL_FILES if self.kwargs.get(name)}
        files.setdefault("privateKey", "server.pem")  # Twisted's defaults
        files.setdefault("certKey", files["privateKey"])
        once: dict[str, str] = {}
        for name in _SSL_FILES:
            if name in files:
                once.setdefault(files[name], name)
        return [(name, path) for path, name in once.items()]


def _split(description: str) -> list[tuple[Optional[str], str]]:
    """The fields between colons, each with the name before its first C{=} (if any).

    A backslash escapes the character after it, as in Twisted's parser.
    """
    fields: list[tuple[Optional[str], str]] = []
    name: Optional[str] = None
    value = ""
    chars = iter(description)
    for char in chars:
        if char == ":":
            fields.append((name, value))
            name, value = None, ""
        elif char == "=" and name is None:
            name, value = value, ""
        else:
            value += next(chars, "\\") if char == "\\" else char
    fields.append((name, value))
    return fields


def listen_problems(config: "Config") -> list[str]:
    """What this host lacks to bind C{listen} and C{metrics.listen} (files, directories)."""
    problems = [p for place, entry in listen_places(config.listen) for p in preflight(entry, place)]
    if config.metrics.listen is not None:
        problems += preflight(config.metrics.listen, "metrics.listen")
    return problems


def preflight(description: str, place: str = "listen") -> list[str]:
    """What is wrong with listen address C{description} that can be seen without binding."""
    endpoint = Endpoint.parse(description)
    problems = []
    if endpoint.kind == "unix":
        problems.extend(_socket_directory(endpoint.unix_path, place, description))
    if endpoint.kind == "ssl":
        for argument, path in endpoint.ssl_files():
            if not os.path.isfile(path):
                relative = "" if os.path.isabs(path) else " (relative to %s)" % (os.getcwd(),)
                problems.append("%s %s: %s file %s does not exist%s" % (place, description, argument, path, relative))
            elif not os.access(path, os.R_OK):
                problems.append("%s %s: %s file %s is not readable by this user" % (place, description, argument, path))
    return problems


def _socket_directory(path: str, place: str, description: str) -> list[str]:
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        return [
            "%s %s: directory %s does not exist: create it (under systemd, RuntimeDirectory=) or choose another path"
            % (place, description, directory)
        ]
    return []


def systemd_sockets(reactor: object, place: str = "listen") -> list[str]:
    """An endpoint description for every socket systemd passed this process, in its order (C{listen: "systemd"}).

    Twisted's systemd endpoint parser reads (and, since Twisted 23, removes)
    C{LISTEN_FDS} once, when L{twisted.internet.endpoints} is imported; so
    the sockets are counted by asking that parser for index 0, 1, … until it
    has none.  Each one's address family is read from its fd, which systemd
    numbers from 3 (C{SD_LISTEN_FDS_START}).

    @raise StartupError: systemd passed none.
    """
    descriptions = []
    for index in itertools.count():
        try:
            serverFromString(reactor, "systemd:domain=INET:index=%d" % (index,))
        except (IndexError, KeyError):
            break
        family = socket_family(_SD_LISTEN_FDS_START + index)
        descriptions.append("systemd:domain=%s:index=%d" % (_DOMAINS.get(family, "INET"), index))
    if not descriptions:
        raise StartupError(
            "%s systemd: systemd passed no socket (LISTEN_FDS is unset or not for this process): "
            "start llmhop through its socket unit, or listen on an address" % (place,)
        )
    return descriptions


@contextlib.contextmanager
def sockets_stay_nonblocking() -> Iterator[None]:
    """Within: sockets made from an inherited fd leave it non-blocking.

    PyPy's socket constructor makes the socket blocking unless the default
    timeout is 0, and the file status flags belong to every process sharing
    the socket: one blocking would leave the others stuck in accept().
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.0)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def socket_family(fd: int) -> socket.AddressFamily:
    """The address family of the listening socket on C{fd}, which stays open and as it was."""
    with sockets_stay_nonblocking():
        probe = socket.socket(fileno=fd)
        family = probe.family
        probe.detach()
    return family


def bind_failure(description: str, error: BaseException, place: str = "listen") -> str:
    """The one line for an C{error} binding C{description}: what happened and the likely fix."""
    endpoint = Endpoint.parse(description)
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        error = error.socketError
    code = getattr(error, "errno", None)
    what = os.strerror(code).lower() if isinstance(code, int) else str(error)
    fix = _fix(endpoint, code)
    return "%s %s: cannot listen: %s%s" % (place, description, what, "; " + fix if fix else "")


def _fix(endpoint: Endpoint, code: object) -> str:
    unix = endpoint.kind == "unix"
    if code == errno.EADDRINUSE:
        if unix:
            return "another process (or a stale llmhop.sock.lock) holds %s" % (endpoint.unix_path,)
        return "another process listens there (ss -ltnp shows which): stop it or choose another port"
    if code == errno.EACCES and not unix and 0 < endpoint.port < _PRIVILEGED_BELOW:
        return (
            "ports below %d need privileges: use socket activation (llmhop.socket), grant "
            "CAP_NET_BIND_SERVICE, or listen on a port from %d" % (_PRIVILEGED_BELOW, _PRIVILEGED_BELOW)
        )
    if code == errno.EACCES and unix:
        return "this user may not create %s: choose a directory it can write to" % (endpoint.unix_path,)
    if code == errno.EADDRNOTAVAIL:
        return "no interface of this host has that address: use one of its own, 127.0.0.1, or :PORT for all"
    if code == errno.ENOENT and unix:
        return "directory %s does not exist" % (os.path.dirname(endpoint.unix_path),)
    return ""


def with_backlog(listen: str, somaxconn: str = _SOMAXCONN) -> str:
    """C{listen} with a backlog of L{DEFAULT_BACKLOG} (at most the kernel's somaxconn), unless it sets one."""
    if listen.partition(":")[0] not in _BACKLOG_FORMS or re.search(r"(^|:)backlog=", listen):
        return listen
    try:
        with open(somaxconn) as f:
            limit = int(f.read())
    except (OSError, ValueError):
        limit = DEFAULT_BACKLOG
    return "%s:backlog=%d" % (listen, max(1, min(DEFAULT_BACKLOG, limit)))
