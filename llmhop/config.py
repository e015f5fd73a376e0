"""The JSON config file: read, validated and frozen once at startup (SPEC §1).

Everything an operator can get wrong is caught here, with a L{ConfigError}
naming the place (``models.gpt-4o.url``), so that a bad config stops startup
with one line instead of failing on the first request.  The result is a tree of
frozen attrs objects; nothing downstream re-validates or re-computes it.
"""

import json
import os
import pkgutil
import re
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

import attrs

from llmhop import secrets
from llmhop.auth import ClientToken
from llmhop.errors import ConfigError, tell
from llmhop.process import available_cpus

# Expands the secret references in a value found at a place of the file.
Secret = Callable[[str, str], str]

# The config's structure, written once: editors complete and validate with
# this file (llmhop --print-schema), and the keys accepted here are its keys.
SCHEMA_FILE = "config.schema.json"


def schema_text() -> bytes:
    data = pkgutil.get_data("llmhop", SCHEMA_FILE)
    assert data is not None, "the package ships " + SCHEMA_FILE
    return data


_SCHEMA = json.loads(schema_text())


def _keys(schema: Mapping[str, Any]) -> set:
    return set(schema["properties"])


_TOP_KEYS = _keys(_SCHEMA)
_TIMEOUT_KEYS = _keys(_SCHEMA["properties"]["timeouts"])
_METRICS_KEYS = _keys(_SCHEMA["properties"]["metrics"])
_MODEL_KEYS = _keys(_SCHEMA["$defs"]["model"])
_HEALTH_KEYS = _keys(_SCHEMA["$defs"]["healthCheck"])
_TOKEN_KEYS = _keys(_SCHEMA["$defs"]["clientToken"])
_CORS_KEYS = _keys(_SCHEMA["properties"]["cors"])
_ACCESS_LOG_KEYS = _keys(_SCHEMA["properties"]["accessLog"])

DEFAULT_LISTEN = ":8080"
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_QUEUED = 100
# sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 107

