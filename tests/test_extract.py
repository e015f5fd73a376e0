"""Model extraction (SPEC §2.4) agrees with what the backend's JSON parser sees."""

import contextlib
import json

import pytest
from hypothesis import given, strategies as st

from llmhop.extract import ModelError, _from_large_json, extract_model

JSON = b"application/json"


@pytest.mark.parametrize(
    "body, model",
    [
        (b'{"model": "a"}', "a"),
        (b'  {"messages": [], "model": "a"}  ', "a"),
        (b'{"model": "a", "model": "b"}', "b"),
        (b'{"mo\\u0064el": "esc"}', "esc"),
        (b'{"model": "caf\\u00e9"}', "caf\u00e9"),
        (b'{"messages": [{"model": "nested"}], "model": "top"}', "top"),
        (b'{"model": "top", "x": {"model": "nested"}}', "top"),
        ('{"model": "ünï"}'.encode(), "ünï"),
    ],
)
def test_json_model(body, model):
    assert extract_model(body, JSON) == model


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b'"model"',
        b"{}",
        b'{"x": {"model": "nested"}}',
        b'{"model": 1}',
        b'{"model": "a"} x',
        b"[" * 200000,
    ],
)
def test_json_without_a_usable_model(body):
    with pytest.raises(ModelError):
        extract_model(body, JSON)


def multipart(parts, boundary=b"XyZ"):
    body = b"".join(
        b"--" + boundary + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + value + b"\r\n" for headers, value in parts
    )
    return body + b"--" + boundary + b"--\r\n", b"multipart/form-data; boundary=" + boundary


def field(name, value, filename=None):
    disposition = b'Content-Disposition: form-data; name="%s"' % (name,)
    if filename:
        disposition += b'; filename="%s"' % (filename,)
    return [disposition], value


def test_multipart_model_field_anywhere_and_last_wins():
    body, ctype = multipart([field(b"file", b"\x00" * 1000, b"a.wav"), field(b"model", b"whisper-1")])
    assert extract_model(body, ctype) == "whisper-1"
    body, ctype = multipart([field(b"model", b"first"), field(b"model", b"last")])
    assert extract_model(body, ctype) == "last"
    body, ctype = multipart([field(b"model", b"m")], boundary=b'"quoted boundary"'.strip(b'"'))
    assert extract_model(body, b'multipart/form-data; boundary="quoted boundary"') == "m"


@pytest.mark.parametrize(
    "parts",
    [
        [field(b"file", b"x", b"a.wav")],
        [field(b"model", b"m", b"model.txt")],
        [field(b"model", b"\xff\xfe")],
        [field(b"models", b"m")],
    ],
)
def test_multipart_without_a_usable_model(parts):
    body, ctype = multipart(parts)
    with pytest.raises(ModelError):
        extract_model(body, ctype)


def test_multipart_without_boundary_or_truncated():
    with pytest.raises(ModelError):
        extract_model(b"--x\r\n", b"multipart/form-data")
    body, ctype = multipart([field(b"model", b"m")])
    with pytest.raises(ModelError):
        extract_model(body[: body.index(b"m\r\n")], ctype)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(["model", "messages", "x", "mod"]) | st.text(max_size=6), json_values))
def test_agrees_with_json_loads(document):
    body = json.dumps(document, ensure_ascii=False).encode()
    try:
        model = extract_model(body, JSON)
    except ModelError:
        assert not isinstance(document.get("model"), str)
    else:
        assert model == json.loads(body)["model"]


@given(st.binary(max_size=200), st.sampled_from([JSON, None, b"multipart/form-data; boundary=a", b"text/plain"]))
def test_never_raises_anything_but_its_own_error(body, ctype):
    with contextlib.suppress(ModelError):
        extract_model(body, ctype)


def scan(body):
    """The large-body scanner, whatever the body's size."""
    steps = _from_large_json(body)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


