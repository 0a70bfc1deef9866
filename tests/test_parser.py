"""Conformance tests for ``SSEParser``, built from the WHATWG HTML standard.

The rules come from HTML section 9.2.5/9.2.6 ("Parsing an event stream",
"Interpreting an event stream") and from the web-platform-tests
``eventsource/format-*`` cases, restated here as byte streams.  Every case of
the conformance table is fed whole, one byte at a time (with empty chunks in
between) and split in two at every position.  Hypothesis then checks that any
chunking of any stream gives what feeding it whole gives, that random bytes
raise nothing but ``SSEProtocolError``, and that the parser agrees with a
deliberately naive, line-by-line reference implementation of the standard
written below (``reference_parse``).

Only the public API is used: ``SSEParser``, ``ServerSentEvent`` and the errors.
"""

from __future__ import annotations

import sys
import tracemalloc
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel_sse import (
    EventTooLarge,
    KernelSSEError,
    SSEParser,
    SSEProtocolError,
    ServerSentEvent,
)

BOM = b"\xef\xbb\xbf"
KiB = 1024
MiB = 1024 * KiB


def E(
    data: str, event: str = "message", id: str = "", retry: Optional[int] = None
) -> ServerSentEvent:
    """Shorthand for an expected event."""
    return ServerSentEvent(event=event, data=data, id=id, retry=retry)


class Outcome(NamedTuple):
    events: List[ServerSentEvent]
    last_event_id: str
    retry: Optional[int]


def run(chunks: Iterable[bytes], parser: Optional[SSEParser] = None) -> Outcome:
    """Feed ``chunks`` in order and collect everything observable."""
    p = SSEParser() if parser is None else parser
    events: List[ServerSentEvent] = []
    for chunk in chunks:
        out = p.feed(chunk)
        assert isinstance(out, list)
        events.extend(out)
    return Outcome(events, p.last_event_id, p.retry)


def bytewise(stream: bytes) -> Iterator[bytes]:
    """One byte per chunk, with an empty chunk before each and at the end."""
    for i in range(len(stream)):
        yield b""
        yield stream[i : i + 1]
    yield b""


def split_at(stream: bytes, cuts: Sequence[int]) -> List[bytes]:
    points = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in zip(points, points[1:])]


# ----------------------------------------------------------------------
# Reference model: the WHATWG algorithm, applied literally and slowly.
# ----------------------------------------------------------------------

_ASCII_DIGITS = frozenset("0123456789")


def reference_parse(stream: bytes) -> Outcome:
    """The standard's "interpreting an event stream", on a complete byte stream.

    * Decode: UTF-8 decode (strip one leading BOM, replace errors with U+FFFD).
    * Split into lines, one character at a time: CRLF, lone LF and lone CR each
      end a line; characters after the last line end form an unfinished line,
      which is discarded (the incomplete event is never dispatched).
    * Process each line as the standard says.
    """
    if stream.startswith(BOM):
        stream = stream[len(BOM) :]
    text = stream.decode("utf-8", "replace")

    lines: List[str] = []
    current: List[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\r":
            lines.append("".join(current))
            current = []
            if i + 1 < len(text) and text[i + 1] == "\n":
                i += 1
        elif ch == "\n":
            lines.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    # ``current`` is the unfinished last line: dropped.

    events: List[ServerSentEvent] = []
    data_buffer = ""
    event_type_buffer = ""
    last_event_id_buffer = ""
    last_event_id_string = ""
    reconnection_time: Optional[int] = None
    block_retry: Optional[int] = None

    for line in lines:
        if line == "":
            # Dispatch the event.
            last_event_id_string = last_event_id_buffer
            if data_buffer == "":
                event_type_buffer = ""
                block_retry = None
                continue
            if data_buffer.endswith("\n"):
                data_buffer = data_buffer[:-1]
            events.append(
                ServerSentEvent(
                    event_type_buffer if event_type_buffer else "message",
                    data_buffer,
                    last_event_id_string,
                    block_retry,
                )
            )
            data_buffer = ""
            event_type_buffer = ""
            block_retry = None
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "event":
            event_type_buffer = value
        elif name == "data":
            data_buffer += value + "\n"
        elif name == "id":
            if "\x00" not in value:
                last_event_id_buffer = value
        elif name == "retry":
            if value and all(c in _ASCII_DIGITS for c in value):
                reconnection_time = int(value)
                block_retry = reconnection_time
        # any other field name: ignored
    return Outcome(events, last_event_id_string, reconnection_time)


# ----------------------------------------------------------------------
# The conformance table
# ----------------------------------------------------------------------


class Case(NamedTuple):
    name: str
    stream: bytes
    events: List[ServerSentEvent]
    last_event_id: str = ""
    retry: Optional[int] = None


_LONG = b"x" * (2 * KiB)

CASES: List[Case] = [
    # --- basics, data field ------------------------------------------------
    Case("single event", b"data: hello\n\n", [E("hello")]),
    Case("two events", b"data: a\n\ndata: b\n\n", [E("a"), E("b")]),
    # --- blocks between one-line data blocks (the shapes a live stream mixes in)
    Case("keep-alive comment block between events", b"data: a\n\n: keep-alive\n\ndata: b\n\n",
         [E("a"), E("b")]),
    Case("typed block between events", b"data: a\n\nevent: log\ndata: b\n\ndata: c\n\n",
         [E("a"), E("b", event="log"), E("c")]),
    Case("empty event type between events is message", b"data: a\n\nevent: \ndata: b\n\ndata: c\n\n",
         [E("a"), E("b"), E("c")]),
    Case("typed block of two data lines", b"data: a\n\nevent: x\ndata: b\ndata: c\n\ndata: d\n\n",
         [E("a"), E("b\nc", event="x"), E("d")]),
    Case("two-line comment block between events", b"data: a\n\n:c1\n:c2\n\ndata: b\n\n",
         [E("a"), E("b")]),
    Case("id block between events", b"data: a\n\nid: 7\ndata: b\n\ndata: c\n\n",
         [E("a"), E("b", id="7"), E("c", id="7")], "7"),
    Case("blank lines between events", b"data: a\n\n\n\n\ndata: b\n\n", [E("a"), E("b")]),
    Case("no space after colon", b"data:hello\n\n", [E("hello")]),
    Case("only one leading space stripped", b"data:  two\n\n", [E(" two")]),
    Case("tab is not stripped", b"data:\tx\n\n", [E("\tx")]),
    Case("trailing space kept", b"data: x \n\n", [E("x ")]),
    Case("value split at first colon only", b"data: a:b: c\n\n", [E("a:b: c")]),
    Case("value that is one colon", b"data::\n\n", [E(":")]),
    Case("data lines joined with LF", b"data: a\ndata: b\ndata: c\n\n", [E("a\nb\nc")]),
    Case("field without colon is empty data", b"data\n\n", [E("")]),
    Case("data with empty value", b"data:\n\n", [E("")]),
    Case("data with one space value", b"data: \n\n", [E("")]),
    Case("two empty data lines", b"data\ndata\n\n", [E("\n")]),
    Case("only the last LF is removed", b"data: a\ndata:\n\n", [E("a\n")]),
    Case("leading empty data line", b"data:\ndata: a\n\n", [E("\na")]),
    Case("NUL in data kept", b"data:\x00\n\n", [E("\x00")]),
    Case("many events", b"".join(b"data: %d\n\n" % i for i in range(50)),
         [E(str(i)) for i in range(50)]),
    Case("blank lines before first event", b"\n\n\r\n\rdata: x\n\n", [E("x")]),
    # --- web-platform-tests eventsource/format-* -------------------------------
    Case("wpt format-field-data", b"data:\n\ndata\ndata\n\ndata:test\n\n",
         [E(""), E("\n"), E("test")]),
    Case(
        "wpt format-field-unknown",
        b"data:test\n data\ndata\nfoobar:xxx\njustsometext\n:thisisacommentyay\n"
        b"data:test\n\n",
        [E("test\n\ntest")],
    ),
    Case(
        "wpt format-field-parsing",
        b"data:\x00\ndata:  2\rData:1\ndata\x00:2\ndata:1\r\x00data:4\nda-ta:3\r"
        b"data_5\ndata:3\rdata:\r\n data:32\ndata:4\n\n",
        [E("\x00\n 2\n1\n3\n\n4")],
    ),
    Case(
        "wpt format-comments",
        b"data:1\r:\x00\n:\r\ndata:2\n:" + _LONG + b"\rdata:3\n:data:fail\r:" + _LONG
        + b"\ndata:4\n\n",
        [E("1\n2\n3\n4")],
    ),
    Case("wpt format-newlines (ends with a lone CR)",
         b"data:test\r\ndata\ndata:test\r\n\r", [E("test\n\ntest")]),
    Case("wpt format-leading-space", b"data:\ttest\rdata: \ndata:test\n\n",
         [E("\ttest\n\ntest")]),
    Case("wpt format-data-before-final-empty-line",
         b"retry:1000\ndata:test1\n\nid:test\ndata:test2",
         [E("test1", retry=1000)], "", 1000),
    Case("wpt format-null-character", b"data:\x00\n\n", [E("\x00")]),
    Case("wpt format-utf-8", b"data:ok\xe2\x80\xa6\n\n", [E("ok\u2026")]),
    Case("wpt format-field-event-empty", b"event: \ndata:data\n\n", [E("data")]),
    Case("wpt format-field-retry-empty", b"retry\ndata:test\n\n", [E("test")]),
    Case("wpt format-field-retry-bogus", b"retry:3000\nretry:1000x\ndata:x\n\n",
         [E("x", retry=3000)], "", 3000),
    Case("wpt format-bom", BOM + b"data:1\n\n" + BOM + b"data:2\n\ndata:3\n\n",
         [E("1"), E("3")]),
    Case("wpt format-bom-2", BOM + BOM + b"data:1\n\ndata:2\n\ndata:3\n\n",
         [E("2"), E("3")]),
    # --- line ends ------------------------------------------------------------
    Case("LF", b"data: a\n\n", [E("a")]),
    Case("CR", b"data: a\r\r", [E("a")]),
    Case("CRLF", b"data: a\r\n\r\n", [E("a")]),
    Case("CRLF is one line end", b"data: a\r\ndata: b\r\n\r\n", [E("a\nb")]),
    Case("mixed line ends in one event", b"data: a\rdata: b\ndata: c\r\n\n",
         [E("a\nb\nc")]),
    Case("LF then CR is two line ends", b"data: a\n\rdata: b\r\n\r\n", [E("a"), E("b")]),
    Case("CR then CRLF", b"data:abc\r\r\ndata:def\r\n\r\n", [E("abc"), E("def")]),
    Case("CR CR LF LF", b"data: a\r\r\n\ndata: b\n\n", [E("a"), E("b")]),
    Case("stream ending LF CR", b"data: a\n\r", [E("a")]),
    Case("CR ends comment", b":x\rdata: 1\r\r", [E("1")]),
    # --- comments ------------------------------------------------------------
    Case("comment only", b":comment\n\n", []),
    Case("bare colon", b":\n", []),
    Case("comment looking like a field", b": data: x\n\n", []),
    Case("comment between data lines", b"data: a\n:comment\ndata: b\n\n", [E("a\nb")]),
    Case("comment does not end an event", b"data: a\n:\n\n", [E("a")]),
    # --- field names ------------------------------------------------------------
    Case("capitalised Data ignored", b"Data: x\n\n", []),
    Case("upper-case DATA ignored", b"DATA: x\n\n", []),
    Case("space before colon", b"data : x\n\n", []),
    Case("leading space in name", b" data: x\n\n", []),
    Case("unknown field", b"foo: bar\n\n", []),
    Case("unknown field without colon", b"justtext\ndata: x\n\n", [E("x")]),
    Case("NUL in field name", b"data\x00: x\n\n", []),
    Case("Event ignored", b"Event: e\ndata: x\n\n", [E("x")]),
    Case("ID ignored", b"ID: 5\ndata: x\n\n", [E("x")]),
    Case("Retry ignored", b"Retry: 5\ndata: x\n\n", [E("x")]),
    Case("dotted capital I is not i", "\u0130d: 5\ndata: x\n\n".encode(), [E("x")]),
    # --- event type ---------------------------------------------------------------
    Case("event type", b"event: add\ndata: 1\n\n", [E("1", event="add")]),
    Case("event type reset after dispatch", b"event: add\ndata: 1\n\ndata: 2\n\n",
         [E("1", event="add"), E("2")]),
    Case("event type reset by a block without data", b"event: add\n\ndata: 2\n\n",
         [E("2")]),
    Case("empty event type is message", b"event:\ndata: x\n\n", [E("x")]),
    Case("event without colon is message", b"event\ndata: x\n\n", [E("x")]),
    Case("last event type wins", b"event: a\nevent: b\ndata: x\n\n", [E("x", event="b")]),
    Case("event type keeps second space", b"event:  a\ndata: x\n\n",
         [E("x", event=" a")]),
    Case("event after data in the block", b"data: x\nevent: late\n\n",
         [E("x", event="late")]),
    Case("event type message", b"event: message\ndata: x\n\n", [E("x")]),
    # --- id -------------------------------------------------------------------
    Case("id", b"id: 1\ndata: a\n\n", [E("a", id="1")], "1"),
    Case("id is sticky", b"id: 1\ndata: a\n\ndata: b\n\n",
         [E("a", id="1"), E("b", id="1")], "1"),
    Case("id without colon resets", b"id: 1\ndata: a\n\nid\ndata: b\n\n",
         [E("a", id="1"), E("b")], ""),
    Case("empty id resets", b"id: 1\ndata: a\n\nid:\ndata: b\n\n",
         [E("a", id="1"), E("b")], ""),
    Case("id with NUL ignored", b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
         [E("a", id="1"), E("b", id="1")], "1"),
    *[
        Case(f"wpt format-field-id-null {value!r}", b"id: 1\nid:" + value + b"\ndata: hello\n\n",
             [E("hello", id="1")], "1")
        for value in (b"\x00\x00", b"x\x00", b"\x00x", b"x\x00x", b" \x00")
    ],
    Case("id set by a block without data", b"id: 7\n\n", [], "7"),
    Case("id from a block without data carries on", b"id: 7\n\ndata: x\n\n",
         [E("x", id="7")], "7"),
    Case("last event ID updated at every blank line", b"id: 1\ndata: a\n\nid: 2\n\n",
         [E("a", id="1")], "2"),
    Case("id in unfinished event not yet in force", b"data: a\n\nid: 9\ndata: b\n",
         [E("a")], ""),
    Case("id keeps second space", b"id:  5\ndata\n\n", [E("", id=" 5")], " 5"),
    Case("id after data in the block", b"data: x\nid: 3\n\n", [E("x", id="3")], "3"),
    Case("id with invalid UTF-8", b"id: \xff\ndata\n\n", [E("", id="\ufffd")], "\ufffd"),
    Case("id with colon", b"id: a:b\ndata\n\n", [E("", id="a:b")], "a:b"),
    # --- retry --------------------------------------------------------------------
    Case("retry", b"retry: 1000\ndata: x\n\n", [E("x", retry=1000)], "", 1000),
    Case("retry without blank line", b"retry:1000\n", [], "", 1000),
    Case("retry-only block dispatches nothing", b"retry: 1000\n\n", [], "", 1000),
    Case("retry only on the event of its block", b"retry: 5\ndata: x\n\ndata: y\n\n",
         [E("x", retry=5), E("y")], "", 5),
    Case("retry not carried over a blank line", b"retry: 5\n\ndata: y\n\n", [E("y")], "", 5),
    Case("retry leading zeros", b"retry: 007\ndata\n\n", [E("", retry=7)], "", 7),
    Case("retry zero", b"retry: 0\ndata\n\n", [E("", retry=0)], "", 0),
    Case("retry big", b"retry: 99999999999999999999\ndata\n\n",
         [E("", retry=99999999999999999999)], "", 99999999999999999999),
    Case("last valid retry wins", b"retry: 1\nretry: 2\ndata\n\n", [E("", retry=2)], "", 2),
    Case("retry after data in the block", b"data\nretry: 3\n\n", [E("", retry=3)], "", 3),
    Case("retry in unfinished event still sets the time", b"retry: 3\ndata: x\n", [], "", 3),
    Case("unterminated retry line not in force", b"retry: 3", [], "", None),
    *[
        Case(f"retry invalid {value!r}", b"retry: " + value + b"\ndata: x\n\n", [E("x")])
        for value in (
            b"10x", b"-1", b"+1", b"1.5", b"1e3", b"0x10", b" 10", b"10 ", b"", b"1 0",
            b"1\x00", b"x",
            "\uff11\uff12".encode(),  # fullwidth digits: str.isdigit() and int() accept them
            "\u0663".encode(),  # ARABIC-INDIC DIGIT THREE
            "\u00b2".encode(),  # SUPERSCRIPT TWO (str.isdigit() is True)
            "\u2460".encode(),  # CIRCLED DIGIT ONE
            b"\xff",
        )
    ],
    *[
        Case(f"invalid retry keeps earlier valid one {value!r}",
             b"retry: 5\nretry: " + value + b"\ndata: x\n\n", [E("x", retry=5)], "", 5)
        for value in (b"1a", b"", "\uff11".encode(), b"-5")
    ],
    Case("retry without colon ignored", b"retry: 5\n\nretry\ndata: x\n\n", [E("x")], "", 5),
    # --- BOM --------------------------------------------------------------------
    Case("BOM stripped", BOM + b"data: x\n\n", [E("x")]),
    Case("BOM then blank line", BOM + b"\n\ndata: x\n\n", [E("x")]),
    Case("BOM then comment", BOM + b":hi\ndata: x\n\n", [E("x")]),
    Case("BOM later is part of the line", b"\n" + BOM + b"data: x\n\ndata: y\n\n", [E("y")]),
    Case("BOM inside a value is kept", b"data: " + BOM + b"x\n\n", [E("\ufeffx")]),
    Case("partial BOM is not a BOM (2 bytes)", b"\xef\xbbdata: x\n\ndata: y\n\n", [E("y")]),
    Case("partial BOM is not a BOM (1 byte)", b"\xefdata: x\n\ndata: y\n\n", [E("y")]),
    Case("near-BOM U+FEFE", "\ufefedata: x\n\ndata: y\n\n".encode(), [E("y")]),
    Case("BOM only", BOM, []),
    # --- UTF-8 ------------------------------------------------------------------
    Case("multi-byte characters", "data: \u00e9\u20ac\U0001f600\n\n".encode(),
         [E("\u00e9\u20ac\U0001f600")]),
    Case("invalid byte", b"data: \xff\n\n", [E("\ufffd")]),
    Case("invalid byte inside", b"data: a\xffb\n\n", [E("a\ufffdb")]),
    Case("lone continuation bytes", b"data: \x80\x80\n\n", [E("\ufffd\ufffd")]),
    Case("truncated sequence before LF", b"data: \xe2\x82\n\n", [E("\ufffd")]),
    Case("truncated sequence before CR", b"data: \xe2\x82\r\r", [E("\ufffd")]),
    Case("truncated 4-byte sequence", b"data: \xf0\x9f\x98\n\n", [E("\ufffd")]),
    Case("truncated then valid", b"data: \xf0\x9f\x98\xf0\x9f\x98\x80\n\n",
         [E("\ufffd\U0001f600")]),
    Case("bad continuation", b"data: \xc3(\n\n", [E("\ufffd(")]),
    Case("encoded surrogate", b"data: \xed\xa0\x80\n\n", [E("\ufffd" * 3)]),
    Case("overlong encoding", b"data: \xc0\xaf\n\n", [E("\ufffd" * 2)]),
    Case("beyond U+10FFFF", b"data: \xf4\x90\x80\x80\n\n", [E("\ufffd" * 4)]),
    Case("invalid UTF-8 in field name", b"d\xffata: x\n\ndata: y\n\n", [E("y")]),
    Case("invalid line alone", b"\xff\n\ndata: y\n\n", [E("y")]),
    Case("truncated sequence at end of stream", b"data: x\n\ndata: \xe2\x82", [E("x")]),
    # --- nothing to dispatch ------------------------------------------------------
    Case("empty stream", b"", []),
    Case("event-only block", b"event: x\n\n", []),
    Case("fields without data", b"id: 1\nevent: x\nretry: 5\n\n", [], "1", 5),
    Case("blank lines only", b"\n\n\r\n\r", []),
    # --- unfinished event at end of stream ---------------------------------------
    Case("unfinished line", b"data: x", []),
    Case("unfinished event after LF", b"data: x\n", []),
    Case("unfinished event after CR", b"data: x\r", []),
    Case("unfinished event after CRLF", b"data: x\r\n", []),
    Case("unfinished second event", b"data: x\n\ndata: y", [E("x")]),
    Case("unfinished event with id", b"id: 5\ndata: x\n", [], ""),
]

_names = [c.name for c in CASES]
assert len(_names) == len(set(_names)), "duplicate case names"


@pytest.mark.parametrize("case", CASES, ids=_names)
def test_table_whole(case: Case) -> None:
    assert run([case.stream]) == (case.events, case.last_event_id, case.retry)


@pytest.mark.parametrize("case", CASES, ids=_names)
def test_table_byte_by_byte(case: Case) -> None:
    assert run(bytewise(case.stream)) == (case.events, case.last_event_id, case.retry)


@pytest.mark.parametrize("case", CASES, ids=_names)
def test_table_split_everywhere(case: Case) -> None:
    expected = (case.events, case.last_event_id, case.retry)
    for i in range(len(case.stream) + 1):
        got = run([case.stream[:i], case.stream[i:]])
        assert got == expected, f"split at {i}"


@pytest.mark.parametrize("case", CASES, ids=_names)
def test_table_agrees_with_reference(case: Case) -> None:
    """The reference model is checked against the table too, so it can be trusted."""
    assert reference_parse(case.stream) == (case.events, case.last_event_id, case.retry)


def test_utf8_expectations_are_pythons() -> None:
    """The U+FFFD counts in the table are what Python's decoder produces."""
    for case in CASES:
        if not case.stream.startswith(b"data: ") or not case.events:
            continue
        line = case.stream[6:].split(b"\n")[0].split(b"\r")[0]
        if "\n" in case.events[0].data:
            continue
        assert case.events[0].data == line.decode("utf-8", "replace"), case.name


# ----------------------------------------------------------------------
# The public objects
# ----------------------------------------------------------------------


def test_server_sent_event_defaults_and_shape() -> None:
    ev = ServerSentEvent()
    assert ev.event == "message" and ev.data == "" and ev.id == "" and ev.retry is None
    assert tuple(ev) == ("message", "", "", None)
    assert ServerSentEvent._fields == ("event", "data", "id", "retry")
    ev2 = ServerSentEvent(data="x", id="1", retry=5, event="add")
    assert (ev2.event, ev2.data, ev2.id, ev2.retry) == ("add", "x", "1", 5)
    with pytest.raises(AttributeError):
        ev2.data = "y"  # type: ignore[misc]
    assert hash(ev2) == hash(ServerSentEvent("add", "x", "1", 5))


def test_dispatched_events_are_server_sent_events() -> None:
    (ev,) = SSEParser().feed(b"event: e\nid: i\nretry: 9\ndata: d\n\n")
    assert type(ev) is ServerSentEvent
    assert ev == ServerSentEvent("e", "d", "i", 9)
    assert (ev.event, ev.data, ev.id, ev.retry) == ("e", "d", "i", 9)


def test_initial_state() -> None:
    p = SSEParser()
    assert p.last_event_id == ""
    assert p.retry is None
    assert p.feed(b"") == []
    assert p.last_event_id == "" and p.retry is None


def test_error_hierarchy() -> None:
    assert issubclass(EventTooLarge, SSEProtocolError)
    assert issubclass(SSEProtocolError, KernelSSEError)
    assert issubclass(KernelSSEError, Exception)


def test_parsers_do_not_share_state() -> None:
    p1 = SSEParser()
    assert p1.feed(b"id: 1\nretry: 5\nevent: e\ndata: a\n") == []
    p2 = SSEParser()
    assert p2.feed(b"data: b\n\n") == [E("b")]
    assert p2.last_event_id == "" and p2.retry is None
    assert p1.feed(b"\n") == [E("a", event="e", id="1", retry=5)]


# ----------------------------------------------------------------------
# Incremental behaviour: what each feed call returns and when state changes
# ----------------------------------------------------------------------


def test_event_returned_by_the_feed_that_completes_it() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\n\ndata: b\n") == [E("a")]
    assert p.feed(b"\n") == [E("b")]
    assert p.feed(b"data: c\n\ndata: d\n\n") == [E("c"), E("d")]


def test_cr_as_last_byte_ends_the_line_at_once() -> None:
    p = SSEParser()
    assert p.feed(b"data: x\r") == []
    assert p.feed(b"\r") == [E("x")]
    assert SSEParser().feed(b"data: x\r\r") == [E("x")]
    assert SSEParser().feed(b"data: x\n\r") == [E("x")]
    assert SSEParser().feed(b"data: x\r\n\r") == [E("x")]


def test_lf_after_cr_in_next_chunk_is_not_a_blank_line() -> None:
    p = SSEParser()
    assert p.feed(b"data: x\r") == []
    assert p.feed(b"\n") == []
    assert p.feed(b"data: y\n") == []
    assert p.feed(b"\n") == [E("x\ny")]


def test_lf_after_cr_across_empty_chunks() -> None:
    p = SSEParser()
    assert p.feed(b"data: x\r") == []
    assert p.feed(b"") == []
    assert p.feed(b"") == []
    assert p.feed(b"\n") == []
    assert p.feed(b"\n") == [E("x")]


def test_cr_then_crlf_across_chunks() -> None:
    p = SSEParser()
    assert p.feed(b"data: x\r") == []
    assert p.feed(b"\r\n") == [E("x")]
    assert p.feed(b"\ndata: y\n\n") == [E("y")]


def test_cr_pairs_only_with_immediately_following_lf() -> None:
    p = SSEParser()
    assert p.feed(b"data: x\r") == []
    assert p.feed(b"data: y\r") == []
    assert p.feed(b"\n\n") == [E("x\ny")]


def retry_of(p: SSEParser) -> Optional[int]:
    """``p.retry``, read through a call so the type checker does not narrow it."""
    return p.retry


def test_retry_in_force_once_its_line_is_complete() -> None:
    p = SSEParser()
    assert p.feed(b"retry: 5") == []
    assert retry_of(p) is None
    assert p.feed(b"\n") == []
    assert retry_of(p) == 5
    assert p.feed(b"retry: 6\r") == []
    assert retry_of(p) == 6
    assert p.feed(b"retry: 7") == []
    assert retry_of(p) == 6
    assert p.feed(b"\r\n") == []
    assert retry_of(p) == 7
    assert p.feed(b"retry: x\n") == []
    assert retry_of(p) == 7
    assert p.feed(b"data: a\n\n") == [E("a", retry=7)]
    assert p.feed(b"data: b\n\n") == [E("b")]
    assert retry_of(p) == 7


def test_last_event_id_changes_only_at_a_blank_line() -> None:
    p = SSEParser()
    assert p.feed(b"id: 1\n") == []
    assert p.last_event_id == ""
    assert p.feed(b"\n") == []
    assert p.last_event_id == "1"
    assert p.feed(b"id: 2\ndata: x\n") == []
    assert p.last_event_id == "1"
    assert p.feed(b"\r") == [E("x", id="2")]
    assert p.last_event_id == "2"
    assert p.feed(b"id\n") == []
    assert p.last_event_id == "2"
    assert p.feed(b"\n") == []
    assert p.last_event_id == ""


def test_bom_after_empty_first_chunk_is_stripped() -> None:
    p = SSEParser()
    assert p.feed(b"") == []
    assert p.feed(BOM + b"data: x\n\n") == [E("x")]


def test_bom_split_over_first_chunks() -> None:
    p = SSEParser()
    assert p.feed(b"\xef") == []
    assert p.feed(b"") == []
    assert p.feed(b"\xbb") == []
    assert p.feed(b"\xbf") == []
    assert p.feed(b"data: x\n\n") == [E("x")]


def test_bom_in_a_later_chunk_is_not_stripped() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\n\n") == [E("a")]
    assert p.feed(BOM + b"data: b\n\n") == []
    assert p.feed(b"data: c\n\n") == [E("c")]


def test_bom_after_unfinished_first_line_is_data() -> None:
    p = SSEParser()
    assert p.feed(b"data: a") == []
    assert p.feed(BOM + b"\n\n") == [E("a\ufeff")]


def test_partial_bom_then_other_bytes() -> None:
    p = SSEParser()
    assert p.feed(b"\xef\xbb") == []
    assert p.feed(b"data: x\n\ndata: y\n\n") == [E("y")]


def test_multibyte_character_split_over_three_chunks() -> None:
    p = SSEParser()
    assert p.feed(b"data: \xe2") == []
    assert p.feed(b"\x82") == []
    assert p.feed(b"\xac\n\n") == [E("\u20ac")]


def test_invalid_sequence_split_over_chunks() -> None:
    p = SSEParser()
    assert p.feed(b"data: \xe2\x82") == []
    assert p.feed(b"x\n\n") == [E("\ufffdx")]
    p = SSEParser()
    assert p.feed(b"data: \xf0\x9f") == []
    assert p.feed(b"\r") == []
    assert p.feed(b"\r") == [E("\ufffd")]


def test_huge_retry_value_does_not_crash() -> None:
    # Python >= 3.11 refuses int() of more than 4300 digits by default.
    digits = b"9" * 5000
    p = SSEParser()
    (ev,) = p.feed(b"retry: " + digits + b"\ndata: x\n\n")
    assert ev.data == "x"
    assert ev.retry == p.retry
    # Ignoring the field, keeping the exact value or clamping it are all fine;
    # raising ValueError (or anything but SSEProtocolError) is not.
    assert p.retry is None or (isinstance(p.retry, int) and p.retry > 0)
    assert p.feed(b"data: y\n\n") == [E("y")]


# ----------------------------------------------------------------------
# Long lines and large volumes (behaviour only: no timing)
# ----------------------------------------------------------------------


def test_four_mib_line_in_one_kib_chunks() -> None:
    size = 4 * MiB
    payload = b"x" * size
    stream = b"id: big\ndata: " + payload + b"\n\ndata: after\n\n"
    p = SSEParser()
    events: List[ServerSentEvent] = []
    for i in range(0, len(stream), KiB):
        events.extend(p.feed(stream[i : i + KiB]))
    assert len(events) == 2
    assert events[0].id == "big"
    assert len(events[0].data) == size and events[0].data == "x" * size
    assert events[1] == E("after", id="big")


def test_four_mib_multibyte_line_in_odd_chunks() -> None:
    text = "\u00e9\u20ac\U0001f600" * (4 * MiB // 9)
    stream = b"data: " + text.encode() + b"\r\n\r\n"
    p = SSEParser()
    events: List[ServerSentEvent] = []
    for i in range(0, len(stream), 1021):
        events.extend(p.feed(stream[i : i + 1021]))
    assert events == [E(text)]


def test_four_mib_comment_line_in_small_chunks() -> None:
    stream = b":" + b"c" * (4 * MiB) + b"\ndata: ok\n\n"
    p = SSEParser()
    events: List[ServerSentEvent] = []
    for i in range(0, len(stream), KiB):
        events.extend(p.feed(stream[i : i + KiB]))
    assert events == [E("ok")]


def test_many_events_in_one_feed() -> None:
    stream = b"".join(b"id: %d\ndata: %d\n\n" % (i, i) for i in range(20000))
    events = SSEParser().feed(stream)
    assert len(events) == 20000
    assert events[-1] == E("19999", id="19999")
    assert all(ev.data == str(i) for i, ev in enumerate(events))


# ----------------------------------------------------------------------
# EventTooLarge
# ----------------------------------------------------------------------


def feed_collect(p: SSEParser, chunk: bytes) -> Tuple[List[ServerSentEvent], Optional[EventTooLarge]]:
    try:
        return p.feed(chunk), None
    except EventTooLarge as exc:
        return exc.events, exc


def test_event_too_large_basic() -> None:
    p = SSEParser(max_event_bytes=100)
    with pytest.raises(EventTooLarge) as info:
        p.feed(b"data: " + b"x" * 1000 + b"\n\n")
    exc = info.value
    assert isinstance(exc, SSEProtocolError) and isinstance(exc, KernelSSEError)
    assert exc.limit == 100
    assert exc.events == []
    assert str(exc)  # says something
    assert p.feed(b"data: ok\n\n") == [E("ok")]


def test_event_too_large_reports_events_before_and_after() -> None:
    p = SSEParser(max_event_bytes=100)
    stream = b"data: a\n\n" + b"data: " + b"x" * 1000 + b"\n\ndata: b\n\ndata: c\n"
    with pytest.raises(EventTooLarge) as info:
        p.feed(stream)
    assert info.value.events == [E("a"), E("b")]
    assert p.feed(b"\n") == [E("c")]


def test_event_too_large_two_oversized_events_in_one_feed() -> None:
    p = SSEParser(max_event_bytes=100)
    big = b"data: " + b"x" * 1000 + b"\n\n"
    with pytest.raises(EventTooLarge) as info:
        p.feed(b"data: a\n\n" + big + b"data: b\n\n" + big + b"data: c\n\n")
    assert info.value.events == [E("a"), E("b"), E("c")]
    assert p.feed(b"data: d\n\n") == [E("d")]


def test_event_too_large_accumulated_data_lines() -> None:
    """Many small data lines add up: each is well under the limit, the event is not."""
    p = SSEParser(max_event_bytes=100)
    with pytest.raises(EventTooLarge) as info:
        p.feed(b"data: 0123456789\n" * 50 + b"\ndata: ok\n\n")
    assert info.value.events == [E("ok")]


def test_event_too_large_accumulated_lines_byte_by_byte() -> None:
    p = SSEParser(max_event_bytes=100)
    stream = b"data: 0123456789\n" * 50 + b"\ndata: ok\n\n"
    events: List[ServerSentEvent] = []
    raised = 0
    for chunk in bytewise(stream):
        got, exc = feed_collect(p, chunk)
        events.extend(got)
        raised += exc is not None
    assert raised == 1
    assert events == [E("ok")]


def test_event_too_large_limit_counts_per_event() -> None:
    """Small events never add up across blank lines."""
    p = SSEParser(max_event_bytes=100)
    stream = b"data: 0123456789012345678901234567890123456789\n\n" * 1000
    events = p.feed(stream)
    assert len(events) == 1000
    p2 = SSEParser(max_event_bytes=100)
    assert run(split_at(stream, range(7, len(stream), 97)), p2).events == events


def test_event_within_limit_is_fine() -> None:
    p = SSEParser(max_event_bytes=1000)
    data = "y" * 400
    assert p.feed(b"event: e\nid: 1\ndata: " + data.encode() + b"\n\n") == [
        E(data, event="e", id="1")
    ]


def test_oversized_unfinished_line_raises_early_and_once() -> None:
    """A line without end must be cut off by the limit, not buffered."""
    limit = 1000
    p = SSEParser(max_event_bytes=limit)
    assert p.feed(b"data: ") == []
    fed = 0
    raised_at: Optional[int] = None
    for i in range(1, 200):
        _, exc = feed_collect(p, b"x" * 100)
        fed += 100
        if exc is not None:
            assert raised_at is None, "raised twice for the same event"
            assert exc.limit == limit
            assert exc.events == []
            raised_at = fed
    assert raised_at is not None
    assert limit // 2 < raised_at <= limit + 100
    assert p.feed(b"\n") == []
    assert p.feed(b"data: still part of the big event\n") == []
    assert p.feed(b"\n") == []
    assert p.feed(b"data: ok\n\n") == [E("ok")]


def test_oversized_event_spanning_feeds_is_discarded_to_its_blank_line() -> None:
    p = SSEParser(max_event_bytes=100)
    assert p.feed(b"data: a\n\nevent: big\ndata: " + b"x" * 60) == [E("a")]
    events, exc = feed_collect(p, b"x" * 60)
    assert exc is not None and events == []
    assert p.feed(b"x" * 10000) == []
    assert p.feed(b"\ndata: more of the big one\n:comment\n") == []
    assert p.feed(b"\n") == []
    assert p.feed(b"data: b\n\n") == [E("b")]


@pytest.mark.parametrize(
    "ending",
    [b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r", b"\r\n\n", b"\n\r\n"],
    ids=repr,
)
def test_oversized_event_any_blank_line_ending(ending: bytes) -> None:
    stream = b"data: " + b"x" * 500 + ending + b"data: ok\n\n"
    for chunks in ([stream], list(bytewise(stream)),
                   *([stream[:i], stream[i:]] for i in range(len(stream) + 1))):
        p = SSEParser(max_event_bytes=100)
        events: List[ServerSentEvent] = []
        raised = 0
        for chunk in chunks:
            got, exc = feed_collect(p, chunk)
            events.extend(got)
            raised += exc is not None
        assert raised == 1
        assert events == [E("ok")]


def test_discarding_keeps_cr_lf_pairing_across_chunks() -> None:
    """The LF after a CR that ended a chunk is no blank line, even while discarding."""
    p = SSEParser(max_event_bytes=100)
    _, exc = feed_collect(p, b"data: " + b"x" * 500 + b"\r")
    assert exc is not None
    assert p.feed(b"\n") == []
    assert p.feed(b"data: hidden\r\n") == []
    assert p.feed(b"\r\n") == []
    assert p.feed(b"data: ok\n\n") == [E("ok")]


def test_oversized_event_type_does_not_leak() -> None:
    p = SSEParser(max_event_bytes=100)
    with pytest.raises(EventTooLarge) as info:
        p.feed(b"event: big\ndata: " + b"x" * 500 + b"\n\ndata: ok\n\n")
    assert info.value.events == [E("ok")]


def test_default_limit_is_16_mib() -> None:
    chunk = b"x" * MiB
    p = SSEParser()
    assert p.feed(b"data: ") == []
    raised: List[EventTooLarge] = []
    for _ in range(18):
        _, exc = feed_collect(p, chunk)
        if exc is not None:
            raised.append(exc)
    assert len(raised) == 1
    assert raised[0].limit == 16 * MiB
    assert p.feed(b"\n\ndata: ok\n\n") == [E("ok")]


def test_default_limit_allows_8_mib() -> None:
    data = b"z" * (8 * MiB)
    p = SSEParser()
    (ev,) = p.feed(b"data: " + data + b"\n\n")
    assert len(ev.data) == 8 * MiB


def _peak_while(feed: "Iterator[None]") -> int:
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in feed:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


@pytest.mark.parametrize(
    "start",
    [b"data: ", b"data: a\ndata: ", b":", b"unknown: ", b"id: ", b"event: "],
    ids=repr,
)
def test_memory_does_not_grow_on_an_endless_line(start: bytes) -> None:
    """32 MiB of one line after a small limit: the parser must not keep it.

    The unfinished line counts toward the limit, so it must trip; only for a
    comment, whose text is never used, may an implementation instead skip the
    bytes without buffering them.  Either way memory stays bounded and the
    stream goes on afterwards.
    """
    limit = 4 * KiB
    chunk = b"x" * (64 * KiB)
    p = SSEParser(max_event_bytes=limit)
    raised = 0

    def feeding() -> Iterator[None]:
        nonlocal raised
        got, exc = feed_collect(p, start)
        assert got == []
        raised += exc is not None
        for _ in range(512):  # 32 MiB
            got, exc = feed_collect(p, chunk)
            assert got == []
            raised += exc is not None
            yield None

    peak = _peak_while(feeding())
    assert peak < 2 * MiB, f"peak traced memory {peak} bytes"
    assert raised <= 1
    if not start.startswith(b":"):
        assert raised == 1
    assert p.feed(b"\n\ndata: ok\n\n") == [E("ok")]


# ----------------------------------------------------------------------
# Hypothesis: strategies
# ----------------------------------------------------------------------

FIELD_NAMES = [
    b"data", b"data", b"data", b"event", b"id", b"retry",
    b"Data", b"DATA", b"ID", b"Retry", b"Event", b"foo", b"", b" data", b"data ",
    BOM + b"data", b"dat\xffa", b"d", b"\x00",
]
SEPARATORS = [b":", b": ", b": ", b":  ", b"", b"::", b" :", b":\t"]
VALUES = [
    b"", b"x", b"hello world", b"0", b"5", b"123", b"007", b"-1", b"1a", b" 5",
    b"\x00", b"a\x00b", b"\xff", b"\xfe\xfe", b"\xe2\x82", b"\xe2\x82\xac", b"\xf0\x9f\x98",
    b"\xf0\x9f\x98\x80", b"\xc3", b"\xc3\xa9", b"\xed\xa0\x80", BOM, b"\xef\xbb", b":",
    b"a:b", "\uff11\uff12".encode(), "\u0663".encode(), "\u00b2".encode(), b"\r", b"\n",
]
LINE_ENDS = [b"\n", b"\r", b"\r\n", b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r", b""]

field_lines = st.tuples(
    st.sampled_from(FIELD_NAMES),
    st.sampled_from(SEPARATORS),
    st.one_of(st.sampled_from(VALUES), st.binary(max_size=6)),
    st.sampled_from(LINE_ENDS),
).map(b"".join)
comment_lines = st.tuples(
    st.just(b":"), st.sampled_from(VALUES), st.sampled_from(LINE_ENDS)
).map(b"".join)
tokens = st.one_of(
    field_lines,
    field_lines,
    field_lines,
    comment_lines,
    st.sampled_from(LINE_ENDS + [BOM, b"\xef", b"\xbb\xbf", b"\r", b"\n"]),
    st.binary(max_size=8),
)
grammar_streams = st.tuples(
    st.sampled_from([b"", b"", BOM, BOM + BOM, b"\xef\xbb", b"\xef"]),
    st.lists(tokens, max_size=25),
).map(lambda t: t[0] + b"".join(t[1]))
streams = st.one_of(grammar_streams, grammar_streams, grammar_streams, st.binary(max_size=200))

PROPS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------
# Hypothesis: properties
# ----------------------------------------------------------------------


@PROPS
@given(stream=streams, data=st.data())
def test_any_chunking_gives_the_same_result(stream: bytes, data: st.DataObject) -> None:
    whole = run([stream])
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    assert run(split_at(stream, cuts)) == whole


@PROPS
@given(stream=streams)
def test_byte_by_byte_gives_the_same_result(stream: bytes) -> None:
    assert run(bytewise(stream)) == run([stream])


@PROPS
@given(stream=streams, data=st.data())
def test_matches_reference_model(stream: bytes, data: st.DataObject) -> None:
    expected = reference_parse(stream)
    assert run([stream]) == expected
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts")
    assert run(split_at(stream, cuts)) == expected


@settings(PROPS, max_examples=150)
@given(
    chunks=st.lists(st.one_of(grammar_streams, st.binary(max_size=64)), max_size=10),
    limit=st.one_of(st.integers(1, 64), st.just(16 * MiB)),
)
def test_random_input_raises_only_protocol_errors(chunks: List[bytes], limit: int) -> None:
    p = SSEParser(max_event_bytes=limit)
    for chunk in chunks:
        try:
            events = p.feed(chunk)
        except SSEProtocolError as exc:
            if isinstance(exc, EventTooLarge):
                assert exc.limit == limit
                events = exc.events
            else:  # pragma: no cover - any other protocol error is allowed too
                events = []
        for ev in events:
            assert type(ev) is ServerSentEvent
            assert isinstance(ev.event, str) and ev.event
            assert isinstance(ev.data, str)
            assert isinstance(ev.id, str) and "\x00" not in ev.id
            assert ev.retry is None or (isinstance(ev.retry, int) and ev.retry >= 0)
        assert isinstance(p.last_event_id, str)
        assert p.retry is None or isinstance(p.retry, int)


@PROPS
@given(stream=streams)
def test_generous_limit_never_trips(stream: bytes) -> None:
    """A limit above anything one event of the stream can hold changes nothing."""
    p = SSEParser(max_event_bytes=4 * len(stream) + 64)
    assert run(bytewise(stream), p) == reference_parse(stream)


# Oversized events mixed with normal ones, under a small limit.
LIMIT = 128

_small_text = st.text(alphabet="abcXYZ019 \u00e9", max_size=5)
_eol = st.sampled_from([b"\n", b"\r", b"\r\n"])


def _blank_after(draw: st.DrawFn, eol: bytes) -> bytes:
    """A blank line that stays one after ``eol`` (an LF after a CR would not)."""
    blank = draw(_eol)
    return b"\r\n" if eol == b"\r" and blank == b"\n" else blank


@st.composite
def small_block(draw: st.DrawFn) -> bytes:
    """A block far below LIMIT: at most ~30 bytes."""
    eol = draw(_eol)
    lines: List[bytes] = []
    if draw(st.booleans()):
        lines.append(b"id: " + draw(st.sampled_from([b"", b"1", b"abc"])))
    if draw(st.booleans()):
        lines.append(b"event: " + draw(st.sampled_from([b"", b"add"])))
    if draw(st.booleans()):
        lines.append(b"retry: " + draw(st.sampled_from([b"5", b"x"])))
    if draw(st.booleans()):
        lines.append(b"data: " + draw(_small_text).encode())
    lines = draw(st.permutations(lines))
    return b"".join(line + eol for line in lines) + _blank_after(draw, eol)


@st.composite
def big_block(draw: st.DrawFn) -> bytes:
    """A block whose data is at least 2 x LIMIT (no id or retry in it)."""
    eol = draw(_eol)
    head = b""
    if draw(st.booleans()):
        head += b"event: big" + eol
    if draw(st.booleans()):
        head += b":comment" + eol
    unit = draw(st.sampled_from([b"x", b"\xc3\xa9", b"ab"]))
    if draw(st.booleans()):
        size = draw(st.integers(2 * LIMIT, 6 * LIMIT))
        body = b"data: " + unit * size + eol
    else:
        count = draw(st.integers(2 * LIMIT // 20 + 1, 4 * LIMIT // 20))
        body = (b"data: " + unit * 20 + eol) * count
    return head + body + _blank_after(draw, eol)


mixed_blocks = st.lists(st.one_of(small_block(), big_block()), max_size=6)


def _is_big(block: bytes) -> bool:
    return len(block) > LIMIT


def _collect(chunks: Iterable[bytes]) -> Tuple[Outcome, int]:
    p = SSEParser(max_event_bytes=LIMIT)
    events: List[ServerSentEvent] = []
    raised = 0
    for chunk in chunks:
        got, exc = feed_collect(p, chunk)
        events.extend(got)
        if exc is not None:
            assert exc.limit == LIMIT
            raised += 1
    return Outcome(events, p.last_event_id, p.retry), raised


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=mixed_blocks, data=st.data())
def test_oversized_events_are_dropped_whatever_the_chunking(
    blocks: List[bytes], data: st.DataObject
) -> None:
    stream = b"".join(blocks)
    n_big = sum(map(_is_big, blocks))
    expected = reference_parse(b"".join(b for b in blocks if not _is_big(b)))

    whole, raised = _collect([stream])
    assert whole == expected
    assert raised == (1 if n_big else 0)

    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    chunked, raised = _collect(split_at(stream, cuts))
    assert chunked == expected
    assert (1 if n_big else 0) <= raised <= n_big


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=mixed_blocks)
def test_oversized_events_byte_by_byte(blocks: List[bytes]) -> None:
    stream = b"".join(blocks)
    expected = reference_parse(b"".join(b for b in blocks if not _is_big(b)))
    got, raised = _collect(bytewise(stream))
    assert got == expected
    assert raised == sum(map(_is_big, blocks))


def test_python_version_supported() -> None:
    assert sys.version_info >= (3, 8)
