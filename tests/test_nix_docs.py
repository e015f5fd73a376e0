"""docs/nixos.md and the generated options reference agree.

nix/options.md is generated from the module (nix/options_md.py; `.ci/run`
checks that it is current when the Nix inputs are there). These tests need no
Nix: they hold docs/nixos.md to that reference.
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
OPTION_HEADING = re.compile(r"^## `(services\.llmhop\.[^`]+)`$", re.MULTILINE)
MENTION = re.compile(r"services\.llmhop(?:\.[A-Za-z0-9_<>-]+)*")


def documented():
    return set(OPTION_HEADING.findall((ROOT / "nix" / "options.md").read_text()))


def nixos_section():
    return (ROOT / "docs" / "nixos.md").read_text()


def test_the_reference_documents_the_module():
    options = documented()
    assert "services.llmhop.enable" in options
    for kind in ("llama-cpp", "sglang", "vllm"):
        assert "services.llmhop.%s.models.<name>.port" % (kind,) in options


def test_every_option_the_docs_name_exists():
    options = documented()
    for name in set(MENTION.findall(nixos_section())):
        assert any(option == name or option.startswith(name + ".") for option in options), name


def test_the_docs_name_every_option():
    """Each option's own name appears, in backticks, in the docs' summary."""
    section = nixos_section()
    words = set(re.findall(r"[A-Za-z][A-Za-z0-9-]*", " ".join(re.findall(r"`([^`]*)`", section))))
    missing = sorted(
        name for name in documented() if name.rsplit(".", 1)[1] not in words and name.rsplit(".", 1)[1] != "<name>"
    )
    assert missing == []