@pytest.mark.parametrize(
    "body, model",
    [
        (b'{"model": "a"}', "a"),
        (b' \n{ "model" : "a" , "x" : [ ] } \r\n', "a"),
        (b'{"model": "a", "model": "b"}', "b"),
        (b'{"mo\\u0064el": "esc", "x": 1}', "esc"),
        (b'{"messages": [{"model": "nested", "c": "]}\\"[{"}], "model": "top"}', "top"),
        (b'{"a": [[[[["]]]]"]]]]], "model": "deep-sibling"}', "deep-sibling"),
        (b'{"a": "\\\\", "model": "after-escaped-backslash"}', "after-escaped-backslash"),
        (b'{"a": "\\\\\\"", "model": "after-escaped-quote"}', "after-escaped-quote"),
        (b'{"a": {"b": {}}, "model": "m", "c": {"model": "x"}}', "m"),
        (b'{"a": 1.5e3, "b": -0, "c": true, "d": null, "e": NaN, "model": "scalars"}', "scalars"),
        (b'{"model": "x\\ud83d\\ude00"}', "x\U0001f600"),
        (b'{"x": ' + b"[" * 500 + b"]" * 500 + b', "model": "deep-but-not-too-deep"}', "deep-but-not-too-deep"),
    ],
)
def test_scanner_cases(body, model):
    assert scan(body) == model == json.loads(body)["model"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"[]",
        b"{",
        b'{"model": "a"',
        b'{"model": "a"}}',
        b'{"model" "a"}',
        b'{"model": "a",}',
        b'{"mo\\x": 1}',
        b'{"model": 1}',
        b'{"x": "unterminated}',
        b'{"x": [1, 2}',
        b'{"model": "a"} []',
    ],
)
def test_scanner_refuses(body):
    with pytest.raises(ModelError):
        scan(body)


separators = st.sampled_from([(", ", ": "), (",", ":"), (" ,\n", " :\t")])


@given(
    st.dictionaries(st.sampled_from(["model", "messages", "x", "mod", "\\", '"']) | st.text(max_size=6), json_values),
    separators,
    st.booleans(),
)
def test_scanner_agrees_with_json_loads(document, seps, ascii_only):
    body = json.dumps(document, ensure_ascii=ascii_only, separators=seps).encode()
    try:
        model = scan(body)
    except ModelError:
        assert not isinstance(document.get("model"), str)
    else:
        assert model == document["model"]


@given(st.binary(max_size=300))
def test_scanner_never_raises_anything_but_its_own_error(body):
    with contextlib.suppress(ModelError):
        scan(b"{" + body)


@pytest.mark.parametrize("depth", [512, 10_000, 200_000])
def test_scanner_refuses_nesting_json_loads_would_refuse(depth):
    with pytest.raises(ModelError, match="nested more than 512"):
        scan(b'{"x": ' + b"[" * depth + b"]" * depth + b', "model": "m"}')


def test_scanner_budget_refuses_pathological_bodies():
    body = b'{"x": [' + b'"a",' * 3_000_000 + b'"a"], "model": "m"}'
    with pytest.raises(ModelError, match="too many"):
        scan(body)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@given(
    st.dictionaries(st.text(max_size=8), _JSON, max_size=4),
    st.text(),
    st.text(min_size=1),
    st.booleans(),
    st.sampled_from([None, 1, 2]),
)
def test_rename_changes_the_model_and_nothing_else(document, old, new, ascii_only, indent):
    from llmhop.extract import rename

    # "model" last, so that its value is the last occurrence of those bytes.
    document = {key: value for key, value in document.items() if key != "model"}
    document["model"] = old
    body = json.dumps(document, ensure_ascii=ascii_only, indent=indent).encode("utf-8")
    renamed = rename(body, None, new)
    assert json.loads(renamed) == dict(document, model=new)
    assert extract_model(renamed, None) == new
    # Only the bytes of the value changed.
    start = body.rindex(json.dumps(old, ensure_ascii=ascii_only).encode("utf-8"))
    assert renamed.startswith(body[:start]) and renamed.endswith(
        body[start + len(json.dumps(old, ensure_ascii=ascii_only).encode()) :]
    )


def test_rename_takes_the_last_top_level_model_like_json_loads():
    from llmhop.extract import rename

    body = b'{"model": "a", "x": {"model": "nested"}, "model": "b"}'
    assert rename(body, None, "c") == b'{"model": "a", "x": {"model": "nested"}, "model": "c"}'
