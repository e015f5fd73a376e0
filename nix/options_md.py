"""Write the services.llmhop options reference (nix/options.md) from the JSON
that nix/tests/options.nix evaluates to.

    nix-instantiate --eval --strict --json nix/tests/options.nix \\
        --arg lib PATH --arg quadlet-nix PATH | python3 nix/options_md.py > nix/options.md

Exits 1, naming them, when an option has no description, or no example where
its type leaves one to be guessed (anything but a boolean, an enum, or an
option whose default says it all).
"""

import json
import sys

HEADER = """\
# NixOS options: `services.llmhop`

Generated from the module's own documentation by `nix/options_md.py` (see
the README, "NixOS"); do not edit by hand. Options that hold no example take
the default shown.
"""

# Types whose every value is obvious from the type and the default.
SELF_EXPLANATORY = ("boolean", "one of ")


def render_value(value):
    """A default or example: Nix text as the module wrote it, else JSON."""
    kind = value.get("_type") if isinstance(value, dict) else None
    if kind == "literalMD":
        return value["text"]
    if kind == "literalExpression":
        text, language = value["text"], "nix"
    else:
        text, language = json.dumps(value, indent=2, ensure_ascii=False), "json"
    if "\n" not in text:
        return "`%s`" % (text,)
    # A fenced block inside the list item: indented to the item's text.
    block = ["```" + language] + text.splitlines() + ["```"]
    return "\n\n" + "\n".join("  " + line for line in block) + "\n"


def item(label, value):
    return "- %s:%s%s" % (label, "" if value.startswith("\n") else " ", value)


def section(option):
    lines = ["## `%s`" % (option["name"],), "", option["description"].strip(), ""]
    lines.append("- Type: %s" % (option["type"],))
    if option["hasDefault"]:
        lines.append(item("Default", render_value(option["default"])))
    else:
        lines.append("- Default: none, must be set")
    if option["example"] is not None:
        lines.append(item("Example", render_value(option["example"])))
    if option["readOnly"]:
        lines.append("- Read-only")
    lines.append("- Declared in: %s" % (", ".join("`%s`" % (d,) for d in option["declarations"]),))
    return "\n".join(lines) + "\n"


def says_nothing(default):
    """Whether a default leaves the reader without an idea of a value."""
    text = default.get("text") if isinstance(default, dict) else None
    return text in ("{ }", "[ ]", "null", '""') or default in (None, {}, [], "")


def problems(options):
    for option in options:
        if not option["description"].strip():
            yield "%s: no description" % (option["name"],)
        if option["type"].startswith(SELF_EXPLANATORY) or option["readOnly"] or option["example"] is not None:
            continue
        if not option["hasDefault"] or says_nothing(option["default"]):
            yield "%s: no example" % (option["name"],)


def main():
    options = json.load(sys.stdin)
    missing = list(problems(options))
    if missing:
        sys.stderr.write("".join("nix/options_md.py: %s\n" % (m,) for m in missing))
        return 1
    sys.stdout.write(HEADER + "\n" + "\n".join(section(o) for o in options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
