"""What the packages declare matches what llmhop imports: setup.cfg, debian/control, nix/package.nix."""

import os
import pkgutil
import re
import subprocess
import sys

import llmhop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_ONLY = ("treq", "h11", "hypothesis", "pytest", "openai", "jsonschema")


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def test_llmhop_imports_no_test_dependency():
    modules = ["llmhop." + m.name for m in pkgutil.iter_modules(llmhop.__path__) if m.name != "__main__"]
    code = "import sys\n%s\nprint(' '.join(sorted(m.split('.')[0] for m in sys.modules)))" % (
        "\n".join("import " + m for m in modules)
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [name for name in TEST_ONLY if name in loaded] == []


def test_every_package_declares_the_same_runtime_dependencies():
    setup = read("setup.cfg")
    requires = setup.split("install_requires =", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[0] for line in requires.split("\n") if line.strip()] == [
        "Twisted[tls]",
        "attrs",
        "prometheus_client",
    ]
    depends = read("packaging", "debian", "control").split("\nDepends:", 1)[1].split("\nDescription:", 1)[0]
    debian = set(re.findall(r"python3-[a-z-]+", depends))
    assert debian == {
        "python3-twisted",
        "python3-attr",
        "python3-prometheus-client",
        "python3-openssl",
        "python3-service-identity",
        "python3-idna",
    }
    nix = read("nix", "package.nix").split("dependencies =", 1)[1].split("nativeCheckInputs", 1)[0]
    assert re.findall(r"^\s+([a-z-]+)$", nix, re.M) == ["twisted", "attrs", "prometheus-client"]


def test_the_packaged_config_uses_every_cpu_and_passes_the_check():
    """The Debian package and the container (which installs it) run one process per CPU (issue 20)."""
    import json

    from llmhop import config as configlib

    path = os.path.join(ROOT, "packaging", "debian", "config.json")
    assert json.loads(read("packaging", "debian", "config.json"))["workers"] == "auto"
    assert configlib.load(path).workers >= 1
