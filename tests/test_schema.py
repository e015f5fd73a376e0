"""The config's JSON Schema (llmhop --print-schema): valid, complete, and never stricter than llmhop.

llmhop checks more than a schema can say (URL forms, secret references,
which headers the proxy owns), so the two are held together in the one
direction that matters to an editor: whatever llmhop accepts, the schema
accepts; whatever the schema refuses, llmhop refuses too.
"""

import json
import os

import attrs
import pytest
from hypothesis import given, settings, strategies as st

from llmhop import cli, config as configlib
from llmhop.errors import ConfigError

jsonschema = pytest.importorskip("jsonschema")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = json.loads(configlib.schema_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
MODEL = SCHEMA["$defs"]["model"]["properties"]


def accepted_by_llmhop(document):
    try:
        configlib.parse(document, {}, resolve=False)
    except ConfigError:
        return False
    return True


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_schema_has_every_key_with_llmhops_defaults():
    timeouts = SCHEMA["properties"]["timeouts"]["properties"]
    assert {name: spec["default"] for name, spec in timeouts.items()} == attrs.asdict(configlib.Timeouts())
    top = SCHEMA["properties"]
    assert top["listen"]["default"] == configlib.DEFAULT_LISTEN
    assert top["maxBodyBytes"]["default"] == configlib.DEFAULT_MAX_BODY_BYTES
    assert top["workers"]["oneOf"][0]["maximum"] == configlib.MAX_WORKERS
    assert top["metrics"]["properties"]["public"]["default"] == configlib.MetricsConfig().public
    assert MODEL["maxQueuedRequests"]["default"] == configlib.DEFAULT_MAX_QUEUED
    check = SCHEMA["$defs"]["healthCheck"]["properties"]
    assert {name: spec["default"] for name, spec in check.items()} == attrs.asdict(configlib.HealthCheck())
    assert MODEL["retryOn"]["default"] == list(configlib.DEFAULT_RETRY_ON)
    assert MODEL["policy"]["enum"] == list(configlib.POLICIES) and MODEL["policy"]["default"] == configlib.POLICIES[0]
    assert MODEL["affinityBytes"]["default"] == configlib.DEFAULT_AFFINITY_BYTES
    assert MODEL["affinityHeader"]["default"] == configlib.DEFAULT_AFFINITY_HEADER
    # Every key says what it is, for an editor's completion.
    described = [top, timeouts, top["metrics"]["properties"], MODEL, SCHEMA["$defs"]["healthCheck"]["properties"]]
    assert all(spec.get("description") for keys in described for spec in keys.values())


SHIPPED = [
    os.path.join("examples", name)
    for name in sorted(os.listdir(os.path.join(ROOT, "examples")))
    if name.endswith(".json")
] + [os.path.join("packaging", "debian", "config.json")]


@pytest.mark.parametrize("path", SHIPPED)
def test_every_shipped_config_is_valid(path):
    with open(os.path.join(ROOT, path)) as f:
        document = json.load(f)
    VALIDATOR.validate(document)
    assert accepted_by_llmhop(document)


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"models": {}},
        {"models": {"m": {}}},
        {"models": {"m": {"url": "ftp://x"}}},
        {"models": {"m": {"url": []}}},
        {"models": {"m": {"url": "http://h", "extra": 1}}},
        {"models": {"m": {"url": "http://h", "headers": {"Bad Name": "v"}}}},
        {"models": {"m": {"url": "http://h", "maxQueuedRequests": -1}}},
        {"models": {"a*b": {"url": "http://h"}}},
        {"models": {"m": {"url": "http://h"}}, "lisen": ":80"},
        {"models": {"m": {"url": "http://h"}}, "timeouts": {"connect": 0}},
        {"models": {"m": {"url": "http://h"}}, "workers": 257},
        {"models": {"m": {"url": "http://h"}}, "metrics": {"public": "yes"}},
    ],
)
def test_structural_mistakes_are_refused_by_both(document):
    assert not VALIDATOR.is_valid(document)
    assert not accepted_by_llmhop(document)


ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 300), st.floats(-1, 1e3), st.text(max_size=4), st.just([]), st.just({})
)


def mostly(valid):
    """Valid values nine times in ten: the interesting configs are the ones llmhop accepts."""
    return st.integers(0, 9).flatmap(lambda draw: valid if draw else ANY)


