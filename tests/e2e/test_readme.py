"""The README's quick start, run as a newcomer runs it: stub backend, llmhop, curl, the OpenAI SDK.

The commands are read from the README itself, so the first screen cannot
drift from what works. Only the virtualenv's path is taken from the Python
running the tests (the install step is what CI's README test command does).
"""

import pathlib
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest

from tests.e2e.procs import ROOT, Process, env, llmhop_command

README = (pathlib.Path(ROOT) / "README.md").read_text()
QUICK_START = README[README.index("## Quick start") : README.index("\n## ", README.index("## Quick start") + 1)]
BLOCKS = re.findall(r"```(sh|python)\n(.*?)```", QUICK_START, re.S)


def block(starting):
    """The first code block whose text starts with C{starting}."""
    return next(code for _, code in BLOCKS if code.startswith(starting))


def in_this_venv(command):
    """C{.venv/bin/X} as written, made this interpreter and the llmhop under test."""
    command = command.replace(".venv/bin/python", shlex.quote(sys.executable))
    return command.replace(".venv/bin/llmhop", " ".join(map(shlex.quote, llmhop_command())))


def port_taken(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_quick_start_as_written(processes):
    if port_taken(8000) or port_taken(8080):
        pytest.skip("the quick start's ports 8000 and 8080 are in use on this machine")
    assert [kind for kind, _ in BLOCKS] == ["sh", "sh", "sh", "sh", "python", "sh"]

    stub = block(".venv/bin/python examples/stub_backend.py")
    assert stub.strip().endswith("&")
    backend = Process(shlex.split(in_this_venv(stub.strip().rstrip("&"))))
    processes.append(backend)
    backend.wait_for_line(r"stub backend on http://127.0.0.1:8000")

    router = Process(shlex.split(in_this_venv(block(".venv/bin/llmhop").strip())))
    processes.append(router)
    router.wait_for_line(r"llmhop listening on 127.0.0.1:8080")

    if shutil.which("curl"):
        curl = subprocess.run(["sh", "-c", block("curl")], capture_output=True, text=True, timeout=30)
        assert curl.returncode == 0, curl.stderr
        events = [line for line in curl.stdout.splitlines() if line.startswith("data: ")]
        assert len(events) > 3 and events[-1] == "data: [DONE]"
        assert '"content": " there"' in curl.stdout
    else:
        pytest.fail("curl is not installed: .ci/run installs it")

    sdk = block("from openai import OpenAI")
    try:
        import openai  # noqa: F401
    except ImportError:
        return  # Debian's and PyPy's legs have no openai SDK; the PyPI leg runs this part
    result = subprocess.run([sys.executable, "-c", sdk], capture_output=True, text=True, env=env(), timeout=60)
    assert (result.returncode, result.stdout) == (0, "You said: Hello there\n"), result.stderr
    assert "Traceback" not in router.output
