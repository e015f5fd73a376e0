"""llmhop.framing and llmhop.target without sockets, held against h11 as an independent parser."""

from typing import Optional
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings, strategies as st

from llmhop import framing
from llmhop.gateway import path_route
from llmhop.target import check_target
from tests.recorder import parse_requests

CAP = 1024 * 1024


def decode(data: bytes, pieces: list[int]) -> tuple[bytes, Optional[bytes], Optional[framing.FramingError]]:
    """Feed C{data} to a ChunkedBody in pieces of the given sizes: (body, rest or None, error or None)."""
    body, outcome = [], {}
    decoder = framing.ChunkedBody(
        CAP, body.append, lambda rest: outcome.setdefault("rest", rest), lambda e: outcome.setdefault("error", e)
    )
    position = 0
    for size in pieces + [len(data)]:
        if "rest" in outcome or "error" in outcome:
            break
        decoder.feed(data[position : position + size])
        position += size
    rest = outcome.get("rest")
    if rest is not None:
        rest += data[position:]
    return b"".join(body), rest, outcome.get("error")


def h11_view(encoded: bytes) -> tuple[Optional[bytes], bool]:
    """What h11 reads as the chunked body of a request carrying C{encoded} (None: it refuses)."""
    requests, complaint = parse_requests(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded)
    if requests:
        return requests[0].body, complaint is None
    return None, complaint is None


extension = st.sampled_from([b"", b";a=1", b";name", b';q="a b"', b";x=\t1"])
trailer = st.sampled_from([b"", b"X-T: 1\r\n", b"A: b\r\nC: d\r\n"])


@st.composite
def chunked(draw):
    """A valid chunked encoding of a random body, and that body."""
    body = draw(st.binary(max_size=300))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
    pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)]) if b > a]
    out = b""
    for piece in pieces:
        size = b"%x" % len(piece)
        if draw(st.booleans()):
            size = size.upper().rjust(draw(st.integers(len(size), 6)), b"0")
        out += size + draw(extension) + b"\r\n" + piece + b"\r\n"
    return out + b"0" + draw(extension) + b"\r\n" + draw(trailer) + b"\r\n", body


@settings(max_examples=300, deadline=None)
@given(encoded=chunked(), pieces=st.lists(st.integers(1, 40), max_size=20), after=st.binary(max_size=20))
def test_a_valid_chunked_body_reads_the_same_in_any_pieces_and_as_h11_reads_it(encoded, pieces, after):
    data, body = encoded
    got, rest, error = decode(data + after, pieces)
    assert error is None
    assert (got, rest) == (body, after)
    assert h11_view(data)[0] == body


@st.composite
def mutated_chunked(draw):
    data = bytearray(draw(chunked())[0])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete"]))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.sampled_from(b"\r\n\x00 \t;:0aAfFgG-+x"))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b"\r", b"\n", b"\x00", b" ", b";", b"0", b"\r\n"]))
        elif kind == "delete" and at < len(data):
            del data[at]
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(data=mutated_chunked(), pieces=st.lists(st.integers(1, 16), max_size=10))
def test_whatever_chunked_body_llmhop_accepts_h11_reads_alike(data, pieces):
    got, rest, error = decode(data, pieces)
    if rest is None:
        return  # refused, or waiting for more: nothing was forwarded
    end = len(data) - len(rest)
    body, clean = h11_view(data[:end])
    assert body == got, "llmhop read %r where h11 reads %r in %r" % (got, body, data)
    assert clean


def test_a_bad_byte_fails_the_body_at_once_not_at_a_deadline():
    for data in [b"e\n", b"zz\r\n", b"5\r\nhello!", b"5\rX", b"5;\x00\r\n", b"0\r\nX: y\nZ"]:
        assert decode(data, [])[2] is not None, data


def test_a_chunk_past_the_cap_is_refused_with_413_before_its_data():
    body, errors = [], []
    framing.ChunkedBody(100, body.append, lambda rest: None, errors.append).feed(b"40\r\n" + b"x" * 64 + b"\r\n41\r\n")
    assert [e.error.status for e in errors] == [413]


@pytest.mark.parametrize(
    "fields, version, expected",
    [
        ({}, b"HTTP/1.1", 0),
        ({"content_length": [b"14"]}, b"HTTP/1.1", 14),
        ({"content_length": [b"0" * 30 + b"14"]}, b"HTTP/1.1", 10**18),
        ({"transfer_encoding": [b"Chunked"]}, b"HTTP/1.1", framing.CHUNKED),
        ({"transfer_encoding": [b" chunked "]}, b"HTTP/1.1", framing.CHUNKED),
        ({"transfer_encoding": [b"chunked", b"identity"]}, b"HTTP/1.1", 501),
        ({"transfer_encoding": [b"chunked", b"chunked"]}, b"HTTP/1.1", 501),
        ({"transfer_encoding": [b"identity"]}, b"HTTP/1.1", 501),
        ({"transfer_encoding": [b"chunked"], "content_length": [b"3"]}, b"HTTP/1.1", 400),
        ({"transfer_encoding": [b"chunked"]}, b"HTTP/1.0", 400),
        ({"content_length": [b"1", b"1"]}, b"HTTP/1.1", 400),
        ({"content_length": [b"\xd9\xa1"]}, b"HTTP/1.1", 400),
    ],
)
def test_body_length_from_the_framing_fields(fields, version, expected):
    try:
        length = framing.FramingFields(**fields).body_length(version)
    except framing.FramingError as e:
        length = e.error.status
    assert length == expected


segment = st.one_of(
    st.sampled_from(["v1", "chat", "a.b", "..", ".", "%2e", "%2E%2e", "%2f", "%5C", "%25", "%252e", "x%20y", "\\", ""]),
    st.text(alphabet="abc.%2eEfF5cC", max_size=6),
)


def assert_resolves_to_itself(path, target):
    """No decoding of C{path}, up to three, brings a dot-segment, a backslash or a new /."""
    for _ in range(3):
        parts = path.split(b"/")
        assert not [p for p in parts if p in (b".", b"..")], target
        assert b"\\" not in path, target
        decoded = unquote_to_bytes(path)
        assert len(decoded.split(b"/")) == len(parts), target
        path = decoded


@settings(max_examples=1000, deadline=None)
@given(segments=st.lists(segment, min_size=1, max_size=6), query=st.sampled_from(["", "?a=../..", "?x=%2f"]))
def test_an_accepted_path_resolves_to_itself_however_often_it_is_decoded(segments, query):
    target = ("/" + "/".join(segments) + query).encode()
    if check_target(target) is not None:
        return
    path = target.partition(b"?")[0]
    assert_resolves_to_itself(path, target)


@settings(max_examples=1000, deadline=None)
@given(model=segment, segments=st.lists(segment, max_size=5), query=st.sampled_from(["", "?a=../..", "?x=%2f"]))
def test_an_accepted_path_route_forwards_a_target_that_resolves_to_itself(model, segments, query):
    # Only the model segment, which is llmhop's and never forwarded, may hold %2F.
    target = ("/route/" + model + "/" + "/".join(segments) + query).encode()
    if check_target(target) is not None:
        return
    name, forwarded = path_route(target)
    assert forwarded.partition(b"?")[2] == query[1:].encode()
    path = forwarded.partition(b"?")[0]
    assert_resolves_to_itself(path, target)
    # The model is what the segment says, decoded once.
    assert name == unquote_to_bytes(model.encode()).decode("utf-8", "surrogateescape")
