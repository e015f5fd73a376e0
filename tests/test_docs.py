"""The README and docs/ stay true: links, config keys, flags, metrics, dependencies, quoted errors.

The README's quick start itself is run, literally, by tests/e2e/test_readme.py.
"""

import argparse
import json
import pathlib
import re

import pytest

from llmhop import cli, config as configlib
from llmhop.errors import ConfigError
from llmhop.metrics import Metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md"] + DOCS
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
SCHEMA = json.loads(configlib.schema_text())


def text(path):
    return path.read_text()


def test_the_readme_links_every_docs_page():
    linked = {target for target in LINK.findall(text(ROOT / "README.md")) if target.startswith("docs/")}
    assert linked == {"docs/" + page.name for page in DOCS}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in LINK.findall(text(page)):
        if "://" not in target:
            assert (page.parent / target).exists(), "%s links to %s" % (page.name, target)


def schema_keys():
    top = SCHEMA["properties"]
    nested = ("timeouts", "metrics", "cors", "accessLog")
    keys = set(top) - set(nested)
    for name in nested:
        keys |= {name + "." + k for k in top[name]["properties"]}
    keys |= {"models.*." + k for k in SCHEMA["$defs"]["model"]["properties"]}
    return keys


def test_the_configuration_table_has_every_key_and_no_other():
    rows = re.findall(r"^\| `([^`]+)` \|", text(ROOT / "docs" / "configuration.md"), re.M)
    assert set(rows) == schema_keys()


def config_blocks():
    for page in PAGES:
        for block in re.findall(r"```json\n(.*?)```", text(page), re.S):
            document = json.loads(block)
            if "models" in document:
                yield page.name, document


@pytest.mark.parametrize("page, document", list(config_blocks()))
def test_every_config_shown_is_one_llmhop_accepts(page, document):
    configlib.parse(document, {}, resolve=False)


def test_quoted_config_errors_are_what_llmhop_says():
    quoted = set()
    for page in PAGES:
        quoted |= set(re.findall(r"llmhop: config error: ([^`\n]+)", text(page)))
    assert quoted
    for line in quoted:
        place, message = line.split(": ", 1)
        assert message in (ROOT / "llmhop" / "config.py").read_text(), line
    # The one every page quotes, produced.
    with pytest.raises(ConfigError) as raised:
        configlib.parse({"models": {"gpt-4o": {"url": "ftp://api.openai.com"}}}, {})
    assert str(raised.value) in quoted


def test_every_command_line_flag_is_documented_and_every_documented_one_exists():
    parser_flags = set()
    for action in cli.build_parser()._actions:  # argparse has no public list of its options
        if action.help != argparse.SUPPRESS:
            parser_flags |= {flag for flag in action.option_strings if flag.startswith("--")}
    parser_flags -= {"--help"}
    operations = text(ROOT / "docs" / "operations.md")
    documented = set(re.findall(r"`(?:llmhop|twistd[^`]*llmhop)[^`]*?(--[a-z-]+)", operations))
    documented |= set(re.findall(r"`(--[a-z-]+)", operations))
    assert parser_flags <= documented
    from llmhop.service import Options

    twistd_flags = {"--" + o[0] for o in Options.optParameters + Options.optFlags}
    from llmhop import notify

    notify_flags = {flag for action in notify.build_parser()._actions for flag in action.option_strings}
    twistd_own = {"--pidfile", "--logfile", "--syslog", "--uid", "--gid"}
    assert documented <= parser_flags | twistd_flags | twistd_own | notify_flags


def test_every_notify_flag_is_documented():
    from llmhop import notify

    flags = {flag for action in notify.build_parser()._actions for flag in action.option_strings}
    section = text(ROOT / "docs" / "operations.md").split("## Readiness of model servers", 1)[1].split("\n## ", 1)[0]
    assert flags - {"-h", "--help"} <= set(re.findall(r"`(--[a-z-]+)", section))


def test_the_metrics_table_names_every_metric():
    table = set(re.findall(r"`(llmhop_[a-z_]+)`", text(ROOT / "docs" / "observability.md")))
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in Metrics().registry.collect()
        if family.name.startswith("llmhop_")
    }
    assert table == exported


def test_the_debian_dependencies_are_listed_as_the_package_declares_them():
    control = text(ROOT / "packaging" / "debian" / "control").split("\nDepends:", 1)[1].split("\nDescription:")[0]
    declared = set(re.findall(r"python3-[a-z-]+", control))
    deploy = text(ROOT / "docs" / "deploy.md")
    sentence = deploy[deploy.index("The package depends on") :].split("and installs", 1)[0]
    assert set(re.findall(r"`(python3-[a-z-]+)`", sentence)) == declared


def test_no_placeholder_is_left_for_the_reader_to_guess():
    for path in PAGES + [ROOT / "nix" / "default.nix", ROOT / "flake.nix"]:
        assert "OWNER" not in text(path), path.name
