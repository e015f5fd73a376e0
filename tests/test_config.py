"""Config loading (SPEC §1): defaults, the listen forms, and the secret references."""

import pytest
from hypothesis import given, strategies as st

from llmhop import config as configlib, secrets
from llmhop.auth import ClientToken
from llmhop.errors import ConfigError

MODELS = {"m": {"url": "http://127.0.0.1:8000"}}


def test_defaults_keep_the_simple_case_simple():
    config = configlib.parse({"models": MODELS}, {})
    assert config.listen == ("tcp:8080",)
    assert config.auth_tokens == ()
    assert config.max_body_bytes == 100 * 1024 * 1024
    assert config.timeouts == configlib.Timeouts(connect=10, response=600, idle=60, shutdown=30, keepAlive=4)
    assert config.models["m"].url == "http://127.0.0.1:8000"
    assert config.models["m"].headers == ()
    assert config.workers == 1


@pytest.mark.parametrize(
    "listen, endpoint",
    [
        (":8080", "tcp:8080"),
        ("127.0.0.1:8080", "tcp:8080:interface=127.0.0.1"),
        ("0.0.0.0:80", "tcp:80:interface=0.0.0.0"),
        ("localhost:8080", "tcp:8080:interface=localhost"),
        ("[::1]:8080", "tcp6:8080:interface=\\:\\:1"),
        ("[::]:8080", "tcp6:8080:interface=\\:\\:"),
        ("tcp:8080", "tcp:8080"),
        ("tcp6:8080:interface=\\:\\:1", "tcp6:8080:interface=\\:\\:1"),
        ("unix:/run/llmhop.sock", "unix:/run/llmhop.sock"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ("ssl:443:privateKey=key.pem", "ssl:443:privateKey=key.pem"),
    ],
)
def test_listen_forms(listen, endpoint):
    assert configlib.parse({"listen": listen, "models": MODELS}, {}).listen == (endpoint,)


@pytest.mark.parametrize(
    "url, kept",
    [
        ("http://h", "http://h"),
        ("http://h/", "http://h"),
        ("https://api.openai.com", "https://api.openai.com"),
        ("http://10.0.0.1:30000/prefix/", "http://10.0.0.1:30000/prefix"),
        ("http://[::1]:8000/a/b", "http://[::1]:8000/a/b"),
    ],
)
def test_backend_urls_keep_their_prefix(url, kept):
    assert configlib.parse({"models": {"m": {"url": url}}}, {}).models["m"].url == kept


def test_secrets_are_not_in_reprs():
    config = configlib.parse(
        {"authTokens": ["tok-secret"], "models": {"m": {"url": "http://h", "headers": {"A": "hdr-secret"}}}}, {}
    )
    assert "tok-secret" not in repr(config) and "hdr-secret" not in repr(config)


ENV = {"KEY": "k1", "OTHER": "o2", "EMPTY": ""}


@pytest.mark.parametrize(
    "text, value",
    [
        ("plain", "plain"),
        ("$KEY", "k1"),
        ("${KEY}", "k1"),
        ("${env:KEY}", "k1"),
        ("Bearer $KEY", "Bearer k1"),
        ("$KEY-$OTHER", "k1-o2"),
        ("${KEY}suffix", "k1suffix"),
        ("$KEYsuffix", None),  # the name runs on: KEYsuffix is unset
        ("$$KEY", "$KEY"),
        ("a$$b$$", "a$b$"),
        ("$$$KEY", "$k1"),
        ("x${EMPTY}y", "xy"),
    ],
)
def test_environment_references(text, value):
    if value is None:
        with pytest.raises(ConfigError, match="KEYsuffix is not set"):
            secrets.expand(text, "p", ENV)
    else:
        assert secrets.expand(text, "p", ENV) == value


def test_file_references_relative_to_credentials_directory_or_cwd(tmp_path, monkeypatch):
    creds, cwd = tmp_path / "creds", tmp_path / "cwd"
    creds.mkdir()
    cwd.mkdir()
    (creds / "token").write_text("from-creds\n")
    (cwd / "token").write_text("from-cwd\n")
    monkeypatch.chdir(cwd)
    assert secrets.expand("${file:token}", "p", {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-creds"
    assert secrets.expand("${file:token}", "p", {"CREDENTIALS_DIRECTORY": ""}) == "from-cwd"
    assert secrets.expand("${file:token}", "p", {}) == "from-cwd"
    assert secrets.expand("a ${file:%s} b" % (creds / "token",), "p", {}) == "a from-creds b"


@pytest.mark.parametrize(
    "text, message",
    [
        ("$", "does not start a reference"),
        ("a $ b", "does not start a reference"),
        ("$1", "does not start a reference"),
        ("${", "unterminated"),
        ("${KEY", "unterminated"),
        ("${}", "bad environment variable name"),
        ("${env:}", "bad environment variable name"),
        ("${a-b}", "bad environment variable name"),
        ("${file:}", "empty path"),
        ("$UNSET", "UNSET is not set"),
    ],
)
def test_bad_references_are_errors_naming_the_place(text, message):
    with pytest.raises(ConfigError) as caught:
        secrets.expand(text, "models.m.headers.X", ENV)
    assert str(caught.value).startswith("models.m.headers.X: ")
    assert message in str(caught.value)


@given(st.text())
def test_double_dollar_escapes_any_text(text):
    assert secrets.expand(text.replace("$", "$$"), "p", {}) == text


@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), st.text(), min_size=1))
def test_every_form_of_an_env_reference_reads_the_variable(environ):
    for name, value in environ.items():
        for form in ("${env:%s}", "${%s}", "$%s"):
            assert secrets.expand("<" + form % (name,) + ">", "p", environ) == "<" + value + ">"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_any_json_document_is_a_config_or_a_config_error(document):
    try:
        configlib.parse(document, {})
    except ConfigError as e:
        assert str(e)


