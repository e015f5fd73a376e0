"""``twistd llmhop``: the plugin, foreground and daemon mode, and the built wheel."""

import glob
import os
import signal
import subprocess
import sys
import zipfile

import pytest

from tests.e2e.procs import ROOT, Process, env, pid_alive, twistd_command, wait_for, write_config
from tests.e2e.test_cli import get, post_chat


def test_twistd_lists_the_plugin():
    result = subprocess.run(twistd_command() + ["--help"], env=env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert any(line.split()[:1] == ["llmhop"] for line in result.stdout.splitlines()), result.stdout


def test_twistd_plugin_help_documents_config():
    result = subprocess.run(
        twistd_command() + ["llmhop", "--help"], env=env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "--config" in result.stdout


def test_twistd_foreground_serves_and_stops_on_sigterm(tmp_path, backend_process, processes):
    config = write_config(
        tmp_path / "config.json", {"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}}
    )
    router = Process(twistd_command() + ["-n", "--pidfile=", "llmhop", "--config", str(config)], cwd=str(tmp_path))
    processes.append(router)
    address = router.wait_for_line(r"llmhop listening on (\S+)").group(1)
    port = int(address.rsplit(":", 1)[1])
    assert get(port)[0] == 200
    assert post_chat(port)[0] == 200
    router.wait_for_line(r"POST /v1/chat/completions model=m status=200")
    router.signal(signal.SIGTERM)
    # twistd ends by re-raising the signal that stopped it (systemd counts
    # that as a clean stop); what matters is that it stopped by itself.
    assert router.wait() in (0, -signal.SIGTERM)
    assert "Traceback" not in router.output


def test_twistd_daemon_with_pidfile_and_logfile(tmp_path, backend_process):
    config = write_config(
        tmp_path / "config.json", {"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}}
    )
    pidfile, logfile = tmp_path / "llmhop.pid", tmp_path / "llmhop.log"
    result = subprocess.run(
        twistd_command() + ["--pidfile", str(pidfile), "--logfile", str(logfile), "llmhop", "--config", str(config)],
        env=env(),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()))
    try:
        line = wait_for(
            lambda: logfile.exists() and "llmhop listening on" in logfile.read_text() and logfile.read_text()
        )
        port = int(line.split("llmhop listening on ")[1].split()[0].rsplit(":", 1)[1])
        assert get(port)[0] == 200
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid))
    assert not pidfile.exists()


def test_twistd_bad_config_is_one_line(tmp_path):
    config = write_config(tmp_path / "config.json", {"models": {"m": {"url": "nope"}}})
    result = subprocess.run(
        twistd_command() + ["-n", "--pidfile=", "llmhop", "--config", str(config)],
        env=env(),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "llmhop: config error: models.m.url: not an absolute http://, https:// or unix: URL"


def test_twistd_check_validates_without_starting(tmp_path):
    def check(settings, *flags):
        config = write_config(tmp_path / "config.json", settings)
        return subprocess.run(
            twistd_command() + ["llmhop", "--check", *flags, "--config", str(config)],
            env=env(),
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )

    good = {"listen": "127.0.0.1:0", "models": {"m": {"url": "http://127.0.0.1:9"}}}
    result = check(good)
    assert (result.returncode, result.stdout.strip()) == (
        0,
        "llmhop: %s: config OK (1 model)" % (tmp_path / "config.json",),
    )
    assert not (tmp_path / "twistd.pid").exists() and not (tmp_path / "twistd.log").exists()
    result = check({"models": {"m": {"url": "nope"}}})
    assert (result.returncode, result.stderr.count("\n")) == (1, 1) and "models.m.url" in result.stderr
    with_secret = dict(good, authTokens=["${env:NOT_SET_ANYWHERE}"])
    assert check(with_secret).returncode == 1
    assert check(with_secret, "--no-secrets").returncode == 0


def test_wheel_ships_the_plugin_and_the_console_script(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), ROOT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and "No module named pip" in result.stderr:
        pytest.skip("pip is not available for %s" % (sys.executable,))
    assert result.returncode == 0, result.stderr
    (wheel,) = glob.glob(str(tmp_path / "llmhop-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/llmhop_plugin.py" in names
    # Twisted's own namespace must not be shadowed by the wheel.
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "llmhop/proxy.py" in names
    # llmhop --print-schema reads it from the package.
    assert "llmhop/config.schema.json" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "llmhop = llmhop.cli:run" in entry_points


def readable_by_others(path):
    """Whether every directory down to C{path} lets other users in."""
    while path != os.path.dirname(path):
        if not os.stat(path).st_mode & 0o001:
            return False
        path = os.path.dirname(path)
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
@pytest.mark.skipif(
    not readable_by_others(os.path.dirname(os.__file__)),
    reason="this interpreter's standard library is not readable once privileges are dropped",
)
def test_twistd_binds_then_drops_privileges(tmp_path, backend_process, processes):
    config = write_config(
        tmp_path / "config.json", {"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}}
    )
    router = Process(
        twistd_command() + ["-n", "--pidfile=", "--uid=65534", "--gid=65534", "llmhop", "--config", str(config)],
        cwd=str(tmp_path),
    )
    processes.append(router)
    port = int(router.wait_for_line(r"llmhop listening on (\S+)").group(1).rsplit(":", 1)[1])
    assert post_chat(port)[0] == 200
    with open("/proc/%d/status" % (router.pid,)) as proc_status:
        status = proc_status.read()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["65534"] * 4
