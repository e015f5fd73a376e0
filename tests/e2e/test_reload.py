"""SIGHUP: the config is read again; streams under way finish on the routes they started with."""

import hashlib
import json
import signal
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests import rawhttp
from tests.e2e.procs import Process, Router, llmhop_command, twistd_command, write_config
from tests.e2e.test_cli import get, post_chat
from tests.test_watch import Mount


def open_stream(port, model="m", n=40, interval=0.05):
    """Start a streamed completion; returns the socket once its first event arrived."""
    body = json.dumps({"model": model, "stream": True, "script": {"kind": "sse", "n": n, "interval": interval}})
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body.encode())
    )
    rawhttp.read_until(sock, b"data: {")
    return sock


def test_a_stream_finishes_on_the_old_route_while_new_requests_take_the_new_ones(
    tmp_path, start_router, backend_process, processes
):
    router = start_router({"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}})
    port = router.port()
    sock = open_stream(port)
    try:
        write_config(tmp_path / "config.json", {"listen": "127.0.0.1:0", "models": {"n": {"url": backend_process.url}}})
        router.signal(signal.SIGHUP)
        router.wait_for_line(r"config reloaded from .*: 1 model")
        assert post_chat(port, "m")[0] == 404
        assert post_chat(port, "n")[0] == 200
        assert rawhttp.read_all(sock, timeout=10).endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    finally:
        sock.close()


def test_a_bad_config_on_reload_keeps_the_running_one_with_one_line(tmp_path, start_router, backend_process):
    router = start_router({"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}})
    port = router.port()
    (tmp_path / "config.json").write_text('{"models": {"m": {"url": ["http://127.0.0.1:1", 7]}}}')
    router.signal(signal.SIGHUP)
    line = router.wait_for_line(r"config not reloaded, the running one stays: .*").group(0)
    assert "models.m.url[1]: expected a string" in line
    assert post_chat(port)[0] == 200
    assert "Traceback" not in router.output


def test_reload_under_twistd(tmp_path, backend_process, processes):
    config = write_config(
        tmp_path / "config.json", {"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}}
    )
    router = Process(twistd_command() + ["-n", "--pidfile=", "llmhop", "--config", str(config)], cwd=str(tmp_path))
    processes.append(router)
    port = int(router.wait_for_line(r"llmhop listening on (\S+)").group(1).rsplit(":", 1)[1])
    write_config(
        config,
        {
            "listen": "127.0.0.1:0",
            "models": {"m": {"url": backend_process.url, "model": "renamed"}, "n": {"url": backend_process.url}},
        },
    )
    router.signal(signal.SIGHUP)
    router.wait_for_line(r"config reloaded from .*: 2 model")
    status, body = post_chat(port, "m")
    assert status == 200
    assert json.loads(body)["sha256"] == hashlib.sha256(b'{"model": "renamed"}').hexdigest()
    assert (
        get(port, "/v1/models")[1]
        == json.dumps(
            {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "llmhop"} for n in "mn"]}
        ).encode()
    )


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_on_a_listen_address_of_their_own(start_router, backend_process):
    router = start_router(
        {
            "listen": "127.0.0.1:0",
            "authTokens": ["tok"],
            "metrics": {"listen": "127.0.0.1:0"},
            "models": {"m": {"url": backend_process.url}},
        }
    )
    metrics_url = router.wait_for_line(r"metrics at (http://\S+/metrics)").group(1)
    port = router.port()
    assert post_chat(port, headers={"Authorization": "Bearer tok"})[0] == 200
    samples = scrape(metrics_url)  # no token needed there
    assert samples[("llmhop_requests_total", (("model", "m"), ("status", "200"), ("token", "token-0")))] == 1
    # Not on the main port any more: /metrics there is an ordinary (unroutable) request.
    assert get(port, "/metrics", headers={"Authorization": "Bearer tok"})[0] == 400


def test_watch_config_follows_a_configmap_swap(tmp_path, backend_process, processes):
    """What the Kubernetes manifest runs: the ConfigMap mounted as a directory, --watch-config, workers."""
    settings = {"listen": "127.0.0.1:0", "workers": 2, "models": {"m": {"url": backend_process.url}}}
    mount = Mount(str(tmp_path))
    mount.publish(json.dumps(settings))
    router = Router(mount.path, argv=llmhop_command() + ["--config", mount.path, "--watch-config"])
    processes.append(router)
    port = router.port()
    router.wait_for_line(r"\[worker 2\] llmhop listening on")
    assert post_chat(port, "added")[0] == 404

    settings["models"]["added"] = {"url": backend_process.url}
    mount.publish(json.dumps(settings))
    router.wait_for_line(r"\[worker 1\] .*config.json changed: reloading")
    for worker in (1, 2):
        router.wait_for_line(r"\[worker %d\] config reloaded from .*: 2 models" % (worker,))
    assert {post_chat(port, "added")[0] for _ in range(6)} == {200}
    assert len([line for line in router.output.splitlines() if "changed: reloading" in line]) == 1


def test_replica_health_survives_a_reload(tmp_path, start_router, backend_process):
    """What the health checks learnt is kept per replica URL: a reload does not bring a down replica back."""
    check = {"interval": 30, "failures": 1}
    settings = {"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url, "healthCheck": check}}}
    assert get(backend_process.port, "/_health/503")[0] == 200
    router = start_router(settings)
    port = router.port()

    def replicas():
        return json.loads(get(port, "/status")[1])["routes"]

    router.wait_for_line("is down after 1 failed health check")
    assert post_chat(port)[0] == 503
    # Healthy again, but the next probe is 30 s away: only the state kept
    # across the reload can still say "down" (a fresh one would say "up").
    assert get(backend_process.port, "/_health/200")[0] == 200
    settings["models"]["n"] = {"url": backend_process.url}
    write_config(tmp_path / "config.json", settings)
    router.signal(signal.SIGHUP)
    router.wait_for_line(r"config reloaded from .*: 2 model")
    assert replicas()["m"]["replicas"][0]["state"] == "down"
    assert replicas()["n"]["replicas"][0]["state"] == "down"  # the same URL
    assert post_chat(port)[0] == 503
