"""Helpers for the benchmarks: start the router and backends, measure, stop them.

Everything runs on 127.0.0.1 and is stopped by PID when the benchmark ends.
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.e2e.procs import BackendProcess, Process, Router, env, llmhop_command  # noqa: E402


def start_router(settings, python=None, argv_prefix=(), checkout=None):
    """A router process for C{settings}; its config lives in a temporary file.

    C{checkout}: run the llmhop of that directory (another commit, for a
    before/after comparison in one run) instead of this one.
    """
    handle, path = tempfile.mkstemp(prefix="llmhop-bench-", suffix=".json")
    with os.fdopen(handle, "w") as f:
        json.dump(settings, f)
    command = [python, "-m", "llmhop"] if python else llmhop_command()
    # The log goes to a file, as in production, not through a pipe this
    # process would have to drain while it measures.
    if checkout is not None:
        command = [python or sys.executable, "-m", "llmhop"]
    environ = env(PYTHONPATH=os.path.abspath(checkout)) if checkout is not None else None
    argv = list(argv_prefix) + command + ["--config", path]
    # cwd too: "python -m" puts the working directory first on sys.path.
    cwd = os.path.abspath(checkout) if checkout is not None else ROOT
    router = Router(path, argv=argv, log_path=path + ".log", environ=environ, cwd=cwd)
    router.config_path = path
    return router


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_go(binary, directory, backend, argv_prefix=()):
    """The Go original on a fixed port (it logs its configured address, not the bound one)."""
    port = free_port()
    config = os.path.join(directory, "go.json")
    with open(config, "w") as f:
        json.dump({"listen": "127.0.0.1:%d" % port, "models": {"m": {"url": "http://127.0.0.1:%d" % backend}}}, f)
    process = Process(list(argv_prefix) + [binary, "-config", config])
    return process, _listening(process, port, "the Go router", 15)


# The Rust routers from PyPI, each a Python package around its Rust core (so
# the process measured is the one started): how to run it given the package's
# Python.  Both want a worker that answers GET /health and GET /v1/models.
RUST_ROUTERS = {
    "vllm-router": ["-m", "vllm_router.launch_router"],
    "sglang-router": ["-m", "sglang_router.launch_router"],
}


def start_rust_router(kind, python, backend_url, policy="round_robin", argv_prefix=()):
    """vllm-router or sglang-router (C{kind}) with one worker, C{backend_url}: (process, port)."""
    port = free_port()
    argv = list(argv_prefix) + [python] + RUST_ROUTERS[kind] + ["--host", "127.0.0.1", "--port", str(port)]
    argv += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
    argv += ["--policy", policy, "--worker-urls", backend_url]
    process = Process(argv)
    _listening(process, port, kind, 120)
    # It listens before its worker is registered, and answers 503 until then.
    deadline = time.monotonic() + 60
    while _chat_status(port) != 200:
        if time.monotonic() > deadline:
            process.stop()
            raise RuntimeError("%s does not route to its worker: %s" % (kind, process.output[-2000:]))
        time.sleep(0.2)
    return process, port


def _chat_status(port):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "ready?"}]})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _listening(process, port, name, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            if time.monotonic() > deadline or process.proc.poll() is not None:
                process.stop()
                raise RuntimeError("%s did not listen: %s" % (name, process.output[-2000:])) from None
            time.sleep(0.05)


def stop_all(*processes):
    for process in processes:
        if process is not None:
            process.stop()
            path = getattr(process, "config_path", None)
            for name in (path, path and path + ".log"):
                if name and os.path.exists(name):
                    os.unlink(name)


def rss_kib(pid):
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % (pid,)))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Profile:
    """py-spy sampling one process into a raw (collapsed-stack) file, read by bench/stacks.

    py-spy (PyPI: py-spy) is only needed when a benchmark is asked for a profile.
    """

    def __init__(self, pid, path, seconds, rate=500):
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        argv = [spy, "record", "--rate", str(rate), "--duration", str(int(seconds)), "--format", "raw"]
        self.proc = subprocess.Popen(
            argv + ["--output", path, "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def wait(self):
        _, err = self.proc.communicate()
        if self.proc.returncode:
            raise RuntimeError("py-spy failed: %s" % err.decode(errors="replace")[-500:])


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


__all__ = [
    "Profile",
    "BackendProcess",
    "Process",
    "env",
    "free_port",
    "start_go",
    "start_rust_router",
    "start_router",
    "stop_all",
    "rss_kib",
    "fd_count",
    "cpu_seconds",
    "percentile",
]