# Endpoint types whose strings would otherwise look like the Go "HOST:PORT" form.
_ENDPOINT_TYPES = {"tcp", "tcp6", "unix", "ssl", "tls", "systemd", "le", "lets", "onion"}
_GO_LISTEN = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]/]*):(?P<port>\d{1,5})")
# An origin as a browser serializes it (RFC 6454 §6.1): scheme, host, optional port.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?")
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Tokens that examples and manifests write for "put yours here": accepted,
# they would let in anyone who read the example.
_PLACEHOLDER = re.compile(
    r"<.*>|x+|\.\.\.|(replace|change|fill|set)[-_ ]?(me|this|it)|your[-_ ]?(client[-_ ]?)?(token|secret|key)"
    r"([-_ ]?here)?|placeholder|todo|tbd|example|secret|token",
    re.IGNORECASE,
)
# Headers whose value is framing or connection management, owned by the proxy.
_UNSETTABLE = {
    "connection",
    "content-length",
    "expect",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


@attrs.frozen
class Timeouts:
    """Seconds; see the README's config reference for what each bounds."""

    connect: float = 10.0
    # A non-streamed completion of a long answer sends no headers until it is done.
    response: float = 600.0
    idle: float = 60.0
    shutdown: float = 30.0
    # A client must send its request line and headers within requestHead, and
    # its body within requestBody plus a second for every 64 KiB: slow clients
    # (slowloris) cannot hold connections open by trickling bytes.
    requestHead: float = 10.0
    requestBody: float = 30.0
    # The longest silence from a backend in the middle of a response body
    # (not counting time the client's backpressure held it paused).
    read: float = 300.0
    # Idle backend connections are closed before the backend would: uvicorn
    # (vLLM, sglang) drops them after 5 s, and a POST sent on a connection the
    # backend is closing fails and cannot be retried safely.
    keepAlive: float = 4.0
    # A replica whose connection failed is skipped this long (passive health).
    replicaCooldown: float = 10.0
    # On SIGTERM: keep serving this long with /ready at 503, so that load
    # balancers stop sending, before the listening socket closes (SPEC §6).
    drainDelay: float = 0.0


# Timeouts that may be 0 (off).
_MAY_BE_ZERO = frozenset({"drainDelay"})

LEAST_IN_FLIGHT = "least-in-flight"
POLICIES = (LEAST_IN_FLIGHT, "prefix-affinity", "session-affinity")
DEFAULT_RETRY_ON = (429, 503)
DEFAULT_AFFINITY_BYTES = 2048
DEFAULT_AFFINITY_HEADER = "X-Session-Id"


@attrs.frozen
class HealthCheck:
    """Active health checks of a model's replicas (SPEC §6); the defaults are the spec's."""

    path: str = "/health"
    interval: float = 5.0
    timeout: float = 2.0
    # Consecutive failed probes that take a replica down; one success brings it up.
    failures: int = 2


@attrs.frozen
class ModelConfig:
    name: str
    # One URL, or the replicas of one model: http(s)://… or unix:/path[:/prefix].
    urls: tuple[str, ...]
    # Values may hold API keys: keep them out of reprs, which land in logs.
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    # The model name the backend expects, spliced into the forwarded body.
    upstream_model: Optional[str] = None
    # For a prefix route ("openrouter/*"): forward the name without the prefix.
    strip_prefix: bool = False
    # Routable, but not in /v1/models.
    unlisted: bool = False
    max_concurrent: Optional[int] = None
    max_queued: int = DEFAULT_MAX_QUEUED
    health_check: Optional[HealthCheck] = None
    # A replica answering one of these is passed over for the next (SPEC §6).
    retry_on: frozenset[int] = frozenset(DEFAULT_RETRY_ON)
    # Other routes, tried in order when this one cannot take the request.
    fallbacks: tuple[str, ...] = ()
    policy: str = "least-in-flight"
    affinity_bytes: int = DEFAULT_AFFINITY_BYTES
    affinity_header: str = DEFAULT_AFFINITY_HEADER

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def prefix(self) -> Optional[str]:
        """For a key ending in C{*}, the names it matches start with this."""
        return self.name[:-1] if self.name.endswith("*") else None


@attrs.frozen
class MetricsConfig:
    # /metrics on the main port needs a client token unless this is set.
    public: bool = False
    # A separate listen address for /metrics (then not served on the main port).
    listen: Optional[str] = None


@attrs.frozen
class Config:
    # Twisted server endpoint descriptions, one per listener (SYSTEMD: every socket systemd passes).
    listen: tuple[str, ...]
    models: Mapping[str, ModelConfig]
    auth_tokens: tuple[ClientToken, ...] = attrs.field(default=(), repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeouts: Timeouts = Timeouts()
    workers: int = 1
    metrics: MetricsConfig = MetricsConfig()
    # cors.allowOrigins: origins whose browsers may read answers (["*"]: any); none by default.
    cors_origins: tuple[str, ...] = ()
    # accessLog.format: "text" lines, or "json" objects, one per line.
    access_log_format: str = "text"


def load(path: str, environ: Optional[Mapping[str, str]] = None, resolve: bool = True) -> Config:
    """Read and validate the config file at C{path}.

    @param resolve: expand secret references; C{False} checks only the
        structure (for build-time checks where secrets are not available).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError("", "cannot read config file %s: %s" % (path, e.strerror)) from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ConfigError("", "config file %s is not valid JSON: %s" % (path, e)) from None
    return parse(data, os.environ if environ is None else environ, resolve)


def load_or_exit(path: str, resolve: bool = True) -> Config:
    """Load the config, or print its one-line error and exit 1: no traceback."""
    try:
        return load(path, resolve=resolve)
    except ConfigError as e:
        raise SystemExit(tell("config error: %s" % (e,))) from None


def warnings(config: Config) -> list[str]:
    """What is valid but probably not meant, each as one C{place: message} line."""
    found = []
    for name, model in config.models.items():
        for place, url in _url_places(name, model):
            if url.endswith("/v1"):  # URLs are kept without a trailing slash
                found.append(
                    "%s: %s ends in /v1, and clients' paths start with /v1 too, so the backend gets "
                    "/v1/v1/...: drop the /v1 (a base URL as an SDK takes it) unless the API really lives "
                    "under that prefix" % (place, url)
                )
    return found


def count(n: int, noun: str) -> str:
    """C{1 model}, C{2 models}."""
    return "%d %s%s" % (n, noun, "" if n == 1 else "s")


def _url_places(name: str, model: ModelConfig) -> list[tuple[str, str]]:
    place = "models.%s.url" % (name,)
    if len(model.urls) == 1:
        return [(place, model.url)]
    return [("%s[%d]" % (place, index), url) for index, url in enumerate(model.urls)]


def with_workers(config: Config, workers: Union[int, str, None]) -> Config:
    """C{config} with the command line's C{--workers}, if given; exits on a listen form that can't share."""
    if workers is None:
        return config
    try:
        workers = _workers(workers, config.listen, "--workers")
    except ConfigError as e:
        raise SystemExit(tell(str(e))) from None
    return attrs.evolve(config, workers=workers)


def parse(
    data: Any,
    environ: Mapping[str, str],
    resolve: bool = True,
    cwd: Optional[str] = None,
) -> Config:
    """Validate the decoded JSON document C{data}."""
    top = _object(data, "")
    _known(top, "", _TOP_KEYS)

    def secret(value: str, place: str) -> str:
        return secrets.expand(value, place, environ, cwd) if resolve else value

    listen = _listens(top.get("listen", DEFAULT_LISTEN))
    return Config(
        listen=listen,
        models=_models(top.get("models"), secret),
        auth_tokens=_tokens(top.get("authTokens", []), secret),
        max_body_bytes=_positive_int(top.get("maxBodyBytes", DEFAULT_MAX_BODY_BYTES), "maxBodyBytes"),
        timeouts=_timeouts(top.get("timeouts", {})),
        workers=_workers(top.get("workers", 1), listen),
        metrics=_metrics(top.get("metrics", {})),
        cors_origins=_cors(top.get("cors", {})),
        access_log_format=_access_log(top.get("accessLog", {})),
    )


def _metrics(value: Any) -> MetricsConfig:
    spec = _object(value, "metrics")
    _known(spec, "metrics", _METRICS_KEYS)
    listen = spec.get("listen")
    return MetricsConfig(
        public=_bool(spec.get("public", False), "metrics.public"),
        listen=None if listen is None else listen_endpoint(_string(listen, "metrics.listen"), "metrics.listen"),
    )


ACCESS_LOG_FORMATS = ("text", "json")


def _access_log(value: Any) -> str:
    spec = _object(value, "accessLog")
    _known(spec, "accessLog", _ACCESS_LOG_KEYS)
    form = _string(spec.get("format", "text"), "accessLog.format")
    if form not in ACCESS_LOG_FORMATS:
        raise ConfigError("accessLog.format", "expected one of: %s" % (", ".join(ACCESS_LOG_FORMATS),))
    return form


def _cors(value: Any) -> tuple[str, ...]:
    spec = _object(value, "cors")
    _known(spec, "cors", _CORS_KEYS)
    origins = spec.get("allowOrigins", [])
    if not isinstance(origins, list):
        raise ConfigError("cors.allowOrigins", 'expected a list of origins such as "https://chat.example", or ["*"]')
    for index, origin in enumerate(origins):
        place = "cors.allowOrigins[%d]" % (index,)
        if _string(origin, place) == "*":
            if len(origins) > 1:
                raise ConfigError(place, '"*" allows every origin: it stands alone')
        elif not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                place,
                "expected an origin as browsers send it: scheme://host[:port] in lower case, "
                "no path or trailing slash (https://chat.example)",
            )
    return tuple(origins)


# Forms whose listening socket a worker can adopt from the first process.
SHAREABLE_LISTEN = ("tcp", "tcp6", "unix", "ssl", "systemd")
# listen: every socket systemd passes (socket activation), whatever their number and kind.
SYSTEMD = "systemd"
MAX_WORKERS = 256
# workers: one process per CPU this one may use (llmhop.process.available_cpus).
AUTO = "auto"


def workers_flag(text: str) -> Union[int, str]:
    """The command line's C{--workers}: N (at least 1) or C{auto}."""
    if text == AUTO:
        return AUTO
    if not text.isdigit() or int(text) < 1:
        raise ValueError('--workers takes a number, at least 1, or "auto"')
    return int(text)


def _workers(value: Any, listen: tuple[str, ...], place: str = "workers") -> int:
    """The config's C{workers}, or the command line's C{--workers} (C{place})."""
    if value == AUTO:
        workers = min(available_cpus(), MAX_WORKERS)
    elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(place, 'expected a positive integer or "auto"')
    else:
        workers = value
    if workers > MAX_WORKERS:
        raise ConfigError(place, "at most %d" % (MAX_WORKERS,))
    if workers > 1 and any(entry.partition(":")[0] not in SHAREABLE_LISTEN for entry in listen):
        raise ConfigError(
            place, "several workers need a listen form they can share: %s" % (", ".join(SHAREABLE_LISTEN),)
        )
    return workers


def _listens(value: Any) -> tuple[str, ...]:
    """C{listen}: one address, or a list of them (SPEC §7, several listeners)."""
    if not isinstance(value, list):
        return (listen_endpoint(_string(value, "listen")),)
    if not value:
        raise ConfigError("listen", "expected an address or a non-empty list of addresses")
    entries = tuple(listen_endpoint(_string(v, "listen[%d]" % (i,)), "listen[%d]" % (i,)) for i, v in enumerate(value))
    _distinct(list(entries), "listen", "the same address twice: it can be bound once")
    if SYSTEMD in entries and any(e.startswith(SYSTEMD + ":") for e in entries):
        raise ConfigError("listen", '"systemd" serves every socket systemd passes: leave out systemd:… entries')
    return entries


def listen_places(listen: tuple[str, ...]) -> list[tuple[str, str]]:
    """(place in the config, description) of every listen entry: C{listen}, or C{listen[i]} in a list."""
    if len(listen) == 1:
        return [("listen", listen[0])]
    return [("listen[%d]" % (index,), entry) for index, entry in enumerate(listen)]


def listen_endpoint(listen: str, place: str = "listen") -> str:
    """Turn C{listen} into a Twisted server endpoint description.

    The Go original's C{HOST:PORT}, C{:PORT} and C{[V6]:PORT} forms are
    translated; anything else must already be an endpoint string.
    """
    if listen == SYSTEMD:
        return listen
    match = _GO_LISTEN.fullmatch(listen)
    if match is not None and match.group("host") not in _ENDPOINT_TYPES:
        host, port = match.group("host"), int(match.group("port"))
        if port > 65535:
            raise ConfigError(place, "port %d is out of range" % (port,))
        if not host:
            return "tcp:%d" % (port,)
        if host.startswith("["):
            return "tcp6:%d:interface=%s" % (port, host[1:-1].replace(":", "\\:"))
        return "tcp:%d:interface=%s" % (port, host)
    kind, sep, _ = listen.partition(":")
    if not sep or not kind.isalnum():
        raise ConfigError(
            place,
            "expected HOST:PORT, :PORT, [V6]:PORT, systemd (socket activation) or a Twisted endpoint "
            "such as tcp:8080 or unix:/run/llmhop.sock",
        )
    return listen


def _models(value: Any, secret: Secret) -> dict[str, ModelConfig]:
    models = _object(value, "models", required=True)
    if not models:
        raise ConfigError("models", "at least one model is required")
    parsed = {name: _model(name, spec, secret) for name, spec in models.items()}
    for model in parsed.values():
        _check_fallbacks(model, parsed)
    return parsed


def _check_fallbacks(model: ModelConfig, models: Mapping[str, ModelConfig]) -> None:
    for index, name in enumerate(model.fallbacks):
        place = "models.%s.fallbacks[%d]" % (model.name, index)
        if name not in models:
            raise ConfigError(place, "no model %r is configured" % (name,))
        if name == model.name:
            raise ConfigError(place, "a model cannot fall back to itself")
        if models[name].prefix is not None and models[name].upstream_model is None:
            raise ConfigError(
                place, "a prefix route names no model to put in the body: give it a model setting, or name another"
            )
        if name in model.fallbacks[:index]:
            raise ConfigError(place, "listed twice")


def _model(name: str, value: Any, secret: Secret) -> ModelConfig:
    place = "models.%s" % (name,)
    if not name:
        raise ConfigError(place, "model names must not be empty")
    if "*" in name[:-1]:
        raise ConfigError(place, "a * may only end a model name (a prefix route such as 'openrouter/*')")
    spec = _object(value, place)
    _known(spec, place, _MODEL_KEYS)
    headers = _object(spec.get("headers", {}), place + ".headers")
    upstream_model = spec.get("model")
    if upstream_model is not None:
        if not _string(upstream_model, place + ".model"):
            raise ConfigError(place + ".model", "must not be empty")
        if any(c in upstream_model for c in "\r\n\0"):
            raise ConfigError(place + ".model", "must not contain CR, LF or NUL")
    strip_prefix = _bool(spec.get("stripPrefix", False), place + ".stripPrefix")
    if strip_prefix and not name.endswith("*"):
        raise ConfigError(place + ".stripPrefix", "only a prefix route (a name ending in *) has a prefix to strip")
    if strip_prefix and upstream_model is not None:
        raise ConfigError(place + ".stripPrefix", "model and stripPrefix exclude each other")
    max_concurrent = spec.get("maxConcurrentRequests")
    return ModelConfig(
        name=name,
        urls=_urls(spec.get("url"), place + ".url"),
        headers=tuple(
            _header(header, value, "%s.headers.%s" % (place, header), secret) for header, value in headers.items()
        ),
        upstream_model=upstream_model,
        strip_prefix=strip_prefix,
        unlisted=_bool(spec.get("unlisted", False), place + ".unlisted"),
        max_concurrent=None
        if max_concurrent is None
        else _positive_int(max_concurrent, place + ".maxConcurrentRequests"),
        max_queued=_count(spec.get("maxQueuedRequests", DEFAULT_MAX_QUEUED), place + ".maxQueuedRequests"),
        health_check=_health_check(spec.get("healthCheck", False), place + ".healthCheck"),
        retry_on=_retry_on(spec.get("retryOn", list(DEFAULT_RETRY_ON)), place + ".retryOn"),
        fallbacks=_fallbacks(spec.get("fallbacks", []), place + ".fallbacks"),
        policy=_policy(spec.get("policy", POLICIES[0]), place + ".policy"),
        affinity_bytes=_positive_int(spec.get("affinityBytes", DEFAULT_AFFINITY_BYTES), place + ".affinityBytes"),
        affinity_header=_header_name(spec.get("affinityHeader", DEFAULT_AFFINITY_HEADER), place + ".affinityHeader"),
    )


def _health_check(value: Any, place: str) -> Optional[HealthCheck]:
    """C{false}: none; C{true}: the defaults; an object: the defaults with its keys."""
    if isinstance(value, bool):
        return HealthCheck() if value else None
    spec = _object(value, place)
    _known(spec, place, _HEALTH_KEYS)
    check = HealthCheck()
    path = _string(spec.get("path", check.path), place + ".path")
    if not path.startswith("/") or not path.isascii() or any(c.isspace() or c in "#\0" for c in path):
        raise ConfigError(place + ".path", "expected an ASCII path starting with /, without spaces or #")
    return HealthCheck(
        path=path,
        interval=_positive_number(spec.get("interval", check.interval), place + ".interval"),
        timeout=_positive_number(spec.get("timeout", check.timeout), place + ".timeout"),
        failures=_positive_int(spec.get("failures", check.failures), place + ".failures"),
    )


def _retry_on(value: Any, place: str) -> frozenset[int]:
    if not isinstance(value, list):
        raise ConfigError(place, "expected a list of HTTP statuses, such as [429, 503]; [] turns retries off")
    for index, status in enumerate(value):
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ConfigError("%s[%d]" % (place, index), "expected an error status, 400 to 599")
    return frozenset(value)


def _fallbacks(value: Any, place: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(place, "expected a list of model names")
    return tuple(_string(name, "%s[%d]" % (place, index)) for index, name in enumerate(value))


def _policy(value: Any, place: str) -> str:
    if value not in POLICIES:
        raise ConfigError(place, "expected one of: %s" % (", ".join(POLICIES),))
    return str(value)


def _header_name(value: Any, place: str) -> str:
    if not _TOKEN.fullmatch(_string(value, place)):
        raise ConfigError(place, "not a valid HTTP header name")
    return str(value)


def _urls(value: Any, place: str) -> tuple[str, ...]:
    if isinstance(value, list):
        if not value:
            raise ConfigError(place, "a list of replicas needs at least one URL")
        urls = tuple(_url(item, "%s[%d]" % (place, index)) for index, item in enumerate(value))
        if len(set(urls)) != len(urls):
            raise ConfigError(place, "the same replica is listed twice")
        return urls
    return (_url(value, place),)


def _url(value: Any, place: str) -> str:
    url = _string(value, place, required=True)
    if url.startswith("unix:"):
        return _unix_url(url, place)
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError as e:
        raise ConfigError(place, "invalid URL: %s" % (e,)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(place, "not an absolute http://, https:// or unix: URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(place, "credentials in the URL are not supported; set an Authorization header instead")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(place, "a backend URL takes no query or fragment")
    _ascii_path(url, place)
    return "%s://%s%s" % (parts.scheme, parts.netloc, parts.path.rstrip("/"))


def _unix_url(url: str, place: str) -> str:
    """C{unix:/run/x.sock} or C{unix:///run/x.sock}, optionally C{:/prefix} (nginx's form)."""
    rest = url[len("unix:") :]
    if rest.startswith("///"):
        rest = rest[2:]
    path, sep, prefix = rest.partition(":")
    if not path.startswith("/") or path.endswith("/"):
        raise ConfigError(place, "expected unix:/absolute/path/to.sock, optionally followed by :/path-prefix")
    if "\0" in path or len(path.encode("utf-8")) > _MAX_SOCKET_PATH:
        raise ConfigError(place, "not a usable socket path (at most %d bytes)" % (_MAX_SOCKET_PATH,))
    if sep and not prefix.startswith("/"):
        raise ConfigError(place, "the path prefix after the socket must start with /")
    if "?" in prefix or "#" in prefix:
        raise ConfigError(place, "a backend URL takes no query or fragment")
    _ascii_path(prefix, place)
    return "unix:%s%s" % (path, ":" + prefix.rstrip("/") if prefix.rstrip("/") else "")


def _ascii_path(text: str, place: str) -> None:
    if not text.isascii() or any(c.isspace() for c in text):
        raise ConfigError(place, "the URL must be ASCII without spaces (use punycode and percent-encoding)")


def _header(name: str, value: Any, place: str, secret: Secret) -> tuple[str, str]:
    if not _TOKEN.fullmatch(name):
        raise ConfigError(place, "not a valid HTTP header name")
    if name.lower() in _UNSETTABLE:
        raise ConfigError(place, "this header is managed by the proxy and cannot be set")
    expanded = secret(_string(value, place), place)
    if any(c in expanded for c in "\r\n\0"):
        raise ConfigError(place, "header values must not contain CR, LF or NUL")
    return name, expanded


def _tokens(value: Any, secret: Secret) -> tuple[ClientToken, ...]:
    if not isinstance(value, list):
        raise ConfigError("authTokens", "expected a list of tokens (strings, or objects with token, name, models)")
    tokens = [_client_token(item, "authTokens[%d]" % (index,), index, secret) for index, item in enumerate(value)]
    _distinct([t.token for t in tokens], "authTokens", "the same token twice: which name and scope apply is unclear")
    _distinct([t.name for t in tokens], "authTokens", "the same name twice: log lines and metrics would mix tokens")
    return tuple(tokens)


def _client_token(item: Any, place: str, index: int, secret: Secret) -> ClientToken:
    """One entry: a string (every model, named token-<index>) or an object (SPEC §7, token scopes)."""
    name, models = "token-%d" % (index,), None
    if isinstance(item, dict):
        _known(item, place, _TOKEN_KEYS)
        if "name" in item:
            name = _label(item["name"], place + ".name")
        if "models" in item:
            models = _scope(item["models"], place + ".models")
        token_place = place + ".token"
        token = secret(_string(item.get("token"), token_place, required=True), token_place)
    else:
        token_place = place
        token = secret(_string(item, place), place)
    _check_token(token, token_place)
    return ClientToken(token, name, models)


def _check_token(token: str, place: str) -> None:
    if not token.strip():
        raise ConfigError(place, "an empty token would let anyone in")
    if any(c.isspace() for c in token) or not token.isascii():
        raise ConfigError(place, "a bearer token must be ASCII without spaces")
    if _PLACEHOLDER.fullmatch(token):
        raise ConfigError(
            place,
            "a placeholder (such as replace-me) would let in anyone who read the example: "
            "put a real token there (e.g. from: openssl rand -hex 32)",
        )


def _label(value: Any, place: str) -> str:
    """A token's name: it becomes a metrics label value and an access-log field."""
    name = _string(value, place)
    if not _LABEL.fullmatch(name):
        raise ConfigError(place, "1 to 64 letters, digits and . _ - (it labels log lines and metrics)")
    return name


def _scope(value: Any, place: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(place, "expected a non-empty list of model names or prefixes ending in * (none: all)")
    patterns = []
    for index, item in enumerate(value):
        pattern = _string(item, "%s[%d]" % (place, index), required=True)
        if not pattern:
            raise ConfigError("%s[%d]" % (place, index), "an empty name matches no model")
        if "*" in pattern[:-1]:
            raise ConfigError("%s[%d]" % (place, index), "* may only end a prefix, as in qwen/*")
        patterns.append(pattern)
    return tuple(patterns)


def _distinct(values: list[str], place: str, message: str) -> None:
    if len(set(values)) != len(values):
        raise ConfigError(place, message)


def _timeouts(value: Any) -> Timeouts:
    spec = _object(value, "timeouts")
    _known(spec, "timeouts", _TIMEOUT_KEYS)
    return Timeouts(**{k: _seconds(v, "timeouts." + k, k in _MAY_BE_ZERO) for k, v in spec.items()})


def _seconds(value: Any, place: str, may_be_zero: bool) -> float:
    if may_be_zero and not isinstance(value, bool) and value == 0:
        return 0.0
    return _positive_number(value, place)


def _known(spec: Mapping[str, Any], place: str, keys: set) -> None:
    for key in spec:
        if key not in keys:
            where = "%s.%s" % (place, key) if place else key
            raise ConfigError(where, "unknown key (expected one of: %s)" % (", ".join(sorted(keys)),))


def _object(value: Any, place: str, required: bool = False) -> dict[str, Any]:
    if value is None and required:
        raise ConfigError(place, "required")
    if not isinstance(value, dict):
        raise ConfigError(place, "expected an object")
    return value


def _string(value: Any, place: str, required: bool = False) -> str:
    if value is None and required:
        raise ConfigError(place, "required")
    if not isinstance(value, str):
        raise ConfigError(place, "expected a string")
    return value


def _bool(value: Any, place: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(place, "expected true or false")
    return value


def _count(value: Any, place: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(place, "expected a whole number, 0 or more")
    return value


def _positive_int(value: Any, place: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(place, "expected a positive integer")
    return value


def _positive_number(value: Any, place: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(place, "expected a positive number of seconds")
    if value == float("inf"):
        raise ConfigError(place, "expected a finite number of seconds")
    return float(value)