@pytest.mark.parametrize(
    "model, error",
    [
        ({"url": []}, "models.m.url: a list of replicas needs at least one URL"),
        ({"url": ["http://a:1", 7]}, "models.m.url[1]: expected a string"),
        ({"url": ["http://a:1", "http://a:1"]}, "models.m.url: the same replica is listed twice"),
        ({"url": "unix:relative.sock"}, "models.m.url: expected unix:/absolute/path/to.sock"),
        ({"url": "unix:/run/x.sock:prefix"}, "models.m.url: the path prefix after the socket must start with /"),
        ({"url": "unix:/" + "x" * 120}, "models.m.url: not a usable socket path"),
        ({"url": "http://a", "stripPrefix": True}, "models.m.stripPrefix: only a prefix route"),
        ({"url": "http://a", "model": ""}, "models.m.model: must not be empty"),
        ({"url": "http://a", "model": "a\r\nb"}, "models.m.model: must not contain CR, LF or NUL"),
        ({"url": "http://a", "unlisted": "yes"}, "models.m.unlisted: expected true or false"),
        (
            {"url": "http://a", "maxConcurrentRequests": 0},
            "models.m.maxConcurrentRequests: expected a positive integer",
        ),
        ({"url": "http://a", "maxQueuedRequests": -1}, "models.m.maxQueuedRequests: expected a whole number"),
    ],
)
def test_routing_keys_are_checked(model, error):
    with pytest.raises(ConfigError) as caught:
        configlib.parse({"models": {"m": model}}, {})
    assert str(caught.value).startswith(error)


def test_prefix_route_keys():
    with pytest.raises(ConfigError, match=r"^models\.a\*b: a \* may only end a model name"):
        configlib.parse({"models": {"a*b": {"url": "http://a"}}}, {})
    with pytest.raises(ConfigError, match=r"^models\.a/\*\.stripPrefix: model and stripPrefix exclude each other"):
        configlib.parse({"models": {"a/*": {"url": "http://a", "stripPrefix": True, "model": "x"}}}, {})
    model = configlib.parse({"models": {"a/*": {"url": "http://a", "stripPrefix": True}}}, {}).models["a/*"]
    assert (model.prefix, model.strip_prefix) == ("a/", True)


def test_unix_urls_are_normalised():
    urls = (
        configlib.parse({"models": {"m": {"url": ["unix:///run/v.sock", "unix:/run/w.sock:/v1/"]}}}, {})
        .models["m"]
        .urls
    )
    assert urls == ("unix:/run/v.sock", "unix:/run/w.sock:/v1")


def test_metrics_keys():
    config = configlib.parse({"models": {"m": {"url": "http://a"}}, "metrics": {"public": True, "listen": ":9108"}}, {})
    assert (config.metrics.public, config.metrics.listen) == (True, "tcp:9108")
    with pytest.raises(ConfigError, match=r"^metrics\.listen: expected HOST:PORT"):
        configlib.parse({"models": {"m": {"url": "http://a"}}, "metrics": {"listen": "nonsense"}}, {})
    with pytest.raises(ConfigError, match=r"^metrics\.port: unknown key"):
        configlib.parse({"models": {"m": {"url": "http://a"}}, "metrics": {"port": 1}}, {})


@pytest.mark.parametrize(
    "token",
    [
        "replace-me",
        "REPLACE_ME",
        "changeme",
        "change-this",
        "your-token-here",
        "<token>",
        "xxxxxxxx",
        "...",
        "placeholder",
        "secret",
        "token",
    ],
)
def test_placeholder_client_tokens_are_refused(token):
    with pytest.raises(ConfigError) as raised:
        configlib.parse({"authTokens": ["good-Tok3n", "${env:T}"], "models": MODELS}, {"T": token})
    # The same words whatever the value: a value is never echoed.
    assert str(raised.value) == (
        "authTokens[1]: a placeholder (such as replace-me) would let in anyone who read the example: "
        "put a real token there (e.g. from: openssl rand -hex 32)"
    )


