"""A start that fails, and what ``--check`` sees first: one ``llmhop: …`` line naming the address and the fix."""

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile

import pytest

from tests.certs import ScratchCA
from tests.e2e.procs import Router, env, llmhop_command, twistd_command, write_config
from tests.e2e.test_cli import get

MODELS = {"m": {"url": "http://127.0.0.1:9"}}
IS_ROOT = os.geteuid() == 0


def run(argv, cwd=None, timeout=30):
    return subprocess.run(argv, env=env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def llmhop(*args, cwd=None):
    return run(llmhop_command() + list(args), cwd=cwd)


def one_line(result):
    """The one line a failed start printed: no log lines, no traceback."""
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("llmhop: "), result.stderr
    return result.stderr


def start(tmp_path, listen, *args):
    path = write_config(tmp_path / "c.json", {"listen": listen, "models": MODELS})
    return llmhop("--config", str(path), *args)


@contextlib.contextmanager
def port_taken():
    """A port another process (this one) listens on, for as long as the block lasts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        yield taken.getsockname()[1]


def test_port_in_use(tmp_path):
    with port_taken() as port:
        line = one_line(start(tmp_path, "127.0.0.1:%d" % (port,)))
    assert "listen tcp:%d:interface=127.0.0.1: cannot listen: address already in use;" % (port,) in line
    assert "choose another port" in line


def test_address_not_on_this_host(tmp_path):
    # TEST-NET-1 (RFC 5737): never an address of this host.
    line = one_line(start(tmp_path, "192.0.2.1:8080"))
    assert "interface=192.0.2.1: cannot listen: cannot assign requested address; no interface" in line


@pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"), reason="needs root to become an unprivileged user")
def test_privileged_port_as_an_unprivileged_user():
    # pytest's tmp_path lies under a directory only root may enter.
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o755)
        path = write_config(pathlib.Path(scratch, "c.json"), {"listen": "127.0.0.1:81", "models": MODELS})
        os.chmod(path, 0o644)
        argv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] + llmhop_command()
        line = one_line(run(argv + ["--config", str(path)], cwd="/"))
    assert "listen tcp:81:interface=127.0.0.1: cannot listen: permission denied; ports below 1024" in line
    assert "llmhop.socket" in line and "CAP_NET_BIND_SERVICE" in line


def test_unix_socket_in_a_missing_directory(tmp_path):
    listen = "unix:%s/nope/l.sock" % (tmp_path,)
    for args in ([], ["--check"]):
        line = one_line(start(tmp_path, listen, *args))
        assert "listen %s: directory %s/nope does not exist" % (listen, tmp_path) in line
        assert ".lock" not in line
    # Build machines have no such directory: --no-secrets checks the file alone.
    assert start(tmp_path, listen, "--check", "--no-secrets").returncode == 0


def test_tls_files_that_are_missing(tmp_path):
    listen = "ssl:0:interface=127.0.0.1:privateKey=%s/key.pem:certKey=%s/cert.pem" % (tmp_path, tmp_path)
    for args in ([], ["--check"]):
        line = one_line(start(tmp_path, listen, *args))
        assert "privateKey file %s/key.pem does not exist" % (tmp_path,) in line
    (tmp_path / "key.pem").write_text("x")
    line = one_line(start(tmp_path, listen, "--check"))
    assert "certKey file %s/cert.pem does not exist" % (tmp_path,) in line


def test_metrics_listen_is_checked_too(tmp_path):
    path = write_config(
        tmp_path / "c.json",
        {"listen": "127.0.0.1:0", "metrics": {"listen": "unix:/nonexistent-dir/m.sock"}, "models": MODELS},
    )
    for args in ([], ["--check"]):
        line = one_line(llmhop("--config", str(path), *args))
        assert line.startswith("llmhop: metrics.listen unix:/nonexistent-dir/m.sock: directory /nonexistent-dir")


def twistd(path, cwd):
    return run(twistd_command() + ["-n", "--pidfile=", "llmhop", "--config", str(path)], cwd=str(cwd))


def test_twistd_says_what_it_sees_before_binding_in_one_line(tmp_path):
    path = write_config(tmp_path / "c.json", {"listen": "unix:/nonexistent-dir/l.sock", "models": MODELS})
    line = one_line(twistd(path, tmp_path))
    assert line.startswith("llmhop: listen unix:/nonexistent-dir/l.sock: directory /nonexistent-dir does not exist")


def test_twistd_logs_a_failure_to_bind_in_one_line(tmp_path):
    with port_taken() as port:
        path = write_config(tmp_path / "c.json", {"listen": "127.0.0.1:%d" % (port,), "models": MODELS})
        result = twistd(path, tmp_path)
    errors = [line for line in result.stdout.splitlines() if "#error]" in line]
    assert len(errors) == 1, result.stdout
    assert "llmhop: listen tcp:%d:interface=127.0.0.1: cannot listen: address already in use;" % (port,) in errors[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.skipif(not IS_ROOT or not shutil.which("unshare"), reason="needs root to mount a read-only /tmp")
def test_workers_with_a_read_only_tmp(tmp_path):
    """The Kubernetes manifest's readOnlyRootFilesystem: no traceback, and /dev/shm or one line saying what to mount."""
    path = write_config(tmp_path / "c.json", {"listen": "127.0.0.1:0", "workers": 2, "models": MODELS})
    # A read-only bind of each on itself, in a mount namespace of the test's own: the config stays readable.
    read_only = "mount --bind {0} {0} && mount -o remount,bind,ro {0}".format
    script = read_only("/tmp") + ' && exec "$@"'
    no_shm = read_only("/tmp") + " && " + read_only("/dev/shm") + ' && exec "$@"'
    base = ["unshare", "--mount", "sh", "-c"]
    argv = llmhop_command() + ["--config", str(path)]
    environ = env(TMPDIR=None, RUNTIME_DIRECTORY=None)

    router = Router(path, argv=base + [script, "sh"] + argv, environ=environ)
    try:
        router.wait_for_line(r"\[worker 2\] llmhop listening on")
    finally:
        router.stop()
    assert "Traceback" not in router.output

    result = subprocess.run(base + [no_shm, "sh"] + argv, env=environ, capture_output=True, text=True, timeout=30)
    line = one_line(result)
    assert "workers: the processes share their metrics through a directory, and none is writable" in line
    assert "/tmp (Read-only file system), /dev/shm (Read-only file system)" in line and "emptyDir" in line


def test_a_backend_url_ending_in_v1_is_warned_about(tmp_path, start_router, backend_process):
    models = {"m": {"url": backend_process.url + "/v1/"}, "r": {"url": ["http://127.0.0.1:9", "http://127.0.0.1:8/v1"]}}
    path = write_config(tmp_path / "c.json", {"listen": "127.0.0.1:0", "models": models})
    result = llmhop("--config", str(path), "--check")
    assert result.returncode == 0 and "config OK (2 models)" in result.stdout
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines] == ["warning", "warning"]
    assert lines[0].startswith("llmhop: warning: models.m.url: %s/v1 ends in /v1" % (backend_process.url,))
    assert lines[1].startswith("llmhop: warning: models.r.url[1]: http://127.0.0.1:8/v1 ends in /v1")
    assert "/v1/v1/" in lines[0] and "drop the /v1" in lines[0]

    router = start_router({"listen": "127.0.0.1:0", "models": models})
    router.wait_for_line(r"\[llmhop.service#warn\] models.m.url: .* ends in /v1")
    # Only a warning: some APIs do live under such a prefix.
    assert get(router.port())[0] == 200


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("form", ["tcp", "all", "unix", "ssl"])
def test_healthcheck_follows_the_configured_address(tmp_path, form, processes):
    """The container's HEALTHCHECK: wherever the config listens, the check finds it."""
    port = free_port()
    listen = {
        "tcp": "127.0.0.1:%d" % (port,),
        "all": ":%d" % (port,),
        "unix": "unix:%s/l.sock" % (tmp_path,),
        "ssl": "ssl:%d:interface=127.0.0.1:privateKey=%s/server.pem" % (port, tmp_path),
    }[form]
    if form == "ssl":
        (tmp_path / "server.pem").write_bytes(ScratchCA().issue(["localhost"]))
    path = write_config(tmp_path / "c.json", {"listen": listen, "authTokens": ["${env:UNSET_HERE}"], "models": MODELS})
    down = llmhop("--healthcheck", "--config", str(path))
    assert one_line(down).startswith("llmhop: healthcheck: listen ")
    router = Router(path, environ=env(UNSET_HERE="a-real-token-9f3"))
    processes.append(router)
    router.address()
    # Without the secret: the address is all the check reads.
    up = llmhop("--healthcheck", "--config", str(path))
    assert (up.returncode, up.stdout, up.stderr) == (0, "", "")


def test_healthcheck_of_a_socket_systemd_passes(tmp_path):
    path = write_config(tmp_path / "c.json", {"listen": "systemd:domain=INET:index=0", "models": MODELS})
    assert "has no address to connect to" in one_line(llmhop("--healthcheck", "--config", str(path)))
