"""Wiring: config → gateway → listening service, for both ``llmhop`` and ``twistd llmhop``.

This is the only module that knows every other one.  L{GatewayService} binds
the listening endpoint (in C{privilegedStartService}, so that twistd can bind
a low port before dropping privileges), tells systemd when it is ready, and on
shutdown stops accepting, lets in-flight requests finish within the grace
period and then cuts off whatever is left.
"""

import os
import shutil
from collections.abc import Generator
from typing import Callable, NoReturn, Optional, cast

import attrs
from twisted.application import internet, service
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IFileDescriptor, IListeningPort, IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web import http, resource as webresource, server
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from llmhop import client, config as configlib, process, tracing
from llmhop.accepting import Accepting
from llmhop.accesslog import AccessLog
from llmhop.auth import Authenticator
from llmhop.check import check
from llmhop.cors import Cors
from llmhop.endpoints import CachedEndpointFactory
from llmhop.errors import ConfigError, StartupError, tell
from llmhop.gateway import Gateway
from llmhop.health import HealthChecks
from llmhop.listening import bind_failure, listen_problems, sockets_stay_nonblocking, systemd_sockets, with_backlog
from llmhop.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, SHARED_DIR_ENVIRON, Metrics, make_shared_dir
from llmhop.routing import RoutingTable
from llmhop.site import GatewaySite
from llmhop.tracing import Tracing
from llmhop.upstream import Upstream
from llmhop.watch import ConfigWatcher
from llmhop.workers import ISupervisorReactor, SignalHandlers, WorkerPool, adopt_listening, inherited_listening
from llmhop.writethrough import write_through

# The stock pool keeps 2 idle connections per backend; a busy backend would
# then pay a TCP (and TLS) handshake for nearly every request.
MAX_PERSISTENT_PER_BACKEND = 512

_log = Logger()

# How often each process of a router with workers updates its process metrics.
PROCESS_METRICS_SECONDS = 5.0

# A listening port and the endpoint description it was bound (or adopted) from.
Listener = tuple[str, IListeningPort]


def build_pool(config: configlib.Config, reactor: IReactorTime) -> HTTPConnectionPool:
    return client.build_pool(reactor, MAX_PERSISTENT_PER_BACKEND, config.timeouts.keepAlive)


def build_gateway(
    config: configlib.Config,
    reactor: IReactorTime,
    pool: HTTPConnectionPool,
    metrics: Optional[Metrics] = None,
    previous: Optional[RoutingTable] = None,
    tracing: Optional[Tracing] = None,
) -> Gateway:
    """The gateway for C{config}; C{previous} hands over replica health and queues on reload."""
    routes = RoutingTable.from_config(config, previous)
    endpoints = CachedEndpointFactory(reactor, BrowserLikePolicyForHTTPS(), config.timeouts.connect, routes.sockets)
    agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    auth = Authenticator.from_tokens(config.auth_tokens)
    if metrics is not None:
        metrics.routes_changed(routes.routes)
    return Gateway(
        routes=routes,
        auth=auth,
        upstream=Upstream(
            agent,
            reactor,
            config.timeouts.response,
            config.timeouts.read,
            strip_credentials=auth.enabled,
            cooldown=config.timeouts.replicaCooldown,
            metrics=metrics,
            tracing=tracing,
        ),
        max_body_bytes=config.max_body_bytes,
        # With a listen address of their own, metrics are not served here.
        metrics=metrics if config.metrics.listen is None else None,
        public_metrics=config.metrics.public,
        cors=Cors.from_origins(config.cors_origins),
    )