@pytest.mark.parametrize("token", ["replace-me-3f9c1a", "sk-token-123", "secret-sauce", "tok", "x1"])
def test_tokens_that_only_contain_such_words_are_fine(token):
    assert configlib.parse({"authTokens": [token], "models": MODELS}, {}).auth_tokens == (
        ClientToken(token, "token-0"),
    )


def test_token_entries_are_strings_or_objects_with_a_name_and_a_scope():
    config = configlib.parse(
        {
            "authTokens": [
                "tok-plain-1",
                {"token": "${env:T}", "name": "team-a", "models": ["llama-3-8b", "qwen/*"]},
                {"token": "tok-nameless-3"},
            ],
            "models": MODELS,
        },
        {"T": "tok-from-env-2"},
    )
    assert config.auth_tokens == (
        ClientToken("tok-plain-1", "token-0"),
        ClientToken("tok-from-env-2", "team-a", ("llama-3-8b", "qwen/*")),
        ClientToken("tok-nameless-3", "token-2"),
    )
    scoped = config.auth_tokens[1]
    assert [scoped.allows(m) for m in ("llama-3-8b", "llama-3-8b-x", "qwen/2.5", "qwen", "")] == [
        True,
        False,
        True,
        False,
        False,
    ]
    # The secret never shows in a repr (tracebacks, debug logs).
    assert "tok-from-env-2" not in repr(config)


@pytest.mark.parametrize(
    "tokens, error",
    [
        ("tok-1", "authTokens: expected a list of tokens (strings, or objects with token, name, models)"),
        ([{"name": "a"}], "authTokens[0].token: required"),
        ([{"token": ""}], "authTokens[0].token: an empty token would let anyone in"),
        ([{"token": "your-token-here"}], "authTokens[0].token: a placeholder (such as replace-me)"),
        ([{"token": "tok-1", "scope": []}], "authTokens[0].scope: unknown key"),
        ([{"token": "tok-1", "name": "team a"}], "authTokens[0].name: 1 to 64 letters, digits and . _ -"),
        ([{"token": "tok-1", "name": "x" * 65}], "authTokens[0].name: 1 to 64 letters"),
        ([{"token": "tok-1", "models": []}], "authTokens[0].models: expected a non-empty list"),
        ([{"token": "tok-1", "models": "m"}], "authTokens[0].models: expected a non-empty list"),
        ([{"token": "tok-1", "models": ["a*b"]}], "authTokens[0].models[0]: * may only end a prefix"),
        ([{"token": "tok-1", "models": [""]}], "authTokens[0].models[0]: an empty name matches no model"),
        (["tok-1", {"token": "tok-1", "name": "b"}], "authTokens: the same token twice"),
        (["tok-1", {"token": "tok-2", "name": "token-0"}], "authTokens: the same name twice"),
    ],
)
def test_bad_token_entries_name_their_place(tokens, error):
    with pytest.raises(ConfigError) as raised:
        configlib.parse({"authTokens": tokens, "models": MODELS}, {})
    assert str(raised.value).startswith(error)


@pytest.mark.parametrize(
    "model, error",
    [
        ({"healthCheck": "yes"}, "models.m.healthCheck: expected an object"),
        ({"healthCheck": {"path": "health"}}, "models.m.healthCheck.path: expected an ASCII path starting with /"),
        ({"healthCheck": {"interval": 0}}, "models.m.healthCheck.interval: expected a positive number"),
        ({"healthCheck": {"timeout": -1}}, "models.m.healthCheck.timeout: expected a positive number"),
        ({"healthCheck": {"failures": 0}}, "models.m.healthCheck.failures: expected a positive integer"),
        ({"healthCheck": {"every": 1}}, "models.m.healthCheck.every: unknown key"),
        ({"retryOn": 503}, "models.m.retryOn: expected a list of HTTP statuses"),
        ({"retryOn": [503, 200]}, "models.m.retryOn[1]: expected an error status, 400 to 599"),
        ({"fallbacks": "n"}, "models.m.fallbacks: expected a list of model names"),
        ({"fallbacks": ["nope"]}, "models.m.fallbacks[0]: no model 'nope' is configured"),
        ({"fallbacks": ["m"]}, "models.m.fallbacks[0]: a model cannot fall back to itself"),
        ({"fallbacks": ["n", "n"]}, "models.m.fallbacks[1]: listed twice"),
        ({"fallbacks": ["p/*"]}, "models.m.fallbacks[0]: a prefix route names no model"),
        ({"policy": "random"}, "models.m.policy: expected one of: least-in-flight, prefix-affinity"),
        ({"affinityBytes": 0}, "models.m.affinityBytes: expected a positive integer"),
        ({"affinityHeader": "X Session"}, "models.m.affinityHeader: not a valid HTTP header name"),
    ],
)
def test_fleet_keys_are_checked(model, error):
    models = {"m": {"url": "http://a", **model}, "n": {"url": "http://b"}, "p/*": {"url": "http://c"}}
    with pytest.raises(ConfigError) as caught:
        configlib.parse({"models": models}, {})
    assert str(caught.value).startswith(error)


