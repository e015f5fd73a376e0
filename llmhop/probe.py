"""``llmhop --healthcheck``: ask the router running on this config for its ``/healthz``.

A container's HEALTHCHECK runs inside the container, with the config the
router reads: deriving the address from that config keeps the check right
when the operator moves the port, or listens on a unix socket or with TLS.
Plain blocking stdlib, as a one-shot command should be: no reactor.
"""

import http.client
import socket
import ssl
from typing import Optional

from llmhop.config import Config
from llmhop.listening import Endpoint

TIMEOUT = 3.0
# Where to connect for a wildcard interface.
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def connection(listen: str, timeout: float = TIMEOUT) -> Optional[http.client.HTTPConnection]:
    """A connection to what listens at endpoint string C{listen}; None for a form with no address to dial."""
    endpoint = Endpoint.parse(listen)
    if endpoint.kind == "unix":
        return _UnixConnection(endpoint.unix_path, timeout)
    if endpoint.kind not in ("tcp", "tcp6", "ssl") or not endpoint.port:
        return None
    interface = endpoint.kwargs.get("interface", "::" if endpoint.kind == "tcp6" else "")
    host = _LOOPBACK.get(interface, interface)
    if endpoint.kind != "ssl":
        return http.client.HTTPConnection(host, endpoint.port, timeout=timeout)
    # Its own certificate, on this host: the check is that it answers, not who it is.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection(host, endpoint.port, timeout=timeout, context=context)


def healthcheck(config: Config) -> Optional[str]:
    """None when the router answers C{GET /healthz} with 200, else the one line saying why not.

    The first listen entry with an address to dial is asked.
    """
    for listen in config.listen:
        conn = connection(listen)
        if conn is not None:
            return _ask(conn, listen)
    return "healthcheck: listen %s has no address to connect to (systemd sockets: check the unit)" % (
        ", ".join(config.listen),
    )


def _ask(conn: http.client.HTTPConnection, listen: str) -> Optional[str]:
    try:
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        return "healthcheck: listen %s: %s" % (listen, e)
    finally:
        conn.close()
    return None if status == 200 else "healthcheck: listen %s: /healthz answered %d" % (listen, status)