class MetricsPage(webresource.Resource):
    """/metrics alone, for metrics.listen: an address of its own, without client tokens."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: http.Request) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            return b"Not found: metrics are at /metrics\n"
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE)
        return self.metrics.render()


class MetricsSite(server.Site):
    noisy = False

    def log(self, request: http.Request) -> None:
        """Scrapes stay out of the access log."""


def build_metrics_site(metrics: Metrics, reactor: IReactorTime) -> server.Site:
    return MetricsSite(MetricsPage(metrics), reactor=reactor)


class DrainService(service.Service):
    """The last step of a stop: requests in flight finish within the grace period, the rest are cut off.

    The first child of L{GatewayService}, so stopped last: by then the
    listening ports no longer accept.  Then the backend pool's idle
    connections are closed.
    """

    def __init__(self, site: GatewaySite, pool: HTTPConnectionPool, reactor: IReactorTime, grace: Callable[[], float]):
        self.site, self.pool, self.reactor, self.grace = site, pool, reactor, grace

    @defer.inlineCallbacks
    def stopService(self) -> Generator[defer.Deferred, object, None]:
        service.Service.stopService(self)
        in_flight = len(self.site.in_flight)
        if in_flight:
            grace = self.grace()
            _log.info("waiting up to {grace}s for {n} request(s) to finish", grace=grace, n=in_flight)
            drained = self.site.drained()
            timer = self.reactor.callLater(grace, drained.cancel)
            try:
                yield drained
            except defer.CancelledError:
                _log.warn("cutting off {n} request(s) still running after the grace period", n=len(self.site.in_flight))
                for request in list(self.site.in_flight):
                    request.channel.transport.abortConnection()
            else:
                timer.cancel()
        yield self.pool.closeCachedConnections()


class PortService(service.Service):
    """A bound listening port: stopping the service stops accepting, for good.

    @ivar accepting: what pauses and resumes the port, told that it stops.
    """

    def __init__(self, port: IListeningPort, accepting: Optional[Accepting] = None) -> None:
        self.port: Optional[IListeningPort] = port
        self.accepting = accepting

    def stopService(self) -> Optional[defer.Deferred]:
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return None
        if self.accepting is not None:
            self.accepting.forget(port)
        return defer.maybeDeferred(port.stopListening)


class WorkersService(service.Service):
    """Workers 2..N on the listening sockets: started with the service, signalled and awaited on stop.

    @param listening: (endpoint description, fd) of every listening socket.
    """

    def __init__(self, workers: WorkerPool, listening: list[tuple[str, int]]) -> None:
        self.workers, self.listening = workers, listening

    def startService(self) -> None:
        service.Service.startService(self)
        self.workers.start(self.listening)

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        return self.workers.stop()


class WatchService(service.Service):
    """--watch-config: the watcher polls while the service runs."""

    def __init__(self, watcher: ConfigWatcher) -> None:
        self.watcher = watcher

    def startService(self) -> None:
        service.Service.startService(self)
        self.watcher.start()

    def stopService(self) -> None:
        service.Service.stopService(self)
        self.watcher.stop()


class GatewayService(service.MultiService):
    """One router process: the first one (which may supervise workers) or worker C{worker}.

    A MultiService whose children are the steps of its life: the drain step
    (L{DrainService}, added first so that it stops last), the config watcher
    (L{WatchService}), and, once bound, one L{PortService} per listening
    port and the workers (L{WorkersService}).  Binding itself happens here, in
    C{privilegedStartService} (twistd binds before dropping privileges): the
    main address, then C{metrics.listen}, and a failure is one line in
    C{failure}.

    @param config_path: where SIGHUP reloads the config from.
    @param worker: this process's worker number when a supervisor started it;
        it then adopts the listening socket on fd 3 instead of listening.
    @param handle_signals: own SIGTERM/SIGINT/SIGHUP (not for in-process use).
    @param relay_logs: workers log through this process (twistd's log file)
        rather than to the stderr they share with it.
    @param access_log: where access lines go (default: twisted.logger).
    @param workers_flag: the command line's C{--workers}, which a reloaded
        config file does not override either.
    @param watch_config: reload when the config file changes (L{ConfigWatcher}).
    """

    def __init__(
        self,
        config: configlib.Config,
        reactor: ISupervisorReactor,
        config_path: Optional[str] = None,
        worker: Optional[int] = None,
        handle_signals: bool = False,
        relay_logs: bool = False,
        access_log: Optional[AccessLog] = None,
        workers_flag: Optional[int] = None,
        watch_config: bool = False,
    ) -> None:
        service.MultiService.__init__(self)
        self.config = config
        self.workers_flag = workers_flag
        self.reactor = reactor
        self.config_path = config_path
        self.worker = worker
        self.handle_signals = handle_signals
        self.shared_dir = _metrics_dir(config, worker)
        self.pool = build_pool(config, reactor)
        # Outlives reloads: counters go on counting.
        self.metrics = Metrics(self.shared_dir)
        # OpenTelemetry spans, when the OTEL_* variables ask for them (llmhop[otel]).
        self.tracing = tracing.from_environment()
        # The gateway serving new requests; a reload replaces it.
        self.gateway = build_gateway(config, reactor, self.pool, self.metrics, tracing=self.tracing)
        self.site = GatewaySite(self.gateway, config, reactor, access_log, self.metrics)
        # Active health checks (SPEC §6): none run unless a model asks.
        self.health = HealthChecks(reactor)
        # Why the start failed: one line, naming the address and the fix.
        self.failure: Optional[str] = None
        self._listening: Optional[defer.Deferred] = None
        DrainService(self.site, self.pool, reactor, self._grace).setServiceParent(self)
        if self.shared_dir is not None:
            # With workers: each process's CPU and memory into the shared metrics.
            refresh = internet.TimerService(PROCESS_METRICS_SECONDS, self.metrics.refresh_process)
            refresh.clock = reactor
            refresh.setServiceParent(self)
        # Only the first process watches: it passes a reload on to its workers.
        if watch_config and worker is None and config_path is not None:
            WatchService(ConfigWatcher(reactor, config_path, self.reload)).setServiceParent(self)
        self.workers: Optional[WorkerPool] = None
        if worker is None and config.workers > 1:
            if config_path is None:
                raise ValueError("workers need the config file's path")
            self.workers = WorkerPool(
                reactor,
                config_path,
                config.workers,
                # Each worker keeps serving for the drain delay, then drains.
                config.timeouts.shutdown + config.timeouts.drainDelay,
                relay_logs,
                on_exit=self.metrics.process_ended,
                # Their JSON access lines are written as they are, with no log prefix.
                access_line=self.site.access_log.write_line,
            )

    def _grace(self) -> float:
        return self.config.timeouts.shutdown

    def privilegedStartService(self) -> None:
        service.MultiService.privilegedStartService(self)
        if self.worker is None:
            _warn_about(self.config)
        process.raise_open_file_limit()
        if self.worker is not None:
            self._listening = defer.maybeDeferred(self._adopt)
        else:
            self._listening = self._listen()
        self._listening.addCallback(self._listened)
        self._listening.addErrback(self._cannot_listen)

    def _adopt(self) -> list[Listener]:
        """A worker's listeners: the sockets its first process passed on."""
        return [(d, adopt_listening(self.reactor, d, self.site, fd)) for d, fd in inherited_listening()]

    @defer.inlineCallbacks
    def _listen(self) -> Generator[defer.Deferred, IListeningPort, list[Listener]]:
        """Bind every listen entry in order; one that fails unbinds those before it."""
        # Everything that can be seen without binding, before anything is bound.
        problems = listen_problems(self.config)
        if problems:
            raise StartupError(problems[0])
        bound: list[Listener] = []
        try:
            for place, description in _descriptions(self.reactor, self.config.listen):
                port = yield _listen_on(self.reactor, description, self.site, place, with_backlog(description))
                bound.append((description, port))
        except BaseException:
            # Let go of what was bound; not waited for, so that the failure
            # is known before the reactor runs and told as one line.
            for _, port in bound:
                port.stopListening()
            raise
        return bound

    def startService(self) -> None:
        if self._listening is None:
            self.privilegedStartService()
        service.MultiService.startService(self)
        self.health.update(self.gateway.routes, self.gateway.upstream.agent)
        if self.handle_signals:
            self.reactor.callWhenRunning(SignalHandlers(self.reactor, self.reload).install)

    def _listen_for_metrics(self) -> defer.Deferred:
        """metrics.listen, in the first process only (workers share its socket for requests)."""
        listen = self.config.metrics.listen
        if listen is None or self.worker is not None:
            return defer.succeed(None)
        return _listen_on(self.reactor, listen, build_metrics_site(self.metrics, self.reactor), "metrics.listen")

    def _listened(self, listeners: list[Listener]) -> defer.Deferred:
        for _, port in listeners:
            PortService(port, self.site.accepting).setServiceParent(self)
        metrics = self._listen_for_metrics()
        metrics.addCallback(self._ready, listeners)
        return metrics

    def _ready(self, metrics_port: Optional[IListeningPort], listeners: list[Listener]) -> None:
        if metrics_port is not None:
            PortService(metrics_port).setServiceParent(self)
            _log.info("metrics at http://{address}/metrics", address=process.describe_address(metrics_port.getHost()))
        for _, port in listeners:
            write_through(port)
        # Measured now that the ports and the metrics port are open.
        self.site.accepting.fit_to_process(port for _, port in listeners)
        if self.workers is not None:
            listening = [(d, IFileDescriptor(port).fileno()) for d, port in listeners]
            WorkersService(self.workers, listening).setServiceParent(self)
        # The ports are bound before the reactor runs (so that twistd can drop
        # privileges after binding), but until it runs no signal handler is
        # installed and a SIGINT or SIGTERM sent on seeing "ready" would be
        # lost or fatal: say it only then.
        self.reactor.callWhenRunning(self._announce, [port for _, port in listeners])

    def _announce(self, ports: list[IListeningPort]) -> None:
        for port in ports:
            _log.info("llmhop listening on {address}", address=process.describe_address(port.getHost()))
        if self.worker is None:
            process.sd_notify(b"READY=1")

    def _cannot_listen(self, failure: Failure) -> None:
        """Remember why; C{llmhop} prints it before its reactor runs, else it is logged once running."""
        why = failure.getErrorMessage()
        listen = ", ".join(self.config.listen)
        self.failure = why if failure.check(StartupError) else "listen %s: %s" % (listen, why)
        self._remove_shared_dir()
        self.reactor.callWhenRunning(self._stop_failed)

    def _stop_failed(self) -> None:
        _log.error("llmhop: {why}", why=self.failure)
        self.reactor.stop()

    def reload(self) -> None:
        """SIGHUP: read the config file again; keep the running one if the new one is wrong."""
        if self.workers is not None:
            self.workers.signal_all("HUP")
        if self.config_path is None:
            return
        try:
            config = configlib.load(self.config_path)
        except ConfigError as e:
            _log.error("config not reloaded, the running one stays: {error}", error=str(e))
            return
        if self.workers_flag is not None:
            config = attrs.evolve(config, workers=self.workers_flag)
        fixed = [key for key in ("listen", "workers") if getattr(config, key) != getattr(self.config, key)]
        if config.metrics.listen != self.config.metrics.listen:
            fixed.append("metrics.listen")
        self.config = attrs.evolve(
            config,
            listen=self.config.listen,
            workers=self.config.workers,
            metrics=attrs.evolve(config.metrics, listen=self.config.metrics.listen),
        )
        if self.worker is None:
            _warn_about(self.config)
        gateway = build_gateway(self.config, self.reactor, self.pool, self.metrics, self.gateway.routes, self.tracing)
        self.site.replace(gateway, self.config)
        self.gateway = gateway
        if self.running:
            self.health.update(gateway.routes, gateway.upstream.agent)
        self.pool.cachedConnectionTimeout = self.config.timeouts.keepAlive  # type: ignore[assignment]  # typed int
        _log.info(
            "config reloaded from {path}: {models}",
            path=self.config_path,
            models=configlib.count(len(config.models), "model"),
        )
        if fixed:
            _log.warn(
                "{keys} changed in {path}: restart llmhop to apply that (the rest was applied)",
                keys=" and ".join(fixed),
                path=self.config_path,
            )

    def stopService(self) -> defer.Deferred:
        """Stop: /ready says so at once; requests are served for the drain delay, then the steps stop."""
        if self.worker is None:
            process.sd_notify(b"STOPPING=1")
        self.site.draining = True
        if self.workers is not None:
            # They drain alongside this process (and are not restarted).
            self.workers.stop()
        delay = self.config.timeouts.drainDelay
        if not delay:
            return self._stop_steps()
        _log.info("draining: /ready answers 503; serving on for {delay}s before the socket closes", delay=delay)
        return task.deferLater(self.reactor, delay, self._stop_steps)

    def _stop_steps(self) -> defer.Deferred:
        if self.config.timeouts.drainDelay:
            _log.info("drain delay over: the listening socket closes")
        self.health.stop()
        # The children stop together, in reverse order: watcher, workers,
        # ports (no more accepting), then the drain step.
        stopped = service.MultiService.stopService(self)
        stopped.addBoth(self._stopped)
        return stopped

    def _stopped(self, result: object) -> object:
        self._remove_shared_dir()
        if self.tracing is not None:
            self.tracing.shutdown()  # exports the spans still batched
        return result

    def _remove_shared_dir(self) -> None:
        """The first process made the metrics directory; it removes it."""
        if self.worker is None and self.shared_dir is not None:
            shutil.rmtree(self.shared_dir, ignore_errors=True)


def _warn_about(config: configlib.Config) -> None:
    for warning in configlib.warnings(config):
        _log.warn("{warning}", warning=warning)


def _descriptions(reactor: IReactorTime, listen: tuple[str, ...]) -> list[tuple[str, str]]:
    """(place, endpoint description) of every socket to bind or adopt: C{systemd} is each socket systemd passed."""
    found: list[tuple[str, str]] = []
    for place, entry in configlib.listen_places(listen):
        if entry == configlib.SYSTEMD:
            found.extend((place, description) for description in systemd_sockets(reactor, place))
        else:
            found.append((place, entry))
    return found


def _listen_on(
    reactor: IReactorTime, description: str, factory: IProtocolFactory, place: str, bind: Optional[str] = None
) -> defer.Deferred:
    """Bind C{description} (as C{bind}, with options added) for C{factory}.

    A failure is a L{StartupError} of one line.
    """
    try:
        endpoint = serverFromString(reactor, bind or description)
    except (IndexError, KeyError) as e:
        # The systemd parser looks the inherited socket up at parse time.
        return defer.fail(StartupError("%s %s: systemd passed no such socket (%s)" % (place, description, e)))
    except Exception as e:
        return defer.fail(StartupError("%s %s: %s" % (place, description, e)))
    with sockets_stay_nonblocking():  # an inherited systemd socket is shared with the workers
        listening = endpoint.listen(factory)
    listening.addErrback(_bind_failed, description, place)
    return listening


def _bind_failed(failure: Failure, description: str, place: str) -> NoReturn:
    raise StartupError(bind_failure(description, failure.value, place))


def _metrics_dir(config: configlib.Config, worker: Optional[int]) -> Optional[str]:
    """Where a router with workers keeps its metrics: made by the first process, inherited by workers."""
    if worker is not None:
        return os.environ.get(SHARED_DIR_ENVIRON)
    if config.workers == 1:
        return None
    return make_shared_dir()


class Options(usage.Options):
    """``twistd llmhop`` options."""

    synopsis = "--config CONFIG.json"
    longdesc = "Route OpenAI-compatible requests by model to their backends (see README)."
    optParameters = [
        ["config", "c", None, "Path to the JSON config file."],
        [
            "workers",
            "w",
            None,
            'Router processes sharing the socket, or "auto": one per available CPU (overrides the config\'s workers).',
            configlib.workers_flag,
        ],
    ]
    optFlags = [
        ["watch-config", None, "Reload when the config file changes (e.g. a Kubernetes ConfigMap), as on SIGHUP."],
        ["check", None, "Validate the config (secret references included) and exit 0 or 1 without listening."],
        ["no-secrets", None, "With --check: the structure only, secret references unresolved (for build machines)."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required")
        if self["no-secrets"] and not self["check"]:
            raise usage.UsageError("--no-secrets only goes with --check")


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    if options["check"]:
        # As llmhop --check does, before twistd daemonizes or binds anything.
        config = configlib.load_or_exit(options["config"], resolve=not options["no-secrets"])
        raise SystemExit(check(config, options["config"], on_this_host=not options["no-secrets"]))
    config = configlib.with_workers(configlib.load_or_exit(options["config"]), options["workers"])
    # twistd reads a failure to start from its log, but what can be seen
    # before binding is said on stderr, as for a config error.
    problems = listen_problems(config)
    if problems:
        raise SystemExit(tell(problems[0]))
    # twistd owns the log (a file when daemonized): workers log through it.
    path = os.path.abspath(options["config"])
    try:
        return GatewayService(
            config,
            cast(ISupervisorReactor, reactor),  # the global reactor provides it all
            path,
            handle_signals=True,
            relay_logs=True,
            workers_flag=None if options["workers"] is None else config.workers,
            watch_config=options["watch-config"],
        )
    except StartupError as e:
        raise SystemExit(tell(str(e))) from None
