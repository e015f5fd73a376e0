"""What llmhop asks of the process and the system around it: systemd, the open-file limit, addresses.

Kept apart from L{llmhop.service}, which wires the router together: these
talk to the operating system, not to the request path.
"""

import math
import os
import posixpath
import resource
import socket
from collections.abc import Iterator, Mapping
from typing import Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

_log = Logger()


def raise_open_file_limit() -> None:
    """Take the hard limit on open files, as Go programs do: every open stream costs two."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            _log.warn("cannot raise the open-file limit from {soft}: {error}", soft=soft, error=e)


def sd_notify(state: bytes, environ: Mapping[str, str] = os.environ) -> None:
    """Tell systemd (Type=notify) about C{state}, if it asked to be told."""
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state)
    except OSError as e:
        _log.warn("cannot notify systemd at NOTIFY_SOCKET: {error}", error=e)


def describe_address(address: IAddress) -> str:
    """An address as llmhop's log lines show it: [::1]:8080, 127.0.0.1:8080, unix:/run/llmhop.sock."""
    if isinstance(address, IPv6Address):
        return "[%s]:%d" % (address.host, address.port)
    if isinstance(address, IPv4Address):
        return "%s:%d" % (address.host, address.port)
    name = getattr(address, "name", "?")
    return "unix:%s" % (name.decode("utf-8", "replace") if isinstance(name, bytes) else name,)


def available_cpus(
    affinity: Optional[int] = None,
    proc_cgroup: str = "/proc/self/cgroup",
    cgroup_root: str = "/sys/fs/cgroup",
) -> int:
    """How many CPUs this process may keep busy: C{workers: "auto"} (issue 20).

    The CPUs its affinity mask allows (taskset, systemd's CPUAffinity=,
    Kubernetes' static CPU manager), fewer if a CPU quota binds it or a
    parent cgroup (systemd's CPUQuota=, a container's CPU limit), a fraction
    rounded up; at least one.
    """
    if affinity is None:
        affinity = _affinity()
    quotas = [q for q in _cgroup_quotas(proc_cgroup, cgroup_root) if q is not None]
    limit = math.ceil(min(quotas)) if quotas else affinity
    return max(1, min(affinity, limit))


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cgroup_quotas(proc_cgroup: str, cgroup_root: str) -> Iterator[Optional[float]]:
    """The CPU quota (in CPUs) of this process's cgroup and each of its parents; None where there is none."""
    try:
        with open(proc_cgroup) as f:
            membership = f.read().splitlines()
    except OSError:
        return
    for line in membership:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2: one unified hierarchy
            for directory in _up_from(cgroup_root, path):
                yield _v2_quota(directory)
        elif "cpu" in controllers.split(","):
            for directory in _up_from(posixpath.join(cgroup_root, controllers), path):
                yield _v1_quota(directory)


def _up_from(root: str, path: str) -> Iterator[str]:
    """C{root}/C{path}, then each parent directory up to C{root}."""
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        yield posixpath.join(root, *parts[:depth])


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _v2_quota(directory: str) -> Optional[float]:
    """C{cpu.max}: C{"max 100000"} (no limit) or C{"200000 100000"} (two CPUs)."""
    fields = (_read(posixpath.join(directory, "cpu.max")) or "").split()
    if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit() and int(fields[1]):
        return int(fields[0]) / int(fields[1])
    return None


def _v1_quota(directory: str) -> Optional[float]:
    """C{cpu.cfs_quota_us} (-1: no limit) over C{cpu.cfs_period_us}."""
    quota = _read(posixpath.join(directory, "cpu.cfs_quota_us")) or ""
    period = _read(posixpath.join(directory, "cpu.cfs_period_us")) or ""
    if quota.isdigit() and period.isdigit() and int(period):
        return int(quota) / int(period)
    return None
