"""What llmhop asks of the process and the system around it: systemd, the open-file limit, addresses.

Kept apart from L{llmhop.service}, which wires the router together: these
talk to the operating system, not to the request path.
"""

import os
import resource
import socket
from collections.abc import Mapping

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

_log = Logger()


def raise_open_file_limit() -> None:
    """Take the hard limit on open files, as Go programs do: every open stream costs two."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            _log.warn("cannot raise the open-file limit from {soft}: {error}", soft=soft, error=e)


def sd_notify(state: bytes, environ: Mapping[str, str] = os.environ) -> None:
    """Tell systemd (Type=notify) about C{state}, if it asked to be told."""
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state)
    except OSError as e:
        _log.warn("cannot notify systemd at NOTIFY_SOCKET: {error}", error=e)


def describe_address(address: IAddress) -> str:
    """An address as llmhop's log lines show it: [::1]:8080, 127.0.0.1:8080, unix:/run/llmhop.sock."""
    if isinstance(address, IPv6Address):
        return "[%s]:%d" % (address.host, address.port)
    if isinstance(address, IPv4Address):
        return "%s:%d" % (address.host, address.port)
    name = getattr(address, "name", "?")
    return "unix:%s" % (name.decode("utf-8", "replace") if isinstance(name, bytes) else name,)
