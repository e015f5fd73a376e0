"""Secret references in config values, resolved once at startup (SPEC §1).

``${env:NAME}``, ``$NAME`` and ``${NAME}`` read the environment; ``${file:PATH}``
reads a file (relative to ``$CREDENTIALS_DIRECTORY`` when systemd's
``LoadCredential=`` set it), with exactly one trailing newline removed; ``$$`` is
a literal ``$``.  Anything else after a ``$`` is an error rather than literal
text: a typo in a reference should stop startup, not send a half-expanded
token to a hosted API.

Errors name the config place and the variable or path, never a value: the
message ends up in logs and on terminals.
"""

import os
import re
from collections.abc import Mapping
from typing import Optional

from llmhop.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand(
    text: str,
    place: str,
    environ: Mapping[str, str],
    cwd: Optional[str] = None,
) -> str:
    """Return C{text} with every reference replaced by its value."""
    out = []
    pos = 0
    while True:
        dollar = text.find("$", pos)
        if dollar < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:dollar])
        value, pos = _reference(text, dollar, place, environ, cwd)
        out.append(value)


def _reference(text: str, dollar: int, place: str, environ: Mapping[str, str], cwd: Optional[str]) -> tuple[str, int]:
    """Resolve the reference starting at C{text[dollar]}; return (value, end)."""
    rest = text[dollar + 1 :]
    if rest.startswith("$"):
        return "$", dollar + 2
    if rest.startswith("{"):
        close = rest.find("}")
        if close < 0:
            raise ConfigError(place, "unterminated '${' reference (write $$ for a literal $)")
        inner = rest[1:close]
        end = dollar + 2 + close
        if inner.startswith("file:"):
            return _read_file(inner[len("file:") :], place, environ, cwd), end
        if inner.startswith("env:"):
            inner = inner[len("env:") :]
        return _env(inner, place, environ), end
    match = _NAME.match(rest)
    if match is None:
        raise ConfigError(place, "'$' does not start a reference (write $$ for a literal $)")
    return _env(match.group(), place, environ), dollar + 1 + match.end()


def _env(name: str, place: str, environ: Mapping[str, str]) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(place, "bad environment variable name in reference: %r" % (name,))
    try:
        return environ[name]
    except KeyError:
        raise ConfigError(place, "environment variable %s is not set" % (name,)) from None


def _read_file(path: str, place: str, environ: Mapping[str, str], cwd: Optional[str]) -> str:
    if not path:
        raise ConfigError(place, "empty path in ${file:} reference")
    base = environ.get("CREDENTIALS_DIRECTORY") or cwd or os.getcwd()
    full = os.path.join(base, path)
    try:
        with open(full, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(place, "cannot read secret file %s: %s" % (full, e.strerror)) from None
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(place, "secret file %s is not UTF-8" % (full,)) from None
    if content.endswith("\r\n"):
        return content[:-2]
    if content.endswith("\n"):
        return content[:-1]
    return content