GOOD_URLS = st.sampled_from(["http://127.0.0.1:8000", "https://api.example/x/", "unix:/run/v.sock", "unix:/s:/p"])
URLS = st.integers(0, 9).flatmap(
    lambda draw: GOOD_URLS if draw else st.sampled_from(["h:1", "", "http://h/?q", "unix:rel"])
)
MODEL_VALUES = {
    "headers": mostly(
        st.dictionaries(st.sampled_from(["X-Key", "Bad Name", "Connection"]), st.text(max_size=3), max_size=2)
    ),
    "model": mostly(st.sampled_from(["Qwen/Qwen3-8B", ""])),
    "stripPrefix": mostly(st.booleans()),
    "unlisted": mostly(st.booleans()),
    "maxConcurrentRequests": mostly(st.integers(0, 3)),
    "maxQueuedRequests": mostly(st.integers(-1, 3)),
    "healthCheck": mostly(
        st.booleans()
        | st.fixed_dictionaries(
            {},
            optional={
                "path": st.sampled_from(["/health", "health", "/a b"]),
                "interval": st.floats(-1, 10),
                "failures": st.integers(0, 3),
                "x": ANY,
            },
        )
    ),
    "retryOn": mostly(st.lists(st.sampled_from([429, 503, 200, 600]), max_size=3)),
    "fallbacks": mostly(st.lists(st.sampled_from(["m", "n", "o/*"]), max_size=2)),
    "policy": mostly(st.sampled_from(["least-in-flight", "prefix-affinity", "session-affinity", "random"])),
    "affinityBytes": mostly(st.integers(0, 3)),
    "affinityHeader": mostly(st.sampled_from(["X-Session-Id", "Bad Name"])),
    "bogus": ANY,
}
MODEL_ENTRY = st.fixed_dictionaries({"url": mostly(st.one_of(URLS, st.lists(URLS, max_size=3)))}, optional=MODEL_VALUES)
NAMES = st.sampled_from(["m", "n", "local/*", "*", "m2", "o/*", "p", "q", "a*b", ""])
MODELS = st.dictionaries(NAMES, mostly(MODEL_ENTRY), min_size=1, max_size=3)
LISTEN = st.sampled_from([":8080", "127.0.0.1:1", "unix:/x", "nonsense", "systemd", "systemd:domain=INET:index=0"])
TOKEN_OBJECT = st.fixed_dictionaries(
    {},
    optional={
        "token": mostly(st.sampled_from(["tok-2", ""])),
        "name": mostly(st.sampled_from(["team-a", "team a", ""])),
        "models": mostly(st.lists(st.sampled_from(["m", "qwen/*", "a*b", ""]), max_size=2)),
        "x": ANY,
    },
)
TOP = st.fixed_dictionaries(
    {"models": mostly(MODELS)},
    optional={
        "listen": mostly(LISTEN | st.lists(LISTEN, max_size=3)),
        "authTokens": mostly(st.lists(st.sampled_from(["tok-1", "", "${env:X}"]) | TOKEN_OBJECT, max_size=2)),
        "maxBodyBytes": mostly(st.integers(0, 10)),
        "workers": mostly(st.integers(0, 3) | st.integers(250, 260) | st.sampled_from(["auto", "Auto"])),
        "timeouts": mostly(
            st.dictionaries(st.sampled_from(["connect", "idle", "drainDelay", "nope"]), st.floats(-1, 10), max_size=2)
        ),
        "metrics": mostly(
            st.fixed_dictionaries(
                {}, optional={"public": mostly(st.booleans()), "listen": mostly(st.just("tcp:9")), "x": ANY}
            )
        ),
        "accessLog": mostly(
            st.fixed_dictionaries({}, optional={"format": st.sampled_from(["text", "json", "xml"]), "x": ANY})
        ),
        "cors": mostly(
            st.fixed_dictionaries(
                {},
                optional={
                    "allowOrigins": mostly(
                        st.lists(
                            st.sampled_from(["*", "https://a.b", "https://A.b", "http://[::1]:3", "a.b/"]), max_size=2
                        )
                    ),
                    "x": ANY,
                },
            )
        ),
        "extra": ANY,
    },
)


@settings(max_examples=500, deadline=None)
@given(TOP)
def test_what_llmhop_accepts_the_schema_accepts(document):
    if accepted_by_llmhop(document):
        assert VALIDATOR.is_valid(document), list(VALIDATOR.iter_errors(document))


def test_print_schema_prints_the_packaged_file(capsysbinary):
    assert cli.main(["--print-schema"]) == 0
    assert capsysbinary.readouterr().out == configlib.schema_text()
