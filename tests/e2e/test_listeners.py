"""Several listeners (SPEC §7): a listen list, every socket systemd passes, with workers and twistd."""

import json
import re
import socket

import pytest

from tests import rawhttp
from tests.e2e.procs import Process, Router, llmhop_command, socket_activated, twistd_command, wait_for, write_config
from tests.e2e.test_workers import hit_until_both_serve


def post_over(sock):
    sock.settimeout(10)
    sock.sendall(rawhttp.request(b"POST", b"/v1/chat/completions", json.dumps({"model": "m"}).encode()))
    return rawhttp.status(rawhttp.read_response(sock))


def over_tcp(port):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        return post_over(sock)


def over_unix(path):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        return post_over(sock)


def listening_on(router, pattern):
    return [m.group(1) for m in re.finditer(pattern, router.output)]


def tcp_port(router):
    address = router.wait_for_line(r"llmhop listening on (127\.0\.0\.1:\d+)").group(1)
    return int(address.rsplit(":", 1)[1])


def test_a_listen_list_is_served_on_every_address_by_every_worker(tmp_path, start_router, backend_process):
    path = tmp_path / "llmhop.sock"
    settings = {
        "listen": ["127.0.0.1:0", "unix:%s" % (path,)],
        "workers": 2,
        "models": {"m": {"url": backend_process.url}},
    }
    router = start_router(settings)
    router.wait_for_line(r"\[worker 2\] llmhop listening on unix:")
    router.wait_for_line(r"\[worker 2\] llmhop listening on 127\.0\.0\.1:")
    port = tcp_port(router)
    statuses = []
    hit_until_both_serve(router, lambda: statuses.append(over_unix(path)))
    hit_until_both_serve(router, lambda: statuses.append(over_tcp(port)))
    assert set(statuses) == {200}


def test_every_socket_systemd_passes_is_served(tmp_path, backend_process, processes):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(64)
    port = tcp.getsockname()[1]
    path = tmp_path / "llmhop.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(path))
    unix.listen(64)
    config = write_config(
        tmp_path / "config.json", {"listen": "systemd", "workers": 2, "models": {"m": {"url": backend_process.url}}}
    )
    router = Router(
        config,
        argv=socket_activated([tcp, unix], llmhop_command() + ["--config", str(config)]),
        pass_fds=(tcp.fileno(), unix.fileno()),
    )
    processes.append(router)
    tcp.close()
    unix.close()
    router.wait_for_line(r"\[worker 2\] llmhop listening on unix:%s" % (re.escape(str(path)),))
    router.wait_for_line(r"\[worker 2\] llmhop listening on 127\.0\.0\.1:%d" % (port,))
    statuses = []
    hit_until_both_serve(router, lambda: statuses.append(over_unix(path)))
    hit_until_both_serve(router, lambda: statuses.append(over_tcp(port)))
    assert set(statuses) == {200}


def test_systemd_without_sockets_is_one_line(tmp_path, processes):
    config = write_config(tmp_path / "config.json", {"listen": ["systemd"], "models": {"m": {"url": "http://h"}}})
    router = Router(config)
    processes.append(router)
    assert router.wait() == 1
    assert router.output.strip().splitlines()[-1] == (
        "llmhop: listen systemd: systemd passed no socket (LISTEN_FDS is unset or not for this process): "
        "start llmhop through its socket unit, or listen on an address"
    )


def test_an_address_that_cannot_be_bound_names_its_entry(tmp_path, processes):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    with taken:
        config = write_config(
            tmp_path / "config.json",
            {"listen": ["127.0.0.1:0", "127.0.0.1:%d" % (port,)], "models": {"m": {"url": "http://h"}}},
        )
        router = Router(config)
        processes.append(router)
        assert router.wait() == 1
    last = router.output.strip().splitlines()[-1]
    assert last.startswith("llmhop: listen[1] tcp:%d:interface=127.0.0.1" % (port,)), last
    assert "Traceback" not in router.output


@pytest.mark.parametrize("workers", [1, 2])
def test_twistd_serves_a_listen_list(tmp_path, backend_process, processes, workers):
    path = tmp_path / "llmhop.sock"
    config = write_config(
        tmp_path / "config.json",
        {
            "listen": ["127.0.0.1:0", "unix:%s" % (path,)],
            "workers": workers,
            "models": {"m": {"url": backend_process.url}},
        },
    )
    router = Process(twistd_command() + ["-n", "--pidfile=", "llmhop", "--config", str(config)], cwd=str(tmp_path))
    processes.append(router)
    router.wait_for_line(r"llmhop listening on unix:")
    port = tcp_port(router)
    assert wait_for(lambda: over_unix(path) == 200 and over_tcp(port) == 200)
