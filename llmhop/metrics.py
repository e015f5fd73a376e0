"""Prometheus metrics (prometheus_client), shared by a router's processes.

Labels are bounded: ``model`` is the config's route key (``openrouter/*`` for
every name that prefix routes), or empty for requests that reached no route,
so a client inventing model names cannot grow the registry.

With workers, every process keeps its values in files of one directory
(prometheus_client's multiprocess mode) and a scrape, whichever process
answers it, sums them all: counters of a worker that died and was restarted
keep counting, the gauges count live processes only.
"""

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Literal, Optional

import attrs
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric

from llmhop.errors import StartupError

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# prometheus_client's own name for the directory of multiprocess mode.
SHARED_DIR_ENVIRON = "PROMETHEUS_MULTIPROC_DIR"
# LLM requests range from milliseconds (a cached model list) to many minutes
# (a long completion that is not streamed).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
# Seconds per output token: from 1,000 tokens/s down to one a second.
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, float("inf"))


# Where the files of a router with workers may go when systemd gave no
# RuntimeDirectory=: a read-only root (Kubernetes' readOnlyRootFilesystem)
# usually still has the runtime's /dev/shm.
FALLBACK_DIRS = ("/tmp", "/dev/shm")


def make_shared_dir(environ: Mapping[str, str] = os.environ, fallbacks: Sequence[str] = FALLBACK_DIRS) -> str:
    """A new private directory for the metrics of a router's processes.

    In systemd's C{$RUNTIME_DIRECTORY} (private, cleaned up) if there is one,
    else in C{$TMPDIR} or the first of C{fallbacks} that takes it.
    """
    candidates = [environ.get("RUNTIME_DIRECTORY"), environ.get("TMPDIR"), *fallbacks]
    tried = []
    for parent in dict.fromkeys(c for c in candidates if c):
        try:
            return tempfile.mkdtemp(prefix="llmhop-metrics-", dir=parent)
        except OSError as e:
            tried.append("%s (%s)" % (parent, e.strerror))
    raise StartupError(
        "workers: the processes share their metrics through a directory, and none is writable: %s; "
        "mount a writable one (e.g. an emptyDir at /tmp) or set RUNTIME_DIRECTORY" % (", ".join(tried),)
    )


@attrs.frozen
class _RouteMetrics:
    """One route's label children."""

    duration: Histogram
    first_byte: Histogram
    received: Counter
    sent: Counter
    in_flight: Gauge
    queued: Gauge


