"""SPEC §5, load: the listening socket takes a burst of thousands of connections."""

import shutil
import subprocess

import pytest

from llmhop.listening import DEFAULT_BACKLOG, with_backlog
from tests.e2e.procs import Router, write_config


def somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


def test_listen_forms_that_take_a_backlog_get_one(tmp_path):
    limit = tmp_path / "somaxconn"
    limit.write_text("4096\n")
    assert with_backlog("tcp:8080:interface=127.0.0.1", str(limit)) == "tcp:8080:interface=127.0.0.1:backlog=1024"
    assert with_backlog("unix:/run/llmhop.sock", str(limit)) == "unix:/run/llmhop.sock:backlog=1024"
    assert with_backlog("tcp:8080:backlog=7", str(limit)) == "tcp:8080:backlog=7"
    assert with_backlog("systemd:domain=INET:index=0", str(limit)) == "systemd:domain=INET:index=0"
    limit.write_text("128\n")
    assert with_backlog("tcp6:8080", str(limit)) == "tcp6:8080:backlog=128"


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read a socket's backlog")
def test_the_router_listens_with_a_backlog_of_1024_or_somaxconn(tmp_path):
    config = write_config(
        tmp_path / "config.json", {"listen": "127.0.0.1:0", "models": {"m": {"url": "http://127.0.0.1:9"}}}
    )
    router = Router(config)
    try:
        port = router.port()
        # For a listening socket, ss shows the backlog as Send-Q.
        out = subprocess.run(
            ["ss", "-ltnH", "sport = :%d" % (port,)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert int(out[2]) == min(DEFAULT_BACKLOG, somaxconn()), out
    finally:
        router.stop()
