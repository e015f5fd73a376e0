"""``--workers N``: several router processes on one socket, under llmhop, twistd and systemd."""

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading

import pytest

from tests import rawhttp
from tests.certs import ScratchCA
from tests.e2e.procs import (
    Process,
    Router,
    env,
    llmhop_command,
    pid_alive,
    socket_activated,
    twistd_command,
    wait_for,
    write_config,
)
from tests.e2e.test_cli import get, post_chat

STARTED = r"started worker 2 \(pid (\d+)\)"


def chat_line(worker):
    return re.compile(r"\[worker %d\] POST /v1/chat/completions model=m status=200" % (worker,))


def hit_until_both_serve(router, send, timeout=20.0):
    """Send requests, a few at a time on new connections, until each worker's access log shows one.

    Which process accepts a connection is up to the kernel and their load, so
    this keeps going until both have, within a deadline.
    """

    def both_served():
        for _ in range(8):
            threads = [threading.Thread(target=send) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        output = router.output
        return chat_line(1).search(output) and chat_line(2).search(output)

    wait_for(both_served, timeout)


def worker_pid(router):
    return int(router.wait_for_line(STARTED).group(1))


@pytest.fixture
def two_workers(start_router, backend_process):
    router = start_router({"listen": "127.0.0.1:0", "workers": 2, "models": {"m": {"url": backend_process.url}}})
    router.wait_for_line(r"\[worker 2\] llmhop listening on")
    return router


def test_both_workers_serve_and_stop_cleanly(two_workers):
    port = two_workers.port()
    pid = worker_pid(two_workers)
    statuses = []
    hit_until_both_serve(two_workers, lambda: statuses.append(post_chat(port)[0]))
    assert set(statuses) == {200}
    two_workers.signal(signal.SIGTERM)
    assert two_workers.wait() == 0
    assert not pid_alive(pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert "Traceback" not in two_workers.output


def serving_pid(client, pids):
    """Which of C{pids} holds the server side of C{client}'s TCP connection (from /proc)."""
    host, port = client.getsockname()[:2]
    wanted = "%08X:%04X" % (int.from_bytes(socket.inet_aton(host), "little"), port)
    with open("/proc/net/tcp") as table:
        inodes = {row.split()[9] for row in table.read().splitlines()[1:] if row.split()[2] == wanted}
    for pid in pids:
        for fd in os.listdir("/proc/%d/fd" % (pid,)):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    return None


def test_sigterm_drains_streams_in_every_worker(two_workers):
    """Each worker lets its own in-flight streams finish, as a single process does."""
    port = two_workers.port()
    pids = (two_workers.pid, worker_pid(two_workers))
    body = json.dumps({"model": "m", "script": {"kind": "sse", "n": 30, "interval": 0.1}}).encode()
    socks, holders = [], set()

    def both_streaming():
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(sock)
        sock.sendall(rawhttp.request(b"POST", b"/v1/chat/completions", body))
        rawhttp.read_until(sock, b"data: {")
        holders.add(serving_pid(sock, pids))
        return holders >= set(pids)

    try:
        wait_for(both_streaming, timeout=2.5)
        two_workers.signal(signal.SIGTERM)
        two_workers.wait_for_line(r"\[worker 1\] waiting up to")
        two_workers.wait_for_line(r"\[worker 2\] waiting up to")
        for sock in socks:
            assert rawhttp.read_all(sock, timeout=10).endswith(b"0\r\n\r\n")
    finally:
        for sock in socks:
            sock.close()
    assert two_workers.wait() == 0


def test_sighup_reloads_every_worker(tmp_path, two_workers, backend_process):
    port = two_workers.port()
    config = tmp_path / "config.json"
    models = {"m": {"url": backend_process.url}, "added": {"url": backend_process.url}}
    write_config(config, {"listen": "127.0.0.1:0", "workers": 2, "models": models})
    two_workers.signal(signal.SIGHUP)
    two_workers.wait_for_line(r"\[worker 1\] config reloaded from .*: 2 model")
    two_workers.wait_for_line(r"\[worker 2\] config reloaded from .*: 2 model")
    statuses = []
    hit_until_both_serve(two_workers, lambda: statuses.extend([post_chat(port, "added")[0], post_chat(port)[0]]))
    assert set(statuses) == {200}

    # A broken file leaves every worker on the config it runs.
    config.write_text('{"models": {"m": {"url": "ftp://x"}}}')
    two_workers.signal(signal.SIGHUP)
    for worker in (1, 2):
        line = two_workers.wait_for_line(r"\[worker %d\] config not reloaded.*" % (worker,)).group(0)
        assert "models.m.url" in line
    assert {post_chat(port, "added")[0] for _ in range(10)} == {200}
    assert pid_alive(two_workers.pid)


def test_listen_change_on_reload_asks_for_a_restart(tmp_path, two_workers, backend_process):
    write_config(tmp_path / "config.json", {"listen": "127.0.0.1:1", "models": {"m": {"url": backend_process.url}}})
    two_workers.signal(signal.SIGHUP)
    line = two_workers.wait_for_line(r"\[worker 1\] listen and workers changed in .*").group(0)
    assert "restart" in line
    assert get(two_workers.port())[0] == 200


def test_a_worker_that_dies_is_restarted(two_workers):
    port = two_workers.port()
    first = worker_pid(two_workers)
    os.kill(first, signal.SIGKILL)
    two_workers.wait_for_line(r"worker 2 ended unexpectedly")
    second = int(two_workers.wait_for_line(r"started worker 2 \(pid (?!%d\))(\d+)\)" % (first,)).group(1))
    assert second != first
    two_workers.wait_for_line(r"\[worker 2\] llmhop listening on")
    statuses = []
    hit_until_both_serve(two_workers, lambda: statuses.append(post_chat(port)[0]))
    assert set(statuses) == {200}


def test_sigterm_to_every_process_at_once_stops_cleanly(two_workers):
    """systemd's default KillMode signals the whole group, then the first process forwards it too."""
    pid = worker_pid(two_workers)
    os.kill(pid, signal.SIGTERM)
    os.kill(two_workers.pid, signal.SIGTERM)
    assert two_workers.wait() == 0
    assert not pid_alive(pid)
    assert "Traceback" not in two_workers.output and "Unhandled" not in two_workers.output
    assert "restarting" not in two_workers.output or "worker 2 stopped" in two_workers.output


def test_workers_do_not_outlive_the_first_process(two_workers):
    pid = worker_pid(two_workers)
    os.kill(two_workers.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid))


def test_workers_flag_overrides_the_config(tmp_path, backend_process, processes):
    config = write_config(tmp_path / "c.json", {"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}})
    router = Router(config, argv=llmhop_command() + ["--config", str(config), "--workers", "3"])
    processes.append(router)
    for index in (2, 3):
        router.wait_for_line(r"\[worker %d\] llmhop listening on" % (index,))

    # The flag still holds on reload: an unchanged file changes nothing.
    router.signal(signal.SIGHUP)
    router.wait_for_line(r"\[worker 1\] config reloaded from")
    # A change that does need a restart: its warning comes after anything the first reload said.
    write_config(config, {"listen": "127.0.0.1:1", "models": {"m": {"url": backend_process.url}}})
    router.signal(signal.SIGHUP)
    warning = router.wait_for_line(r"\[worker 1\] (\S.*) changed in ").group(1)
    assert warning == "listen"
    assert not [line for line in router.lines if "workers changed" in line or "and workers" in line]


@pytest.mark.parametrize("value", ["0", "x"])
def test_bad_workers_flag(tmp_path, value):
    config = write_config(tmp_path / "c.json", {"models": {"m": {"url": "http://127.0.0.1:9"}}})
    result = subprocess.run(
        llmhop_command() + ["--config", str(config), "--workers", value],
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--workers" in result.stderr and "Traceback" not in result.stderr


def test_workers_on_a_unix_socket(tmp_path, start_router, backend_process):
    path = tmp_path / "llmhop.sock"
    router = start_router({"listen": "unix:%s" % (path,), "workers": 2, "models": {"m": {"url": backend_process.url}}})
    router.wait_for_line(r"\[worker 2\] llmhop listening on unix:")

    def send():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(rawhttp.request(b"POST", b"/v1/chat/completions", json.dumps({"model": "m"}).encode()))
            assert rawhttp.status(rawhttp.read_response(sock)) == 200

    hit_until_both_serve(router, send)


def test_workers_with_tls(tmp_path, start_router, backend_process):
    ca = ScratchCA()
    (tmp_path / "server.pem").write_bytes(ca.issue(["localhost"]))
    listen = "ssl:0:interface=127.0.0.1:privateKey=%s" % (tmp_path / "server.pem",)
    router = start_router({"listen": listen, "workers": 2, "models": {"m": {"url": backend_process.url}}})
    router.wait_for_line(r"\[worker 2\] llmhop listening on")
    port = router.port()
    context = ssl.create_default_context(cadata=ca.pem.decode())

    def send():
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps({"model": "m"}))
            response = conn.getresponse()
            assert response.status == 200 and response.read()
        finally:
            conn.close()

    hit_until_both_serve(router, send)


def test_workers_under_twistd_log_through_it(tmp_path, backend_process, processes):
    config = write_config(
        tmp_path / "config.json", {"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}}
    )
    router = Process(
        twistd_command() + ["-n", "--pidfile=", "llmhop", "--config", str(config), "--workers", "2"],
        cwd=str(tmp_path),
    )
    processes.append(router)
    port = int(router.wait_for_line(r"llmhop listening on (\S+)").group(1).rsplit(":", 1)[1])
    pid = worker_pid(router)
    # twistd prefixes its own lines with the logger's namespace, the workers' with their number.
    seen = set()

    def served():
        seen.add(post_chat(port)[0])
        return re.search(r"\[worker 2\] POST /v1/chat/completions model=m status=200", router.output)

    wait_for(served, timeout=20)
    assert seen == {200}
    router.signal(signal.SIGTERM)
    assert router.wait() in (0, -signal.SIGTERM)
    assert not pid_alive(pid)
    assert "Traceback" not in router.output


def test_workers_with_systemd_socket_activation(tmp_path, backend_process, processes):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(15)
    config = write_config(
        tmp_path / "config.json",
        {"listen": "systemd:domain=INET:index=0", "workers": 2, "models": {"m": {"url": backend_process.url}}},
    )
    router = Router(
        config,
        argv=socket_activated(listener, llmhop_command() + ["--config", str(config)]),
        pass_fds=(listener.fileno(),),
        environ=env(NOTIFY_SOCKET=notify_path),
    )
    processes.append(router)
    listener.close()
    with notify:
        assert notify.recv(100) == b"READY=1"
        router.wait_for_line(r"\[worker 2\] llmhop listening on 127.0.0.1:%d" % (port,))
        statuses = []
        hit_until_both_serve(router, lambda: statuses.append(post_chat(port)[0]))
        assert set(statuses) == {200}
        router.signal(signal.SIGTERM)
        # Only the first process talks to systemd.
        assert notify.recv(100) == b"STOPPING=1"
        assert router.wait() == 0
        notify.settimeout(0.5)
        with pytest.raises(socket.timeout):
            notify.recv(100)


def test_workers_flag_has_the_config_keys_bound(tmp_path):
    config = write_config(tmp_path / "c.json", {"models": {"m": {"url": "http://127.0.0.1:9"}}})
    result = subprocess.run(
        llmhop_command() + ["--config", str(config), "--workers", "1000"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr == "llmhop: --workers: at most 256\n"


def test_workers_flag_needs_a_shareable_listen(tmp_path):
    config = write_config(tmp_path / "c.json", {"listen": "onion:80", "models": {"m": {"url": "http://127.0.0.1:9"}}})
    result = subprocess.run(
        llmhop_command() + ["--config", str(config), "--workers", "2"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "--workers: several workers need" in result.stderr


def scrape_total(port, model="m", status="200"):
    from prometheus_client.parser import text_string_to_metric_families

    code, text = get(port, "/metrics")
    assert code == 200
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "llmhop_requests_total" and sample.labels == {
                "model": model,
                "status": status,
                "token": "",
            }:
                return sample.value
    return 0


def test_metrics_sum_every_worker_whichever_answers_the_scrape(start_router, backend_process, tmp_path):
    run = tmp_path / "run"  # as systemd's RuntimeDirectory= would give
    run.mkdir()
    router = start_router(
        {"listen": "127.0.0.1:0", "workers": 2, "models": {"m": {"url": backend_process.url}}},
        environ=env(RUNTIME_DIRECTORY=str(run)),
    )
    router.wait_for_line(r"\[worker 2\] llmhop listening on")
    port = router.port()
    statuses = []
    hit_until_both_serve(router, lambda: statuses.append(post_chat(port)[0]))
    assert set(statuses) == {200}
    # A process counts a request just after its last byte left, so under load
    # a scrape can come first: wait for the total, then every scrape, on
    # either process, must report it.
    wait_for(lambda: scrape_total(port) == len(statuses))
    totals = []

    def both_scraped():
        # A few at once, on new connections: which process accepts is the kernel's choice.
        threads = [threading.Thread(target=lambda: totals.append(scrape_total(port))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return all(re.search(r"\[worker %d\] GET /metrics" % (w,), router.output) for w in (1, 2))

    wait_for(both_scraped, timeout=20)
    assert set(totals) == {len(statuses)}

    # A worker that dies keeps its count; the restarted one adds to it.
    pid = worker_pid(router)
    os.kill(pid, signal.SIGKILL)
    router.wait_for_line(r"started worker 2 \(pid (?!%d\))\d+\)" % (pid,))
    router.wait_for_line(r"\[worker 2\] llmhop listening on")
    assert scrape_total(port) == len(statuses)
    assert len(os.listdir(run)) == 1
    router.signal(signal.SIGTERM)
    assert router.wait() == 0
    assert os.listdir(run) == []


def process_figures(conn):
    from prometheus_client.parser import text_string_to_metric_families

    conn.request("GET", "/metrics")
    response = conn.getresponse()
    text = response.read()
    assert response.status == 200
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name.startswith("process_")
    }


def test_process_metrics_with_workers_sum_the_live_processes(two_workers):
    port = two_workers.port()
    pids = [two_workers.pid, worker_pid(two_workers)]

    def rss(pid):
        with open("/proc/%d/statm" % (pid,)) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    # One connection, so one process answers every scrape: the other's
    # figures come from its own timer.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def summed():
        # Each process copies its own figures every few seconds: more than
        # any one process's memory once both have.
        figures = process_figures(conn)
        return figures if figures.get("process_resident_memory_bytes", 0) > max(rss(p) for p in pids) else None

    figures = wait_for(summed, timeout=20)
    conn.close()
    assert figures["process_open_fds"] > 0 and figures["process_cpu_seconds_total"] > 0
    assert figures["process_start_time_seconds"] > 0


def pinned_to(cpus):
    """A preexec_fn: the child may run on C{cpus} only (as taskset or systemd's CPUAffinity= would)."""

    def pin():
        os.sched_setaffinity(0, cpus)

    return pin


# PyPy 3.9 has no os.sched_getaffinity (llmhop then counts os.cpu_count()).
needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no os.sched_getaffinity here")


@needs_affinity
def test_workers_auto_starts_one_process_per_cpu_the_router_may_use(tmp_path, backend_process, processes):
    from llmhop.process import available_cpus

    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2 or available_cpus(affinity=2) < 2:
        pytest.skip("needs two CPUs free of a quota")
    path = write_config(
        tmp_path / "c.json", {"listen": "127.0.0.1:0", "workers": "auto", "models": {"m": {"url": backend_process.url}}}
    )
    router = Router(path, preexec_fn=pinned_to(allowed[:2]))
    processes.append(router)
    router.wait_for_line(r"\[worker 2\] llmhop listening on")
    port = router.port()
    hit_until_both_serve(router, lambda: post_chat(port))
    assert "worker 3" not in router.output


@needs_affinity
def test_workers_auto_on_one_cpu_is_one_process(tmp_path, backend_process, processes):
    path = write_config(tmp_path / "c.json", {"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}})
    router = Router(
        path,
        argv=llmhop_command() + ["--config", str(path), "--workers", "auto"],
        preexec_fn=pinned_to(sorted(os.sched_getaffinity(0))[:1]),
    )
    processes.append(router)
    assert post_chat(router.port())[0] == 200
    assert "worker" not in router.output