def test_fleet_keys_default_to_the_simple_case():
    model = configlib.parse({"models": {"m": {"url": "http://a"}}}, {}).models["m"]
    assert model.health_check is None and model.retry_on == {429, 503} and model.fallbacks == ()
    assert (model.policy, model.affinity_bytes, model.affinity_header) == ("least-in-flight", 2048, "X-Session-Id")
    check = configlib.parse({"models": {"m": {"url": "http://a", "healthCheck": True}}}, {}).models["m"].health_check
    assert check == configlib.HealthCheck("/health", 5.0, 2.0, 2)
    timeouts = configlib.parse({"models": {"m": {"url": "http://a"}}, "timeouts": {"drainDelay": 0}}, {}).timeouts
    assert timeouts.drainDelay == 0.0
    with pytest.raises(ConfigError, match="timeouts.drainDelay: expected a positive number"):
        configlib.parse({"models": {"m": {"url": "http://a"}}, "timeouts": {"drainDelay": -1}}, {})


def test_cors_origins_are_kept_as_written():
    config = configlib.parse(
        {"cors": {"allowOrigins": ["https://chat.example", "http://[::1]:3000"]}, "models": MODELS}, {}
    )
    assert config.cors_origins == ("https://chat.example", "http://[::1]:3000")
    assert configlib.parse({"models": MODELS}, {}).cors_origins == ()


@pytest.mark.parametrize(
    "cors, error",
    [
        ([], "cors: expected an object"),
        ({"origins": []}, "cors.origins: unknown key"),
        ({"allowOrigins": "*"}, "cors.allowOrigins: expected a list of origins"),
        ({"allowOrigins": ["*", "https://a.b"]}, 'cors.allowOrigins[0]: "*" allows every origin: it stands alone'),
        ({"allowOrigins": ["https://chat.example/"]}, "cors.allowOrigins[0]: expected an origin as browsers send it"),
        ({"allowOrigins": ["https://Chat.example"]}, "cors.allowOrigins[0]: expected an origin"),
        ({"allowOrigins": ["chat.example"]}, "cors.allowOrigins[0]: expected an origin"),
        ({"allowOrigins": [3]}, "cors.allowOrigins[0]: expected a string"),
    ],
)
def test_bad_cors_settings_name_their_place(cors, error):
    with pytest.raises(ConfigError) as raised:
        configlib.parse({"cors": cors, "models": MODELS}, {})
    assert str(raised.value).startswith(error)


def test_listen_may_be_a_list_of_addresses():
    config = configlib.parse({"listen": [":8080", "unix:/run/llmhop/llmhop.sock"], "models": MODELS}, {})
    assert config.listen == ("tcp:8080", "unix:/run/llmhop/llmhop.sock")
    assert configlib.parse({"listen": ["systemd"], "workers": 2, "models": MODELS}, {}).listen == ("systemd",)


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"listen": []}, "listen: expected an address or a non-empty list of addresses"),
        ({"listen": [":8080", 8081]}, "listen[1]: expected a string"),
        ({"listen": [":8080", "nonsense"]}, "listen[1]: expected HOST:PORT"),
        ({"listen": [":8080", "tcp:8080"]}, "listen: the same address twice"),
        ({"listen": ["systemd", "systemd:domain=INET:index=0"]}, 'listen: "systemd" serves every socket'),
        ({"listen": [":8080", "onion:80"], "workers": 2}, "workers: several workers need a listen form they can share"),
    ],
)
def test_bad_listen_lists_name_their_place(settings, error):
    with pytest.raises(ConfigError) as raised:
        configlib.parse(dict(settings, models=MODELS), {})
    assert str(raised.value).startswith(error)


def test_the_access_log_format_is_text_or_json():
    assert configlib.parse({"models": MODELS}, {}).access_log_format == "text"
    assert configlib.parse({"accessLog": {"format": "json"}, "models": MODELS}, {}).access_log_format == "json"
    for value, error in (
        ({"format": "xml"}, "accessLog.format: expected one of: text, json"),
        ({"style": "json"}, "accessLog.style: unknown key"),
        ("json", "accessLog: expected an object"),
    ):
        with pytest.raises(ConfigError) as raised:
            configlib.parse({"accessLog": value, "models": MODELS}, {})
        assert str(raised.value).startswith(error)
