"""Backend connection endpoints, built once per backend rather than per request.

Agent's standard endpoint factory builds a new HostnameEndpoint for every
request, even when a pooled connection is then reused; that IDNA-encodes the
host each time (a quarter of the proxy's CPU in a profile) and, for https,
builds new TLS options that reload the system CA store.  Here each (scheme,
host, port) gets its endpoint once.  IP literals get a plain TCP endpoint: no
resolver thread, and no happy-eyeballs delay before a refused connection is
reported.  A unix-socket backend gets a UNIX endpoint.
"""

import ipaddress
from collections.abc import Mapping
from typing import Optional

from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer


@implementer(IAgentEndpointFactory)
class CachedEndpointFactory:
    def __init__(
        self,
        reactor: IReactorTime,
        tls_policy: IPolicyForHTTPS,
        connect_timeout: float,
        sockets: Optional[Mapping[bytes, str]] = None,
    ) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy
        self._timeout = connect_timeout
        # The made-up hosts of unix-socket backends (llmhop.routing) → paths.
        self._sockets = sockets or {}
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = self._build(uri)
        return endpoint

    def _build(self, uri: URI) -> IStreamClientEndpoint:
        socket = self._sockets.get(uri.host)
        if socket is not None:
            return UNIXClientEndpoint(self._reactor, socket, timeout=self._timeout)
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        else:
            tcp = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
            endpoint = tcp(self._reactor, str(address), uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint
