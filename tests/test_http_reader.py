"""Tests for ``HTTPResponseReader``, the sans-I/O HTTP/1.1 response reader.

The rules come from RFC 9112 (message syntax and framing) and RFC 9110
(status codes, field values).  Every case of the tables below is fed whole,
one byte at a time (with empty feeds in between) and split in two at every
position; how the body is cut into ``BodyData`` events may differ, nothing
else may.  Hypothesis then checks random chunkings of random messages and
that random bytes raise nothing but ``HTTPProtocolError``.  Last, a real
socket on 127.0.0.1 carries a chunked response into the reader.

Only the public API is used.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import tracemalloc
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_sse import (
    BodyData,
    EndOfMessage,
    HTTPEvent,
    HTTPProtocolError,
    HTTPResponseReader,
    KernelSSEError,
    ResponseHead,
    SSEProtocolError,
)

Fields = Tuple[Tuple[str, str], ...]


class Result(NamedTuple):
    """Everything observable about one response, body cuts aside."""

    head: ResponseHead
    body: bytes
    trailers: Fields
    trailing_bytes: int
    done_before_eof: bool


def run(chunks: Iterable[bytes], method: str = "GET", **limits: int) -> Result:
    """Feed ``chunks``, then the end of input, checking the event sequence."""
    reader = HTTPResponseReader(method, **limits)
    events: List[HTTPEvent] = []
    for chunk in chunks:
        out = reader.feed(chunk)
        assert isinstance(out, list)
        events.extend(out)
    done_before_eof = reader.done
    events.extend(reader.feed_eof())
    assert reader.done
    assert reader.feed_eof() == []  # harmless once done
    head, *middle, end = events
    assert isinstance(head, ResponseHead) and reader.head == head
    assert isinstance(end, EndOfMessage)
    body = []
    for event in middle:
        assert isinstance(event, BodyData)
        assert type(event.data) is bytes and event.data  # never an empty one
        body.append(event.data)
    return Result(head, b"".join(body), end.trailers, reader.trailing_bytes, done_before_eof)


def splittings(raw: bytes) -> Iterator[List[bytes]]:
    """``raw`` whole, byte by byte (empty feeds between) and cut in two everywhere."""
    yield [raw]
    yield [piece for i in range(len(raw)) for piece in (raw[i : i + 1], b"")]
    for cut in range(len(raw) + 1):
        yield [raw[:cut], raw[cut:]]


def run_everywhere(raw: bytes, method: str = "GET", **limits: int) -> Result:
    """``run`` over every splitting of ``raw``; all must agree."""
    results = [run(chunks, method, **limits) for chunks in splittings(raw)]
    for result in results[1:]:
        assert result == results[0]
    return results[0]


def fail_everywhere(raw: bytes, match: str, method: str = "GET", **limits: int) -> None:
    """Every splitting of ``raw`` (then the end of input) raises ``match``."""
    for chunks in splittings(raw):
        with pytest.raises(HTTPProtocolError, match=match):
            run(chunks, method, **limits)


# ----------------------------------------------------------------------
# Valid responses
# ----------------------------------------------------------------------


class Case(NamedTuple):
    raw: bytes
    status: int
    reason: str
    headers: Fields
    body: bytes
    trailers: Fields = ()
    method: str = "GET"
    version: str = "1.1"
    close_delimited: bool = False
    trailing_bytes: int = 0


CHUNKED = (("Transfer-Encoding", "chunked"),)

VALID = {
    "content-length": Case(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 11\r\n\r\nhello world",
        200, "OK", (("Content-Type", "text/event-stream"), ("Content-Length", "11")), b"hello world",
    ),
    "content-length-list-and-repeats": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 003\r\n\r\nabc",
        200, "OK", (("Content-Length", "3, 3"), ("Content-Length", "003")), b"abc",
    ),
    "content-length-zero": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "OK", (("Content-Length", "0"),), b""
    ),
    "chunked-extensions-trailers": Case(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;name=value;x\r\n \r\nA \r\n0123456789\r\n"
        b"0;last\r\nExpires: never\r\nX-Checksum:  abc \r\n\r\n",
        200, "OK", CHUNKED, b"hello 0123456789", (("Expires", "never"), ("X-Checksum", "abc")),
    ),
    "chunked-lf-only-leading-zeros-upper-hex": Case(
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n0005\nhello\n00B ; ext=\"q\"\n, 012345678\n000\n\n",
        200, "OK", CHUNKED, b"hello, 012345678",
    ),
    "chunked-crlf-in-data": Case(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\r\n\r\n\r\n0\r\n\r\n",
        200, "OK", CHUNKED, b"\r\n\r\n",
    ),
    "chunked-folded-trailer": Case(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nT: a\r\n b\r\n\r\n",
        200, "OK", CHUNKED, b"x", (("T", "a b"),),
    ),
    "transfer-encoding-wins-over-content-length": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        200, "OK", (("Content-Length", "100"),) + CHUNKED, b"abc",
    ),
    "transfer-encoding-case-and-empty-elements": Case(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nTransfer-Encoding: , Chunked ,\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        200, "OK", (("Transfer-Encoding", ""), ("Transfer-Encoding", ", Chunked ,")), b"ok",
    ),
    "close-delimited-http-1.0": Case(
        b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of it\r\nuntil the close",
        200, "OK", (("Server", "old"),), b"all of it\r\nuntil the close", version="1.0", close_delimited=True,
    ),
    "close-delimited-no-reason-no-body": Case(
        b"HTTP/1.1 200\r\n\r\n", 200, "", (), b"", close_delimited=True
    ),
    "empty-reason": Case(
        b"HTTP/1.1 404 \r\nContent-Length: 2\r\n\r\nno", 404, "", (("Content-Length", "2"),), b"no"
    ),
    "reason-with-spaces-other-minor-version": Case(
        b"HTTP/1.9 599 Very  odd\tindeed \r\nContent-Length: 1\r\n\r\n!",
        599, "Very  odd\tindeed ", (("Content-Length", "1"),), b"!", version="1.9",
    ),
    "head-request": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 200, "OK", (("Content-Length", "100"),), b"", method="HEAD"
    ),
    "head-request-chunked": Case(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 200, "OK", CHUNKED, b"", method="HEAD"),
    "no-content": Case(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 204, "No Content", (("Content-Length", "5"),), b""
    ),
    "not-modified": Case(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", 304, "Not Modified", CHUNKED, b""),
    "interim-responses": Case(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        200, "OK", (("Content-Length", "2"),), b"ok",
    ),
    "obs-fold": Case(
        b"HTTP/1.1 200 OK\r\nX-Long: first\r\n  second\r\n\tthird\r\nX-Empty:\r\n more\r\nX-Blank: a\r\n \r\n"
        b"Content-Length: 0\r\n\r\n",
        200, "OK", (("X-Long", "first second third"), ("X-Empty", "more"), ("X-Blank", "a"), ("Content-Length", "0")), b"",
    ),
    "field-values": Case(
        b"HTTP/1.1 200 Ok\xe9\r\nX-Name: caf\xe9\r\nX-Tabs:\t a\tb \t\r\nx-empty:\r\n"
        b"!#$%&'*+-.^_`|~09azAZ: v:w\r\nContent-Length: 0\r\n\r\n",
        200, "Ok\xe9",
        (("X-Name", "caf\xe9"), ("X-Tabs", "a\tb"), ("x-empty", ""), ("!#$%&'*+-.^_`|~09azAZ", "v:w"), ("Content-Length", "0")),
        b"",
    ),
    "trailing-bytes-after-content-length": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", 200, "OK", (("Content-Length", "2"),), b"ok", trailing_bytes=5
    ),
    "trailing-bytes-after-chunked": Case(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\r\n", 200, "OK", CHUNKED, b"", trailing_bytes=2
    ),
}


@pytest.mark.parametrize("case", VALID.values(), ids=list(VALID))
def test_valid_response(case: Case) -> None:
    result = run_everywhere(case.raw, case.method)
    assert result.head == ResponseHead(case.status, case.reason, case.headers, case.version)
    assert result.body == case.body
    assert result.trailers == case.trailers
    assert result.trailing_bytes == case.trailing_bytes
    assert result.done_before_eof is not case.close_delimited


def test_header_lookup() -> None:
    head = ResponseHead(200, "OK", (("Cache-Control", "no-cache"), ("X-A", "1"), ("x-a", "2")))
    assert head.http_version == "1.1"
    assert head.header("cache-control") == "no-cache"
    assert head.header("X-A") == "1, 2"
    assert head.header("missing") is None


def test_events_are_immutable_values() -> None:
    assert BodyData(b"x") == BodyData(b"x")
    assert EndOfMessage() == EndOfMessage(())
    with pytest.raises(AttributeError):
        BodyData(b"x").data = b"y"  # type: ignore[misc]


# ----------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\n"
CHUNKED_HEAD = OK + b"Transfer-Encoding: chunked\r\n\r\n"

ERRORS = {
    # the connection closes early
    "eof-before-anything": (b"", "closed before the response's status line"),
    "eof-after-interim": (b"HTTP/1.1 100 Continue\r\n\r\n", "closed before the response's status line"),
    "eof-mid-status-line": (b"HTTP/1.1 200", "closed in the middle of the response head"),
    "eof-mid-headers": (OK + b"X: y\r\n", "closed in the middle of the response head"),
    "eof-content-length-short": (OK + b"Content-Length: 10\r\n\r\nabc", "closed 7 bytes before the end of the body"),
    "eof-mid-chunk-size": (CHUNKED_HEAD + b"5", "closed in the middle of the chunked body"),
    "eof-mid-chunk-data": (CHUNKED_HEAD + b"5\r\nhel", "closed in the middle of the chunked body"),
    "eof-before-chunk-crlf": (CHUNKED_HEAD + b"5\r\nhello", "closed in the middle of the chunked body"),
    "eof-mid-chunk-crlf": (CHUNKED_HEAD + b"5\r\nhello\r", "closed in the middle of the chunked body"),
    "eof-mid-trailers": (CHUNKED_HEAD + b"0\r\nX: y\r\n", "closed in the middle of the chunked body"),
    # status line
    "http-2": (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.x status line: b'HTTP/2 200 OK'"),
    "http-2.0": (b"HTTP/2.0 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
    "two-digit-status": (b"HTTP/1.1 20 OK\r\n\r\n", "not an HTTP/1.x status line"),
    "status-600": (b"HTTP/1.1 600 Odd\r\n\r\n", "not an HTTP/1.x status line"),
    "status-099": (b"HTTP/1.1 099 Odd\r\n\r\n", "not an HTTP/1.x status line"),
    "other-protocol": (b"ICY 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
    "lower-case-version": (b"http/1.1 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
    "no-space-before-reason": (b"HTTP/1.1 200OK\r\n\r\n", "not an HTTP/1.x status line"),
    "two-spaces-before-status": (b"HTTP/1.1  200 OK\r\n\r\n", "not an HTTP/1.x status line"),
    "nul-in-reason": (b"HTTP/1.1 200 O\x00K\r\n\r\n", "not an HTTP/1.x status line"),
    "bare-cr-in-reason": (b"HTTP/1.1 200 OK\r\r\n\r\n", "not an HTTP/1.x status line"),
    "blank-line-first": (b"\r\nHTTP/1.1 200 OK\r\n\r\n", r"not an HTTP/1.x status line: b''"),
    "switching-protocols": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", r"switched protocols \(101\)"),
    # header lines
    "no-colon": (OK + b"X-No-Colon\r\n\r\n", "not a valid header field line: b'X-No-Colon'"),
    "space-before-colon": (OK + b"X-Space : v\r\n\r\n", "not a valid header field line"),
    "empty-name": (OK + b": v\r\n\r\n", "not a valid header field line"),
    "bad-name-character": (OK + b"X@Bad: v\r\n\r\n", "not a valid header field line"),
    "nul-in-value": (OK + b"X: a\x00b\r\n\r\n", "a control character in a header field value"),
    "del-in-value": (OK + b"X: a\x7fb\r\n\r\n", "a control character in a header field value"),
    "bare-cr-in-value": (OK + b"X: a\rb\r\n\r\n", "a control character in a header field value"),
    "folded-first-line": (OK + b" X: v\r\n\r\n", "a folded line before the first header field"),
    "control-in-folded-line": (OK + b"X: a\r\n b\x01\r\n\r\n", "a control character in a header field value"),
    # framing
    "gzip": (OK + b"Transfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding: 'gzip'"),
    "gzip-chunked": (OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n", "unsupported Transfer-Encoding"),
    "chunked-gzip": (OK + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding"),
    "chunked-twice": (OK + b"Transfer-Encoding: chunked, chunked\r\n\r\n", "unsupported Transfer-Encoding"),
    "empty-transfer-encoding": (OK + b"Transfer-Encoding:\r\n\r\n", "unsupported Transfer-Encoding"),
    "transfer-encoding-in-http-1.0": (
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "an HTTP/1.0 response with Transfer-Encoding",
    ),
    "content-length-letters": (OK + b"Content-Length: abc\r\n\r\n", "not a valid Content-Length: 'abc'"),
    "content-length-negative": (OK + b"Content-Length: -1\r\n\r\n", "not a valid Content-Length"),
    "content-length-plus": (OK + b"Content-Length: +5\r\n\r\n", "not a valid Content-Length"),
    "content-length-inner-space": (OK + b"Content-Length: 1 2\r\n\r\n", "not a valid Content-Length"),
    "content-length-empty": (OK + b"Content-Length:\r\n\r\n", "not a valid Content-Length"),
    "content-length-empty-element": (OK + b"Content-Length: 5,\r\n\r\n", "not a valid Content-Length"),
    "content-length-non-ascii-digit": (OK + b"Content-Length: \xb2\r\n\r\n", "not a valid Content-Length"),
    "content-length-too-large": (OK + b"Content-Length: 1234567890123456789\r\n\r\n", "Content-Length too large"),
    "content-length-conflict": (OK + b"Content-Length: 5, 6\r\n\r\n", "conflicting Content-Length values: '5, 6'"),
    "content-length-conflict-repeat": (OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting Content-Length"),
    # chunks
    "chunk-size-letters": (CHUNKED_HEAD + b"xyz\r\n", "not a valid chunk-size line: b'xyz'"),
    "chunk-size-empty": (CHUNKED_HEAD + b"\r\n", "not a valid chunk-size line"),
    "chunk-size-negative": (CHUNKED_HEAD + b"-1\r\n", "not a valid chunk-size line"),
    "chunk-size-leading-space": (CHUNKED_HEAD + b" 5\r\nhello\r\n", "not a valid chunk-size line"),
    "chunk-size-0x": (CHUNKED_HEAD + b"0x5\r\nhello\r\n", "not a valid chunk-size line"),
    "chunk-size-too-large": (CHUNKED_HEAD + b"10000000000000000\r\n", "chunk size too large"),
    "chunk-longer-than-size": (CHUNKED_HEAD + b"5\r\nhelloX\r\n0\r\n\r\n", "not followed by CRLF"),
    "chunk-two-crs": (CHUNKED_HEAD + b"5\r\nhello\r\r\n0\r\n\r\n", "not followed by CRLF"),
    "chunk-one-byte-more": (CHUNKED_HEAD + b"5\r\nhelloX\n0\r\n\r\n", "not followed by CRLF"),
    "bad-trailer": (CHUNKED_HEAD + b"0\r\nbad trailer\r\n\r\n", "not a valid trailer field line"),
    "folded-first-trailer": (CHUNKED_HEAD + b"0\r\n folded\r\n\r\n", "a folded line before the first trailer field"),
    "control-in-trailer": (CHUNKED_HEAD + b"0\r\nT: \x1b[31m\r\n\r\n", "a control character in a trailer field value"),
}


@pytest.mark.parametrize("raw, match", ERRORS.values(), ids=list(ERRORS))
def test_error(raw: bytes, match: str) -> None:
    fail_everywhere(raw, match)


def test_error_hierarchy() -> None:
    assert issubclass(HTTPProtocolError, SSEProtocolError)
    assert issubclass(HTTPProtocolError, KernelSSEError)


def test_error_messages_quote_a_short_printable_excerpt() -> None:
    line = b"\x1b[2J\xff\x00" + b"A" * 5000
    with pytest.raises(HTTPProtocolError) as info:
        HTTPResponseReader().feed(line + b"\r\n")
    message = str(info.value)
    assert message.isascii() and message.isprintable()
    assert len(message) < 120
    assert message.endswith("...")
    assert repr(line[:40]) in message


def test_a_failed_reader_keeps_failing() -> None:
    reader = HTTPResponseReader()
    with pytest.raises(HTTPProtocolError, match="not an HTTP/1.x status line") as first:
        reader.feed(b"HTTP/9 200 OK\r\n")
    calls: List[Callable[[], object]] = [
        lambda: reader.feed(b"HTTP/1.1 200 OK\r\n"),
        lambda: reader.feed(b""),
        reader.feed_eof,
    ]
    for call in calls:
        with pytest.raises(HTTPProtocolError) as again:
            call()
        assert str(again.value) == str(first.value)
    assert not reader.done


def test_a_reader_failed_at_eof_keeps_failing() -> None:
    reader = HTTPResponseReader()
    with pytest.raises(HTTPProtocolError, match="before the response's status line"):
        reader.feed_eof()
    with pytest.raises(HTTPProtocolError, match="before the response's status line"):
        reader.feed_eof()


def test_feed_after_feed_eof_is_a_usage_error() -> None:
    reader = HTTPResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\n\r\nbody")
    assert reader.feed_eof() == [EndOfMessage()]
    assert reader.feed(b"") == []  # an empty read is no new data
    with pytest.raises(RuntimeError, match="after feed_eof"):
        reader.feed(b"more")


# ----------------------------------------------------------------------
# Limits
# ----------------------------------------------------------------------

LINE_LIMIT = 40


def line_of(length: int, kind: str) -> bytes:
    """A ``kind`` of line whose content (no line end) is ``length`` bytes long."""
    if kind == "status":
        return b"HTTP/1.1 200 " + b"r" * (length - 13)
    if kind in ("header", "trailer"):
        return b"X: " + b"v" * (length - 3)
    return b"1;" + b"e" * (length - 2)  # a chunk-size line with an extension


def message_with(line: bytes, kind: str, eol: bytes) -> bytes:
    if kind == "status":
        return line + eol + b"Content-Length: 0" + eol + eol
    if kind == "header":
        return b"HTTP/1.1 200 OK" + eol + line + eol + b"Content-Length: 0" + eol + eol
    chunk_size = line if kind == "chunk-size" else b"1"
    trailer = line + eol if kind == "trailer" else b""
    return b"HTTP/1.1 200 OK" + eol + b"Transfer-Encoding: chunked" + eol + eol + chunk_size + eol + b"x" + eol + b"0" + eol + trailer + eol


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["crlf", "lf"])
@pytest.mark.parametrize("kind", ["status", "header", "chunk-size", "trailer"])
def test_max_line(kind: str, eol: bytes) -> None:
    run_everywhere(message_with(line_of(LINE_LIMIT, kind), kind, eol), max_line=LINE_LIMIT)
    what = {"status": "the status line", "header": "a header line", "chunk-size": "a chunk-size line", "trailer": "a trailer line"}
    fail_everywhere(
        message_with(line_of(LINE_LIMIT + 1, kind), kind, eol),
        f"{what[kind]} is longer than max_line \\({LINE_LIMIT} bytes\\)",
        max_line=LINE_LIMIT,
    )


def fields(count: int) -> bytes:
    return b"".join(b"F%d: v\r\n" % i for i in range(count))


@pytest.mark.parametrize("section", ["header", "trailer"])
def test_max_headers(section: str) -> None:
    def message(count: int) -> bytes:
        if section == "header":
            return OK + fields(count - 1) + b"Content-Length: 0\r\n\r\n"
        return CHUNKED_HEAD + b"0\r\n" + fields(count) + b"\r\n"

    # Folded lines add to a field: they are not fields themselves.
    folded = OK + b"A: 1\r\n 2\r\n 3\r\nContent-Length: 0\r\n\r\n"
    assert run_everywhere(folded, max_headers=2).head.header("a") == "1 2 3"
    limit = 2 if section == "trailer" else 3  # the chunked head holds one field
    run_everywhere(message(limit), max_headers=limit)
    fail_everywhere(message(limit + 1), f"more than max_headers \\({limit}\\) {section} fields", max_headers=limit)


@pytest.mark.parametrize("section", ["head", "trailer"])
def test_max_header_bytes(section: str) -> None:
    if section == "head":
        # Interim responses count: they come before the body too.
        head = b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"Content-Length: 0\r\n\r\n"
        raw, size = head, len(head)
        match = "the response head is larger than max_header_bytes"
    else:
        trailers = b"T: 1\nTrailer: " + b"2" * 50 + b"\r\n\r\n"  # larger than the head
        raw, size = CHUNKED_HEAD + b"0\r\n" + trailers, len(trailers)
        match = "the trailer section is larger than max_header_bytes"
    run_everywhere(raw, max_header_bytes=size)
    fail_everywhere(raw, f"{match} \\({size - 1} bytes\\)", max_header_bytes=size - 1)


def test_defaults() -> None:
    reader = HTTPResponseReader()
    assert (reader.request_method, reader.max_line, reader.max_headers, reader.max_header_bytes) == (
        "GET", 16384, 100, 65536,
    )
    assert reader.head is None and not reader.done and reader.trailing_bytes == 0


def endless(unit: bytes) -> Iterator[bytes]:
    while True:
        yield unit


@pytest.mark.parametrize(
    "start, unit",
    [
        (CHUNKED_HEAD + b"0\r\n", b"X-More: trailers\r\n"),  # an endless trailer section
        (CHUNKED_HEAD + b"0\r\n", b"X-Long: " + b"v" * 100),  # one endless trailer line
        (CHUNKED_HEAD + b"1;", b"ext" * 100),  # an endless chunk extension
        (OK, b"X-Header: v\r\n"),  # an endless header section
        (OK + b"X: v\r\n", b" folded" * 100 + b"\r\n"),  # endless folding
        (b"HTTP/1.1 103 Early Hints\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\n"),  # endless interim responses
        (b"", b"x" * 100),  # an endless status line
    ],
    ids=["trailers", "trailer-line", "chunk-extension", "headers", "folding", "interim", "status-line"],
)
def test_endless_sections_hit_a_limit(start: bytes, unit: bytes) -> None:
    reader = HTTPResponseReader(max_line=1000, max_headers=10_000, max_header_bytes=10_000)
    reader.feed(start)
    fed = 0
    with pytest.raises(HTTPProtocolError, match="max_line|max_header_bytes"):
        for data in endless(unit):
            reader.feed(data)
            fed += len(data)
            assert fed < 20_000
    assert fed > 500


def test_a_huge_line_is_refused_without_copying_it() -> None:
    garbage = b"x" * (8 * 1024 * 1024)
    reader = HTTPResponseReader()
    reader.feed(OK)
    tracemalloc.start()
    try:
        with pytest.raises(HTTPProtocolError, match="a header line is longer than max_line"):
            reader.feed(garbage)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


# ----------------------------------------------------------------------
# Body bytes pass through
# ----------------------------------------------------------------------


@pytest.mark.parametrize("head", [OK + b"Content-Length: 1048576\r\n\r\n", OK + b"\r\n"], ids=["length", "close"])
def test_large_body_reads_are_not_copied(head: bytes) -> None:
    reader = HTTPResponseReader()
    assert reader.feed(head) == [reader.head]
    block = bytes(1024 * 1024)
    [event, *rest] = reader.feed(block)
    assert isinstance(event, BodyData) and event.data is block


def test_body_bytes_come_out_as_soon_as_they_arrive() -> None:
    reader = HTTPResponseReader()
    reader.feed(CHUNKED_HEAD + b"10\r\n")
    assert reader.feed(b"a") == [BodyData(b"a")]
    assert reader.feed(b"bc") == [BodyData(b"bc")]
    reader.feed(b"d" * 13 + b"\r\n")
    assert reader.feed(b"2\r\nef") == [BodyData(b"ef")]


def test_bytes_like_input_gives_bytes() -> None:
    reader = HTTPResponseReader()
    reader.feed(bytearray(OK + b"\r\n"))
    buffer = bytearray(b"data")
    [event] = reader.feed(memoryview(buffer))
    buffer[:] = b"XXXX"
    assert event == BodyData(b"data") and type(event.data) is bytes


# ----------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------


@st.composite
def messages(draw: st.DrawFn) -> Tuple[bytes, bytes, Fields, str]:
    """A valid response: (raw bytes, body, trailers, method)."""
    body = draw(st.binary(max_size=300))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    framing = draw(st.sampled_from(["length", "chunked", "close", "no-body"]))
    headers = b"Server: test" + eol
    trailers: Fields = ()
    method = "GET"
    if framing == "length":
        frame = b"Content-Length: %d" % len(body) + eol + eol + body
    elif framing == "close":
        frame = eol + body
    elif framing == "no-body":
        method, frame, body = "HEAD", b"Content-Length: %d" % len(body) + eol + eol, b""
    else:
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
        frame = b"Transfer-Encoding: chunked" + eol + eol
        for start, stop in zip([0] + cuts, cuts + [len(body)]):
            if stop > start:
                extension = draw(st.sampled_from([b"", b";a=b", b" ; x"]))
                frame += b"%x" % (stop - start) + extension + eol + body[start:stop] + eol
        trailers = tuple(draw(st.lists(st.tuples(st.sampled_from(["T", "Etag"]), st.text("abc ", max_size=5).map(str.strip)), max_size=3)))
        frame += b"0" + eol + b"".join(n.encode() + b": " + v.encode() + eol for n, v in trailers) + eol
    interim = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue" + eol + eol]))
    return interim + b"HTTP/1.1 200 OK" + eol + headers + frame, body, trailers, method


def cut(raw: bytes, points: Sequence[int]) -> List[bytes]:
    bounds = [0] + sorted(points) + [len(raw)]
    return [raw[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300, deadline=None)
@given(message=messages(), points=st.lists(st.integers(0, 1000), max_size=12))
def test_any_chunking_gives_the_same_message(message: Tuple[bytes, bytes, Fields, str], points: List[int]) -> None:
    raw, body, trailers, method = message
    whole = run([raw], method)
    result = run(cut(raw, [p % (len(raw) + 1) for p in points]), method)
    assert result == whole
    assert (result.head.status, result.body, result.trailers) == (200, body, trailers)


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([b"", OK, CHUNKED_HEAD, OK + b"Content-Length: 5\r\n\r\n"]), noise=st.binary(max_size=200))
def test_random_bytes_raise_nothing_but_protocol_errors(prefix: bytes, noise: bytes) -> None:
    reader = HTTPResponseReader(max_line=64)
    try:
        reader.feed(prefix + noise)
        reader.feed_eof()
    except HTTPProtocolError:
        pass


# ----------------------------------------------------------------------
# A real socket
# ----------------------------------------------------------------------


def test_chunked_response_over_a_real_socket() -> None:
    first_chunk_seen = threading.Event()
    requests: List[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            request = b""
            while b"\r\n\r\n" not in request:
                data = self.request.recv(1024)
                if not data:
                    return
                request += data
            requests.append(request)
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"d\r\ndata: first\n\n\r\n"
            )
            # The rest only once the client has handed the first chunk on:
            # the reader must not wait for more bytes before giving it out.
            if first_chunk_seen.wait(10):
                self.request.sendall(b"e\r\ndata: second\n\n\r\n0\r\nX-Done: yes\r\n\r\n")

    server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
            reader = HTTPResponseReader()
            events: List[HTTPEvent] = []
            while not reader.done:
                data = sock.recv(65536)
                new = reader.feed(data) if data else reader.feed_eof()
                if any(isinstance(event, BodyData) for event in new):
                    first_chunk_seen.set()
                events.extend(new)
    finally:
        first_chunk_seen.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert requests and requests[0].startswith(b"GET /stream ")
    head = events[0]
    assert isinstance(head, ResponseHead) and head.header("content-type") == "text/event-stream"
    body = b"".join(event.data for event in events if isinstance(event, BodyData))
    assert body == b"data: first\n\ndata: second\n\n"
    assert events[-1] == EndOfMessage((("X-Done", "yes"),))
