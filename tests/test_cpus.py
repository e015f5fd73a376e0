"""workers: "auto": how many CPUs this process may use (issue 20)."""

import pytest

from llmhop.process import available_cpus


def tree(tmp_path, membership, files):
    """A fake /proc/self/cgroup and cgroup filesystem under C{tmp_path}."""
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    root = tmp_path / "cgroup"
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    root.mkdir(exist_ok=True)
    return dict(proc_cgroup=str(proc), cgroup_root=str(root))


@pytest.mark.parametrize(
    "membership, files, affinity, expected",
    [
        # No limit anywhere: the CPUs the affinity mask allows.
        ("0::/system.slice/llmhop.service\n", {"system.slice/llmhop.service/cpu.max": "max 100000\n"}, 8, 8),
        # CPUQuota=200%: two CPUs of eight.
        ("0::/system.slice/llmhop.service\n", {"system.slice/llmhop.service/cpu.max": "200000 100000\n"}, 8, 2),
        # A fraction rounds up (Kubernetes "1500m"): two processes, not one.
        ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "150000 100000\n"}, 8, 2),
        # A parent's limit binds its children.
        (
            "0::/kubepods/pod1/c1\n",
            {"kubepods/cpu.max": "100000 100000\n", "kubepods/pod1/c1/cpu.max": "max 100000\n"},
            8,
            1,
        ),
        # A quota above the affinity mask: the mask.
        ("0::/a\n", {"a/cpu.max": "1600000 100000\n"}, 3, 3),
        # A container's own namespace: its cgroup is the root.
        ("0::/\n", {"cpu.max": "300000 100000\n"}, 8, 3),
        # cgroup v1: the cpu controller's quota and period.
        (
            "12:cpu,cpuacct:/docker/abc\n5:memory:/docker/abc\n",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            8,
            3,
        ),
        (
            "12:cpu,cpuacct:/x\n",
            {"cpu,cpuacct/x/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/x/cpu.cfs_period_us": "100000\n"},
            4,
            4,
        ),
        # Unreadable or odd files are no limit, and never fewer than one CPU.
        ("0::/a\n", {"a/cpu.max": "garbage\n"}, 2, 2),
        ("0::/a\n", {"a/cpu.max": "1000 100000\n"}, 2, 1),
        ("", {}, 4, 4),
    ],
)
def test_available_cpus_honours_the_affinity_mask_and_the_cgroup_quota(tmp_path, membership, files, affinity, expected):
    assert available_cpus(affinity=affinity, **tree(tmp_path, membership, files)) == expected


def test_without_a_proc_file_the_affinity_mask_decides(tmp_path):
    missing = str(tmp_path / "absent")
    assert available_cpus(affinity=5, proc_cgroup=missing, cgroup_root=missing) == 5


def test_on_this_machine_it_is_between_one_and_the_cpu_count():
    import os

    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_workers_auto_in_the_config_is_one_process_per_available_cpu(monkeypatch):
    from llmhop import config as configlib

    monkeypatch.setattr(configlib, "available_cpus", lambda: 3)
    config = configlib.parse({"workers": "auto", "models": {"m": {"url": "http://h"}}}, {})
    assert config.workers == 3
    assert configlib.with_workers(configlib.parse({"models": {"m": {"url": "http://h"}}}, {}), "auto").workers == 3


def test_workers_auto_with_a_listen_form_workers_cannot_share_is_refused_only_when_it_means_several(monkeypatch):
    from llmhop import config as configlib
    from llmhop.errors import ConfigError

    document = {"workers": "auto", "listen": "onion:80", "models": {"m": {"url": "http://h"}}}
    monkeypatch.setattr(configlib, "available_cpus", lambda: 1)
    assert configlib.parse(document, {}).workers == 1
    monkeypatch.setattr(configlib, "available_cpus", lambda: 2)
    with pytest.raises(ConfigError, match="^workers: several workers need a listen form they can share"):
        configlib.parse(document, {})


@pytest.mark.parametrize("value", ["Auto", "2", "", "all"])
def test_other_strings_are_refused_naming_auto(value):
    from llmhop import config as configlib
    from llmhop.errors import ConfigError

    with pytest.raises(ConfigError, match='^workers: expected a positive integer or "auto"'):
        configlib.parse({"workers": value, "models": {"m": {"url": "http://h"}}}, {})


def test_the_command_line_and_twistd_take_auto():
    from llmhop import cli
    from llmhop.service import Options

    assert cli.parse_args(["--config", "c.json", "--workers", "auto"]).workers == "auto"
    assert cli.parse_args(["--config", "c.json", "--workers", "3"]).workers == 3
    options = Options()
    options.parseOptions(["--config", "c.json", "--workers", "auto"])
    assert options["workers"] == "auto"


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_the_command_line_refuses_other_values(value, capsys):
    from llmhop import cli

    with pytest.raises(SystemExit):
        cli.parse_args(["--config", "c.json", "--workers", value])
    assert 'at least 1, or "auto"' in capsys.readouterr().err


def test_the_schema_takes_auto():
    import json

    jsonschema = pytest.importorskip("jsonschema")  # not in the PyPy leg's packages

    from llmhop import config as configlib

    schema = json.loads(configlib.schema_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"workers": "auto", "models": {"m": {"url": "http://h"}}})
    assert not validator.is_valid({"workers": "Auto", "models": {"m": {"url": "http://h"}}})
    assert schema["properties"]["workers"]["default"] == 1
