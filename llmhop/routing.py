"""The routing table: model name → backend, built once from the config.

Everything a forwarded request needs from the config is computed here at load
time (the URL prefix as bytes, the header names to replace), so the request
path does a dict lookup and nothing else.
"""

from typing import FrozenSet, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import attrs

from llmhop.config import Config, ModelConfig


@attrs.frozen
class Backend:
    model: str
    # scheme://host[:port][/prefix], without a trailing slash: the request's
    # path and query are appended as they are.
    base_url: bytes
    # Values may hold API keys: keep them out of reprs, which land in logs.
    headers: Tuple[Tuple[bytes, bytes], ...] = attrs.field(repr=False)
    # Lower-cased names of C{headers}: the client's values for them are dropped.
    replaced: FrozenSet[bytes]
    # The Host header for this backend, as Agent would compute it.  Passing it
    # spares Agent a copy of the headers on every request.
    host: bytes

    @classmethod
    def from_config(cls, model: ModelConfig) -> "Backend":
        headers = tuple((n.encode("ascii"), v.encode("utf-8")) for n, v in model.headers)
        return cls(
            model=model.name,
            base_url=model.url.encode("ascii"),
            headers=headers,
            replaced=frozenset(name.lower() for name, _ in headers),
            host=_host_header(model.url),
        )

    def url_for(self, uri: bytes) -> bytes:
        return self.base_url + uri


def _host_header(url: str) -> bytes:
    parts = urlsplit(url)
    host = parts.hostname
    if ":" in host:
        host = "[%s]" % (host,)
    default = {"http": 80, "https": 443}[parts.scheme]
    if parts.port is None or parts.port == default:
        return host.encode("ascii")
    return ("%s:%d" % (host, parts.port)).encode("ascii")


@attrs.frozen
class RoutingTable:
    backends: Mapping[str, Backend]

    @classmethod
    def from_config(cls, config: Config) -> "RoutingTable":
        return cls({name: Backend.from_config(m) for name, m in config.models.items()})

    def lookup(self, model: str) -> Optional[Backend]:
        return self.backends.get(model)

    def names(self) -> List[str]:
        return sorted(self.backends)