class Metrics:
    """@param shared_dir: the directory of a router with workers (see above)."""

    def __init__(self, shared_dir: Optional[str] = None) -> None:
        self.shared_dir = shared_dir
        if shared_dir is not None:
            os.environ[SHARED_DIR_ENVIRON] = shared_dir
            # prometheus_client reads how to store values when each metric is
            # made; this is how its multiprocess mode is turned on after import.
            values.ValueClass = values.MultiProcessValue()
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        # CPU, memory, open descriptors (Linux's /proc).  With workers a
        # scrape reaches one process of several: each process copies its own
        # figures into multiprocess metrics (L{refresh_process}), summed.
        self._process: Optional[_ProcessMetrics] = None
        if shared_dir is None:
            ProcessCollector(registry=registry)
        else:
            self._process = _ProcessMetrics.made(registry)
        self.requests = Counter(
            "llmhop_requests",
            "Requests answered, by model route, status and client token name (empty without auth).",
            ["model", "status", "token"],
            registry=registry,
        )
        self.duration = Histogram(
            "llmhop_request_duration_seconds",
            "From the request's arrival to the end of its answer.",
            ["model"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.first_byte = Histogram(
            "llmhop_time_to_first_byte_seconds",
            "From the request's arrival to the first byte of its answer (the first token of a stream).",
            ["model"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.upstream_failures = Counter(
            "llmhop_upstream_failures",
            "Backend attempts that failed, by model route and kind "
            "(refused, timeout, tls, bad-response, stalled, died, status-NNN for a retryOn answer passed over).",
            ["model", "kind"],
            registry=registry,
        )
        self.request_bytes = Counter(
            "llmhop_request_bytes", "Request body bytes received.", ["model"], registry=registry
        )
        self.response_bytes = Counter(
            "llmhop_response_bytes", "Response body bytes sent.", ["model"], registry=registry
        )
        self.in_flight = Gauge(
            "llmhop_requests_in_flight",
            "Requests being forwarded, by model route.",
            ["model"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.queued = Gauge(
            "llmhop_requests_queued",
            "Requests waiting for a model's concurrency limit.",
            ["model"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "llmhop_prompt_tokens",
            "Prompt tokens of answered requests, from the answers' usage, by model route and client token name.",
            ["model", "token"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "llmhop_completion_tokens",
            "Completion tokens of answered requests, from the answers' usage, by model route and client token name.",
            ["model", "token"],
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "llmhop_time_per_output_token_seconds",
            "A stream's time from its first byte to its end, per completion token.",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=registry,
        )
        # Label children, looked up once: .labels() costs a lock and a dict.
        self._per_model: dict[str, _RouteMetrics] = {}
        self._per_status: dict[tuple[str, str, str], Counter] = {}
        # (model, token) → its prompt and completion token counters.
        self._per_token: dict[tuple[str, str], tuple[Counter, Counter]] = {}
        # Made on a route's first streamed usage only: no empty histogram for the others.
        self._per_output_token: dict[str, Histogram] = {}

    def _route(self, model: str) -> "_RouteMetrics":
        children = self._per_model.get(model)
        if children is None:
            children = self._per_model[model] = _RouteMetrics(
                duration=self.duration.labels(model),
                first_byte=self.first_byte.labels(model),
                received=self.request_bytes.labels(model),
                sent=self.response_bytes.labels(model),
                in_flight=self.in_flight.labels(model),
                queued=self.queued.labels(model),
            )
        return children

    def request_ended(
        self,
        model: str,
        status: str,
        duration: float,
        first_byte: Optional[float],
        received: int,
        sent: int,
        token: str = "",
    ) -> None:
        children = self._route(model)
        key = (model, status, token)
        counter = self._per_status.get(key)
        if counter is None:
            counter = self._per_status[key] = self.requests.labels(model, status, token)
        counter.inc()
        children.duration.observe(duration)
        if first_byte is not None:
            children.first_byte.observe(first_byte)
        children.received.inc(received)
        children.sent.inc(sent)

    def tokens_used(self, model: str, token: str, prompt: int, completion: int, per_token: Optional[float]) -> None:
        """An answer's usage (SPEC §8); C{per_token}: a stream's seconds per completion token."""
        counters = self._per_token.get((model, token))
        if counters is None:
            counters = self._per_token[model, token] = (
                self.prompt_tokens.labels(model, token),
                self.completion_tokens.labels(model, token),
            )
        counters[0].inc(prompt)
        counters[1].inc(completion)
        if per_token is not None:
            histogram = self._per_output_token.get(model)
            if histogram is None:
                histogram = self._per_output_token[model] = self.time_per_output_token.labels(model)
            histogram.observe(per_token)

    def upstream_failed(self, model: str, kind: str) -> None:
        self.upstream_failures.labels(model, kind).inc()

    def route_gauges(self, model: str) -> tuple[Gauge, Gauge]:
        """The in-flight and queued gauges of route C{model}, for inc() and dec()."""
        children = self._route(model)
        return children.in_flight, children.queued

    def routes_changed(self, names: Iterable[str]) -> None:
        """Show every configured route, at 0 until used."""
        for name in names:
            self._route(name)

    def process_ended(self, pid: int) -> None:
        """A worker is gone: its gauges no longer count (its counters do)."""
        if self.shared_dir is not None:
            multiprocess.mark_process_dead(pid, self.shared_dir)

    def refresh_process(self) -> None:
        """With workers: this process's CPU, memory and descriptors into the shared metrics (every few seconds)."""
        if self._process is not None:
            self._process.refresh()

    def render(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(_WithoutCreated(self.registry))
        self.refresh_process()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.shared_dir)
        return generate_latest(registry)


@attrs.define
class _ProcessMetrics:
    """prometheus_client's process metrics for a router with workers, under the multiprocess rules.

    Its ProcessCollector reads one process; here every process copies its
    own figures into metrics of the same names that the multiprocess
    collector combines: memory and descriptors summed over the live
    processes, CPU seconds summed over every process that ran (a counter),
    the start time of the oldest.
    """

    resident: Gauge
    virtual: Gauge
    open_fds: Gauge
    start_time: Gauge
    cpu: Counter
    _cpu_seen: float = 0.0

    @classmethod
    def made(cls, registry: CollectorRegistry) -> "_ProcessMetrics":
        def gauge(name: str, doc: str, mode: Literal["livesum", "min"]) -> Gauge:
            return Gauge(name, doc, multiprocess_mode=mode, registry=registry)

        return cls(
            gauge("process_resident_memory_bytes", "Resident memory of the router's processes, summed.", "livesum"),
            gauge("process_virtual_memory_bytes", "Virtual memory of the router's processes, summed.", "livesum"),
            gauge("process_open_fds", "Open file descriptors of the router's processes, summed.", "livesum"),
            gauge("process_start_time_seconds", "When the oldest of the router's processes started.", "min"),
            Counter("process_cpu_seconds", "CPU seconds of the router's processes, summed.", registry=registry),
        )

    def refresh(self) -> None:
        figures = {
            sample.name: sample.value
            for family in ProcessCollector(registry=None).collect()
            for sample in family.samples
        }
        for name, gauge in (
            ("process_resident_memory_bytes", self.resident),
            ("process_virtual_memory_bytes", self.virtual),
            ("process_open_fds", self.open_fds),
            ("process_start_time_seconds", self.start_time),
        ):
            if name in figures:
                gauge.set(figures[name])
        cpu = figures.get("process_cpu_seconds_total")
        if cpu is not None and cpu > self._cpu_seen:
            self.cpu.inc(cpu - self._cpu_seen)
            self._cpu_seen = cpu


@attrs.frozen
class _WithoutCreated:
    """A registry's metrics without their C{_created} samples.

    Each counter and histogram child carries one (when it was made): a series
    per label set that dashboards never use.  prometheus_client 0.17 can turn
    them off (C{disable_created_metrics}), Debian bookworm's 0.16 only by an
    environment variable read at import, so they are dropped here, for both.
    (Its multiprocess mode makes none.)
    """

    registry: CollectorRegistry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            metric.samples = [sample for sample in metric.samples if not sample.name.endswith("_created")]
            yield metric
