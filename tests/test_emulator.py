"""Tests of the Kernel API emulator: the spec's responses, scripting, every fault, shutdown.

Everything goes over real sockets on 127.0.0.1. Streams are read raw (chunk by
chunk) where the test is about bytes on the wire, with http.client elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from kernel_sse_emulator import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_PAGE_SIZE,
    DEMO_ACTION,
    DEMO_APP,
    DEMO_INVOCATION_ID,
    DEMO_VERSION,
    LIST_FAULTS,
    Action,
    EmittedEvent,
    Emulator,
    Error,
    Fault,
    Gate,
    Log,
    Malformed,
    Pause,
    PostFault,
    Raw,
    Scenario,
    Script,
    Settings,
    State,
    Unknown,
    demo_script,
    format_timestamp,
    load_scenario,
    load_scenario_file,
    main,
    parse_since,
    parse_timestamp,
    running_emulator,
    scenario_from_json,
    script_from_dict,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = "2025-06-20T12:00:00Z"
START_NS = 1750420800 * 10**9
EVENTS = "/invocations/inv/events"


class RawStream:
    """A GET read straight off a socket, so a test sees chunks, line ends and drops as sent."""

    def __init__(self, port: int, path: str, headers: Dict[str, str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port, "Connection: close"]
        lines += ["%s: %s" % item for item in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.buffer = bytearray()
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        self.status = int(head[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        self.chunk_times: List[Tuple[float, bytes]] = []

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buffer += data

    def _until(self, separator: bytes) -> bytes:
        while separator not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(separator)
        self.buffer = bytearray(rest)
        return bytes(head)

    def _exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def chunk(self) -> bytes:
        """The next chunk's data; b"" for the terminating chunk. EOFError if closed first."""
        size = int(self._until(b"\r\n"), 16)
        data = self._exact(size + 2)
        assert data.endswith(b"\r\n")  # for the last chunk: no trailers, the final CRLF
        self.chunk_times.append((time.monotonic(), data[:-2]))
        return data[:-2]

    def body(self) -> Tuple[bytes, bool]:
        """Chunk data to the end: (data, True) after the terminator, (data, False) if dropped."""
        data = b""
        try:
            while True:
                chunk = self.chunk()
                if not chunk:
                    return data, True
                data += chunk
        except EOFError:
            return data, False

    def until_events(self, count: int) -> List[Any]:
        """Read chunks until ``count`` more whole LF-framed events arrived; return them decoded."""
        data = b""
        while data.count(b"\n\n") < count:
            data += self.chunk()
        assert data.endswith(b"\n\n") and data.count(b"\n\n") == count
        return events_in(data)

    def close(self) -> None:
        self.sock.close()


def auth(emu: Emulator) -> Dict[str, str]:
    return {"Authorization": "Bearer %s" % emu.api_key}


def open_stream(emu: Emulator, path: str = EVENTS, headers: Optional[Dict[str, str]] = None) -> RawStream:
    """A raw GET of ``path``, authorized unless ``headers`` say otherwise."""
    return RawStream(emu.port, path, auth(emu) if headers is None else headers)


def events_in(body: bytes, eol: bytes = b"\n") -> List[Any]:
    """Decode a body of ``data: <json>`` events, asserting the framing."""
    blocks = body.split(eol + eol)
    assert blocks[-1] == b""
    decoded = []
    for block in blocks[:-1]:
        assert block.startswith(b"data: ") and eol not in block
        decoded.append(json.loads(block[len(b"data: ") :]))
    return decoded


def read_all(
    emu: Emulator, path: str = EVENTS, headers: Optional[Dict[str, str]] = None
) -> Tuple[RawStream, bytes, bool]:
    """The whole body of a raw GET: (stream, data, ended cleanly)."""
    stream = open_stream(emu, path, headers)
    try:
        body, ended = stream.body()
    finally:
        stream.close()
    return stream, body, ended


def request(
    emu: Emulator, path: str, headers: Optional[Dict[str, str]] = None
) -> Tuple[int, http.client.HTTPMessage, bytes]:
    """A plain GET with http.client (authorized by default): status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    try:
        conn.request("GET", path, headers=auth(emu) if headers is None else headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def script(*steps: Any, **options: Any) -> Script:
    options.setdefault("start", START)
    return Script("inv", steps, **options)


def kinds(events: List[Any]) -> List[str]:
    return [event["event"] for event in events if event["event"] != "sse_heartbeat"]


# ---------------------------------------------------------------- the spec's responses


def test_stream_is_spec_shaped(emulator: Emulator) -> None:
    emulator.add(
        script(
            State("queued"),
            State("running"),
            Log("hello"),
            Error("boom", "it broke", details=[{"code": "x", "message": "y"}], inner_error={"code": "z"}),
            State("succeeded", output={"ok": True}),
        )
    )
    stream, body, ended = read_all(emulator)
    assert stream.status == 200 and ended
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["x-sse-content-type"] == "application/json"
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in stream.headers
    events = events_in(body)
    assert kinds(events) == ["invocation_state"] * 2 + ["log", "error", "invocation_state"]
    queued, running, log, error, done = events
    assert log == {"event": "log", "timestamp": "2025-06-20T12:00:00.002000000Z", "message": "hello"}
    assert error == {
        "event": "error",
        "timestamp": "2025-06-20T12:00:00.003000000Z",
        "error": {
            "code": "boom",
            "message": "it broke",
            "details": [{"code": "x", "message": "y"}],
            "inner_error": {"code": "z"},
        },
    }
    assert queued["invocation"] == {
        "id": "inv",
        "app_name": "emulated-app",
        "version": "1.0.0",
        "action_name": "run",
        "status": "queued",
        "started_at": START,
        "finished_at": None,
    }
    assert running["invocation"]["status"] == "running"
    assert done["timestamp"] == "2025-06-20T12:00:00.004000000Z"
    assert done["invocation"]["status"] == "succeeded"
    assert done["invocation"]["finished_at"] == done["timestamp"]
    assert json.loads(done["invocation"]["output"]) == {"ok": True}
    assert done["invocation"]["status_reason"] == "Invocation completed successfully"


def test_failed_state_is_terminal_with_reason(emulator: Emulator) -> None:
    emulator.add(
        script(State("running", status_reason="warming up"), State("failed", output="Traceback: ..."), Log("never sent"))
    )
    _, body, ended = read_all(emulator)
    assert ended and events_in(body)[0]["invocation"]["status_reason"] == "warming up"
    last = events_in(body)[-1]["invocation"]
    assert (last["status"], last["output"], last["status_reason"]) == ("failed", "Traceback: ...", "Invocation failed")


def test_get_invocation(emulator: Emulator) -> None:
    inv = emulator.add(script(State("running"), Gate(), State("succeeded")))
    assert inv.wait_idle(0.2) is False  # held at the gate
    status, headers, body = request(emulator, "/invocations/inv")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body) == inv.invocation() and inv.invocation()["status"] == "running"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
    ids=["missing", "wrong", "scheme", "empty"],
)
@pytest.mark.parametrize("path", [EVENTS, "/invocations/inv"])
def test_bad_key_is_401(emulator: Emulator, headers: Dict[str, str], path: str) -> None:
    emulator.add(script(State("succeeded")))
    status, response_headers, body = request(emulator, path, headers)
    assert status == 401 and response_headers["Content-Type"] == "application/json"
    error = json.loads(body)
    assert set(error) == {"code", "message"} and error["code"] == "unauthorized"


def test_any_key_when_none_is_set(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(api_key=None)
    emu.add(script(State("succeeded")))
    assert request(emu, EVENTS, {"Authorization": "Bearer whatever"})[0] == 200
    assert request(emu, EVENTS, {})[0] == 401


@pytest.mark.parametrize(
    "path", ["/invocations/nope/events", "/invocations/nope", "/nope", "/invocations//events", "/invocations/inv/logs"]
)
def test_unknown_is_404(emulator: Emulator, path: str) -> None:
    emulator.add(script(State("succeeded")))
    status, _, body = request(emulator, path)
    assert status == 404 and json.loads(body)["code"] == "not_found"


@pytest.mark.parametrize("since", ["yesterday", "2025-13-01T00:00:00Z", "2025-06-20", "5x", "-5m", "1h30", "m"])
def test_unparsable_since_is_400(emulator: Emulator, since: str) -> None:
    emulator.add(script(State("succeeded")))
    status, _, body = request(emulator, EVENTS + "?since=" + urllib.parse.quote(since))
    assert status == 400
    error = json.loads(body)
    assert set(error) == {"code", "message"} and error["code"] == "bad_request"


def test_percent_encoded_id_and_request_record(emulator: Emulator) -> None:
    emulator.add(Script("a/b c", [State("succeeded")]))
    path = "/invocations/a%2Fb%20c/events?since=1h&x=1"
    assert request(emulator, path, {"Authorization": "Bearer %s" % emulator.api_key, "X-Kernel-Project-Id": "p1"})[0] == 200
    (record,) = emulator.requests
    assert record.path == path and record.invocation_id == "a/b c"
    assert record.query == {"since": ["1h"], "x": ["1"]}
    assert record.header("x-kernel-project-id") == "p1" and record.header("x-missing") is None
    assert record.header("AUTHORIZATION") == "Bearer %s" % emulator.api_key
    assert (record.status, record.attempt, record.events_written) == (200, 0, 1)
    assert str(emulator.api_key) not in repr(record) and "<redacted>" in repr(record)
    emulator.clear_requests()
    assert emulator.requests == []


# ---------------------------------------------------------------- since, replay, live


def test_since_timestamp_is_inclusive(emulator: Emulator) -> None:
    emulator.add(script(Log("a"), Log("b"), Log("c"), State("succeeded")))
    for since in (
        "2025-06-20T12:00:00.001000000Z",  # exactly b's time
        "2025-06-20T12:00:00.001Z",
        "2025-06-20T14:00:00.001+02:00",
        "2025-06-20t07:30:00.0010000001-04:30",  # past nine digits: truncated
        "2025-06-20T12:00:00.000999999Z",  # just before b
    ):
        _, body, _ = read_all(emulator, EVENTS + "?since=" + urllib.parse.quote(since))
        assert [e.get("message") for e in events_in(body)] == ["b", "c", None], since
    _, body, _ = read_all(emulator, EVENTS + "?since=")  # empty: from the start
    assert len(events_in(body)) == 4


def test_since_duration(emulator: Emulator) -> None:
    now = time.time_ns()
    emulator.add(
        Script(
            "inv",
            [
                Log("2h ago", at=format_timestamp(now - 7200 * 10**9)),
                Log("1h ago", at=format_timestamp(now - 3600 * 10**9)),
                Log("10m ago", at=format_timestamp(now - 600 * 10**9)),
                Log("1m ago", at=format_timestamp(now - 60 * 10**9)),
                State("succeeded"),
            ],
        )
    )
    for since, expected in (("5m", 1), ("90s", 1), ("11m", 2), ("1h30m", 3), ("1.5h", 3), ("3h", 4)):
        _, body, _ = read_all(emulator, EVENTS + "?since=" + since)
        assert len(events_in(body)) == expected + 1, since


def test_parse_helpers() -> None:
    assert format_timestamp(START_NS + 123456789) == "2025-06-20T12:00:00.123456789Z"
    assert parse_timestamp("2025-06-20T12:00:00.123456789Z") == START_NS + 123456789
    assert parse_timestamp("2025-06-20T12:00:00Z") == START_NS
    assert parse_timestamp("2025-06-20T13:30:00.5+01:30") == START_NS + 500000000
    for bad in ("2025-06-20T12:00:00", "2025-06-20T12:00:00+24:00", "2025-02-30T12:00:00Z", " 2025-06-20T12:00:00Z"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)
    now = START_NS
    assert parse_since("5m", now) == now - 300 * 10**9
    assert parse_since("1h30m", now) == now - 5400 * 10**9
    assert parse_since("1.5s", now) == now - 1500 * 10**6
    assert parse_since("250ms", now) == now - 250 * 10**6
    assert parse_since("7us", now) == parse_since("7\u00b5s", now) == now - 7000
    assert parse_since("0", now) == now
    assert parse_since(START) == START_NS


def test_replay_then_live_through_a_gate(emulator: Emulator) -> None:
    gate = Gate()
    emulator.heartbeat_interval = None  # so that only events can arrive
    inv = emulator.add(script(Log("a"), gate, Log("b"), State("succeeded")))
    assert gate.reached.wait(5)
    stream = open_stream(emulator)
    try:
        assert [e["message"] for e in stream.until_events(1)] == ["a"]
        stream.sock.settimeout(0.2)
        with pytest.raises(socket.timeout):  # blocked: nothing more is written
            stream.chunk()
        stream.sock.settimeout(5)
        gate.release()
        body, ended = stream.body()
    finally:
        stream.close()
    assert ended and kinds(events_in(body)) == ["log", "invocation_state"]
    assert inv.wait_idle() and [e.kind for e in inv.emitted()] == ["log", "log", "state"]


def test_steps_appended_while_connected(emulator: Emulator) -> None:
    inv = emulator.add(script(State("running")))
    stream = open_stream(emulator)
    try:
        assert kinds(stream.until_events(1)) == ["invocation_state"]
        inv.append(Log("live 1"), Log("live 2"))
        assert [e.get("message") for e in stream.until_events(2) if e["event"] == "log"] == ["live 1", "live 2"]
        inv.append(State("succeeded"))
        body, ended = stream.body()
    finally:
        stream.close()
    assert ended and kinds(events_in(body)) == ["invocation_state"]


def test_equal_timestamps_are_both_sent_and_replayed(emulator: Emulator) -> None:
    inv = emulator.add(script(Log("same", at=1.5), Log("same", at=1.5), State("succeeded", at=1.5)))
    _, body, _ = read_all(emulator)
    events = events_in(body)
    assert [e["timestamp"] for e in events] == ["2025-06-20T12:00:01.500000000Z"] * 3
    _, replay, _ = read_all(emulator, EVENTS + "?since=" + events[0]["timestamp"])
    assert events_in(replay) == events
    assert inv.emitted()[0].json() == events[0]


def test_timestamps_explicit_strings_and_pauses(emulator: Emulator) -> None:
    emulator.add(
        script(
            Log("a", at="2025-06-20T12:00:00+00:00"),  # sent as written
            Log("b"),
            Pause(0.05),
            Log("c"),
            State("succeeded"),
            tick=0.5,
        )
    )
    _, body, _ = read_all(emulator)
    assert [e["timestamp"] for e in events_in(body)] == [
        "2025-06-20T12:00:00+00:00",
        "2025-06-20T12:00:00.500000000Z",
        "2025-06-20T12:00:01.050000000Z",
        "2025-06-20T12:00:01.550000000Z",
    ]


def test_heartbeats_while_idle(emulator: Emulator) -> None:
    emulator.heartbeat_interval = 0.05
    emulator.add(script(State("running"), Pause(0.4), State("succeeded")))
    _, body, _ = read_all(emulator)
    events = events_in(body)
    beats = [e for e in events if e["event"] == "sse_heartbeat"]
    assert 3 <= len(beats) <= 9 and kinds(events) == ["invocation_state"] * 2
    assert set(beats[0]) == {"event", "timestamp"}
    assert abs(parse_timestamp(beats[0]["timestamp"]) - time.time_ns()) < 10 * 10**9  # the server's clock
    assert emulator.requests[0].heartbeats_written == len(beats)


def test_no_heartbeats_when_disabled(emulator: Emulator) -> None:
    emulator.heartbeat_interval = None
    emulator.add(script(State("running"), Pause(0.3), State("succeeded")))
    _, body, _ = read_all(emulator)
    assert kinds(events_in(body)) == ["invocation_state"] * 2 and b"sse_heartbeat" not in body


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_first_attempts_fail_with_status(emulator: Emulator, status: int) -> None:
    failure = Fault(status=status, retry_after="2" if status == 429 else None)
    inv = emulator.add(script(State("succeeded"), attempts=[failure, failure]))
    for _ in range(2):
        code, headers, body = request(emulator, EVENTS)
        assert code == status and set(json.loads(body)) == {"code", "message"}
        assert headers["Retry-After"] == ("2" if status == 429 else None)
    assert request(emulator, EVENTS)[0] == 200
    assert inv.attempts == 3 and [r.attempt for r in emulator.requests] == [0, 1, 2]


def test_status_fault_precedes_auth(emulator: Emulator) -> None:
    emulator.add(script(State("succeeded"), attempts=[Fault(status=503)]))
    assert request(emulator, EVENTS, {})[0] == 503
    assert request(emulator, EVENTS, {})[0] == 401


def test_redirect_to_another_origin(emulator: Emulator, make_emulator: Callable[..., Emulator]) -> None:
    other = make_emulator()
    other.add(script(State("succeeded")))
    emulator.add(script(State("succeeded"), fault=Fault(redirect_to=other.url)))
    status, headers, body = request(emulator, EVENTS + "?since=5m")
    assert (status, body) == (307, b"")
    assert headers["Location"] == other.url + EVENTS + "?since=5m"
    assert other.requests == []


def test_redirect_to_same_origin(emulator: Emulator) -> None:
    emulator.add(script(State("succeeded"), attempts=[Fault(redirect_to="", redirect_status=308)]))
    status, headers, _ = request(emulator, EVENTS)
    assert (status, headers["Location"]) == (308, EVENTS)
    assert request(emulator, EVENTS)[0] == 200


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_drop_mid_event(emulator: Emulator, reset: bool) -> None:
    steps = (Log("one"), Log("two"), Log("three"), State("succeeded"))
    emulator.add(script(*steps, attempts=[Fault(drop_after=2, reset=reset)]))
    stream = open_stream(emulator)
    try:
        data = b""
        with pytest.raises(ConnectionResetError if reset else EOFError):
            while True:
                data += stream.chunk()
    finally:
        stream.close()
    complete, _, half = data.rpartition(b"\n\n")
    assert [e["message"] for e in events_in(complete + b"\n\n")] == ["one", "two"]
    assert half.startswith(b'data: {"event":"log"') and b"three" not in half  # half a data: line
    _, body, ended = read_all(emulator)  # the next attempt is whole
    assert ended and len(events_in(body)) == 4


def test_clean_end_before_terminal(emulator: Emulator) -> None:
    emulator.add(script(Log("one"), Log("two"), State("succeeded"), attempts=[Fault(end_after=1), Fault(end_after=0)]))
    _, body, ended = read_all(emulator)
    assert ended and [e["message"] for e in events_in(body)] == ["one"]
    _, body, ended = read_all(emulator)
    assert ended and body == b""


def test_silence(emulator: Emulator) -> None:
    emulator.heartbeat_interval = 0.05
    emulator.add(script(Log("one"), Log("two"), State("succeeded"), fault=Fault(silence_after=1, silence=0.5)))
    stream = open_stream(emulator)
    try:
        assert [e["message"] for e in stream.until_events(1)] == ["one"]
        silent_from = time.monotonic()
        body, ended = stream.body()
    finally:
        stream.close()
    first_next = stream.chunk_times[1][0]
    assert first_next - silent_from >= 0.45  # no bytes at all, heartbeats included
    assert ended and kinds(events_in(body)) == ["log", "invocation_state"]


def test_byte_by_byte(emulator: Emulator) -> None:
    emulator.add(script(Log("caf\u00e9"), State("succeeded"), fault=Fault(byte_by_byte=True)))
    stream = open_stream(emulator)
    try:
        body, ended = stream.body()
    finally:
        stream.close()
    assert ended and all(len(data) == 1 for _, data in stream.chunk_times[:-1])
    assert len(stream.chunk_times) == len(body) + 1
    assert [e.get("message") for e in events_in(body)] == ["caf\u00e9", None]


def test_byte_delay_trickles(emulator: Emulator) -> None:
    emulator.add(script(Log("x"), fault=Fault(byte_by_byte=True, byte_delay=0.002)))
    started = time.monotonic()
    stream = open_stream(emulator)
    try:
        stream.until_events(1)
    finally:
        stream.close()
    size = len(stream.chunk_times)
    assert size > 50 and time.monotonic() - started >= size * 0.002 * 0.9


@pytest.mark.parametrize("eol", ["\r\n", "\r"])
def test_line_endings_and_bom(emulator: Emulator, eol: str) -> None:
    emulator.heartbeat_interval = 0.05
    emulator.add(script(Log("a"), Pause(0.12), State("succeeded"), fault=Fault(line_ending=eol, bom=True)))
    _, body, _ = read_all(emulator)
    assert body.startswith(b"\xef\xbb\xbf") and body.count(b"\xef\xbb\xbf") == 1
    events = events_in(body[3:], eol.encode())
    assert kinds(events) == ["log", "invocation_state"] and len(events) > 2  # heartbeats too
    assert b"\n" not in body or eol == "\r\n"


def test_bad_data_steps(emulator: Emulator) -> None:
    emulator.add(
        script(
            Log(b'caf\xe9 "quoted" \\ \x01'),
            Malformed(),
            Unknown("browser_ready", {"browser": {"id": "b1"}}),
            Raw(b": a comment\n\ndata: raw\n\n"),
            State("succeeded"),
        )
    )
    _, body, ended = read_all(emulator)
    assert ended
    blocks = body.split(b"\n\n")
    assert blocks[0] == (
        b'data: {"event":"log","timestamp":"2025-06-20T12:00:00.000000000Z",'
        b'"message":"caf\xe9 \\"quoted\\" \\\\ \\u0001"}'
    )
    with pytest.raises(UnicodeDecodeError):
        blocks[0].decode("utf-8")
    assert json.loads(blocks[0][6:].decode("latin-1"))["message"] == 'caf\xe9 "quoted" \\ \x01'
    assert blocks[1] == b'data: {"event": "log", "timestamp": '
    assert json.loads(blocks[2][6:]) == {
        "event": "browser_ready",
        "timestamp": "2025-06-20T12:00:00.002000000Z",
        "browser": {"id": "b1"},
    }
    assert blocks[3:5] == [b": a comment", b"data: raw"]


def test_very_large_line(emulator: Emulator) -> None:
    size = 17 * 1024 * 1024  # past a 16 MiB event limit
    emulator.add(script(Log("x" * size), State("succeeded")))
    _, body, ended = read_all(emulator)
    first, rest = body.split(b"\n", 1)
    assert ended and len(first) > size and rest.startswith(b"\ndata: ")


def test_keep_open_after_terminal(emulator: Emulator) -> None:
    emulator.heartbeat_interval = 0.05
    inv = emulator.add(script(State("succeeded"), fault=Fault(keep_open=True)))
    stream = open_stream(emulator)
    try:
        assert kinds(stream.until_events(1)) == ["invocation_state"]
        inv.append(Log("after the end"))
        late: List[Any] = []
        while not any(e["event"] == "log" for e in late):
            late += stream.until_events(1)
        late += stream.until_events(1)  # and it stays open: more heartbeats
    finally:
        stream.close()
    assert late[-1]["event"] == "sse_heartbeat"


def test_fault_for_attempts() -> None:
    first, rest = Fault(status=503), Fault(bom=True)
    s = Script("x", fault=rest, attempts=[first])
    assert (s.fault_for(0), s.fault_for(1), s.fault_for(7)) == (first, rest, rest)
    with pytest.raises(ValueError):
        Fault(line_ending="\n\r")
    with pytest.raises(ValueError):
        Log("x", at="not a time")
    with pytest.raises(ValueError):
        Script("x", start="2025-06-20")


# ---------------------------------------------------------------- scripts from JSON, the demo, hooks


def test_script_from_json(tmp_path: Path, emulator: Emulator) -> None:
    data = {
        "id": "inv",
        "start": START,
        "app_name": "my-app",
        "fault": {"line_ending": "\r\n"},
        "attempts": [{"status": 502}],
        "steps": [
            {"type": "state", "status": "running"},
            {"type": "log", "message": "hi", "at": 2},
            {"type": "pause", "seconds": 0.01},
            {"type": "error", "code": "c", "message": "m"},
            {"type": "unknown", "kind": "k", "fields": {"a": 1}},
            {"type": "malformed", "payload": "{"},
            {"type": "raw", "data": ": ping\r\n\r\n"},
            {"type": "state", "status": "succeeded", "output": [1, 2]},
        ],
    }
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps([data]), encoding="utf-8")
    (loaded,) = load_scenario(str(path))
    assert loaded == script_from_dict(data)
    assert loaded.app_name == "my-app" and loaded.fault_for(0).status == 502
    emulator.add(loaded)
    assert request(emulator, EVENTS)[0] == 502
    _, body, _ = read_all(emulator)
    assert body.count(b"\r\n\r\n") == 7 and b'"output":"[1,2]"' in body
    for bad in ({"steps": [{"type": "gate"}]}, {"steps": [{"type": "log", "text": "x"}]}, {"name": "x"}):
        with pytest.raises(ValueError):
            script_from_dict(bad)


def test_demo_scenario() -> None:
    speed = 20.0
    with running_emulator(demo_script(speed), heartbeat_interval=DEFAULT_HEARTBEAT_INTERVAL / speed) as emu:
        started = time.monotonic()
        path = "/invocations/%s/events" % DEMO_INVOCATION_ID
        _, body, ended = read_all(emu, path, {"Authorization": "Bearer any"})
        took = time.monotonic() - started
    events = events_in(body)
    names = kinds(events)
    assert ended and 0.3 < took < 2
    assert names[:2] == ["invocation_state"] * 2 and names[-1] == "invocation_state"
    assert 30 <= names.count("log") <= 50 and names.count("error") == 1
    assert any(e["event"] == "sse_heartbeat" for e in events)  # during the 3 s (here 0.15 s) wait
    final = events[-1]["invocation"]
    assert final["status"] == "succeeded" and isinstance(json.loads(final["output"]), dict)
    assert final["app_name"] == "shop-scraper" and json.loads(final["payload"])
    with pytest.raises(ValueError):
        demo_script(speed=0)


def test_on_write_hook() -> None:
    seen: List[Tuple[EmittedEvent, float]] = []

    def hook(event: EmittedEvent, when: float) -> None:
        seen.append((event, when))

    with running_emulator(script(Log("a"), State("succeeded")), api_key="k", on_write=hook) as emu:
        before = time.perf_counter()
        read_all(emu)
    assert [e.kind for e, _ in seen] == ["log", "state"] and all(t >= before for _, t in seen)


# ---------------------------------------------------------------- lifecycle


def _open_fds() -> Optional[int]:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None


def test_stop_leaves_no_threads_or_sockets() -> None:
    gc.collect()  # so that sockets other tests left to the garbage collector do not close mid-test
    threads_before, fds_before = set(threading.enumerate()), _open_fds()
    gate = Gate()
    emu = Emulator(api_key="k", heartbeat_interval=None)
    with pytest.raises(RuntimeError):
        emu.url  # not listening yet
    emu.start()
    port = emu.port
    emu.add(Script("inv", [Log("a"), gate, State("succeeded")]))
    emu.add(Script("slow", [Pause(30)]))
    emu.add(Script("silent", [Log("a")], fault=Fault(silence_after=0, silence=30)))
    streaming, silent = open_stream(emu), open_stream(emu, "/invocations/silent/events")
    streaming.until_events(1)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # a kept-alive connection
    idle.request("GET", "/invocations/inv", headers={"Authorization": "Bearer k"})
    assert idle.getresponse().read()
    started = time.monotonic()
    emu.stop()
    assert time.monotonic() - started < 2
    emu.stop()  # a second stop is harmless
    assert streaming.body()[1] is False and silent.body()[1] is False  # dropped, not ended
    for client in (streaming, silent, idle):
        client.close()
    gc.collect()
    assert set(threading.enumerate()) <= threads_before
    assert fds_before is None or (_open_fds() or 0) <= fds_before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(RuntimeError):
        emu.start()
    with pytest.raises(RuntimeError):
        emu.add(Script("late"))


def test_emulator_env(emulator_env: Emulator) -> None:
    assert os.environ["KERNEL_BASE_URL"] == emulator_env.url
    assert os.environ["KERNEL_API_KEY"] == emulator_env.api_key


def test_add_twice_and_lookup(emulator: Emulator) -> None:
    inv = emulator.add(Script("inv"))
    assert emulator.invocation("inv") is inv and "inv" in repr(inv)
    with pytest.raises(ValueError):
        emulator.add(Script("inv"))
    with pytest.raises(KeyError):
        emulator.invocation("other")
    assert str(emulator.api_key) not in repr(emulator)


def test_command_line(tmp_path: Path) -> None:
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps({"id": "cli", "steps": [{"type": "state", "status": "succeeded"}]}))
    for extra in ([], ["--scenario", str(scenario)]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernel_sse_emulator", "--api-key", "sekrit-cli-key", "--speed", "20", "--heartbeat", "0.05"]
            + extra,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().decode().strip()
            port = int(url.rsplit(":", 1)[1])
            assert url == "http://127.0.0.1:%d" % port
            path = "/invocations/%s/events" % ("cli" if extra else DEMO_INVOCATION_ID)
            stream = RawStream(port, path, {"Authorization": "Bearer sekrit-cli-key"})
            body, ended = stream.body()
            stream.close()
            assert ended and events_in(body)[-1]["invocation"]["status"] == "succeeded"
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert b"sekrit-cli-key" not in out + err and b"Stopped." in err


def test_command_line_bad_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": [{"type": "nope"}]}')
    result = subprocess.run(
        [sys.executable, "-m", "kernel_sse_emulator", "--scenario", str(bad)],
        cwd=ROOT,
        capture_output=True,
        timeout=10,
    )
    assert result.returncode == 2 and b"unknown type" in result.stderr


def test_command_line_port_in_use(emulator: Emulator) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kernel_sse_emulator", "--port", str(emulator.port)],
        cwd=ROOT,
        capture_output=True,
        timeout=10,
    )
    assert result.returncode == 2 and b"cannot listen" in result.stderr


# ---------------------------------------------------------------- the official SDK against it


def _when(text: str) -> datetime:
    """What a microsecond-precision client makes of one of our timestamps."""
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=parse_timestamp(text) // 1000)


def test_official_sdk_follows(emulator: Emulator) -> None:
    kernel = pytest.importorskip("kernel")
    from kernel.types import InvocationStateEvent
    from kernel.types.shared import ErrorEvent, HeartbeatEvent, LogEvent

    gate = Gate()
    inv = emulator.add(
        Script(
            "inv_sdk",
            [
                State("queued"),
                State("running"),
                Log("hello \u2013 caf\u00e9"),
                Log("dup", at=1),
                Log("dup", at=1),
                Error("selector_timeout", "retrying", details=[{"code": "c", "message": "m"}]),
                gate,
                Pause(0.6),
                State("succeeded", output={"ok": True}),
            ],
            payload='{"q": 1}',
        )
    )
    client = kernel.Kernel(
        api_key=emulator.api_key, base_url=emulator.url, max_retries=0, _strict_response_validation=True
    )
    try:
        received = []
        for event in client.invocations.follow("inv_sdk"):
            received.append(event)
            if isinstance(event, ErrorEvent):
                gate.release()  # the SDK is connected: now idle long enough for heartbeats
        retrieved = client.invocations.retrieve("inv_sdk")
        with pytest.raises(kernel.NotFoundError):
            client.invocations.follow("nope")
        with kernel.Kernel(api_key="wrong", base_url=emulator.url, max_retries=0) as wrong:
            with pytest.raises(kernel.AuthenticationError):
                wrong.invocations.follow("inv_sdk")
    finally:
        client.close()
    assert any(isinstance(e, HeartbeatEvent) for e in received)
    typed = [e for e in received if not isinstance(e, HeartbeatEvent)]
    emitted = inv.emitted()
    assert len(typed) == len(emitted)
    for got, sent in zip(typed, emitted):
        expected = sent.json()
        assert got.event == expected["event"] and got.timestamp == _when(expected["timestamp"])
        if isinstance(got, LogEvent):
            assert got.message == expected["message"]
        elif isinstance(got, ErrorEvent):
            details = got.error.details
            assert got.error.code == "selector_timeout" and details is not None and details[0].code == "c"
        else:
            assert isinstance(got, InvocationStateEvent)
            assert got.invocation.status == expected["invocation"]["status"]
            assert got.invocation.output == expected["invocation"].get("output")
    final = typed[-1].invocation
    assert final.finished_at == _when(expected["timestamp"]) and final.status_reason
    assert retrieved.status == "succeeded" and retrieved.payload == '{"q": 1}'
    assert retrieved.started_at == final.started_at


def test_official_sdk_sends_since(emulator: Emulator) -> None:
    kernel = pytest.importorskip("kernel")
    emulator.add(script(Log("a"), Log("b"), State("succeeded")))
    client = kernel.Kernel(api_key=emulator.api_key, base_url=emulator.url, max_retries=0)
    try:
        events = list(client.invocations.follow("inv", since="2025-06-20T12:00:00.001000000Z"))
    finally:
        client.close()
    assert [e.event for e in events] == ["log", "invocation_state"] and events[0].message == "b"
    assert emulator.requests[0].query["since"] == ["2025-06-20T12:00:00.001000000Z"]


# ---------------------------------------------------------------- the invocation endpoints

QUICK = Script(steps=(State("running"), Log("working"), State("succeeded", output={"ok": True})))


def call(
    emu: Emulator,
    method: str,
    path: str,
    body: object = None,
    headers: Optional[Dict[str, str]] = None,
    timeout: float = 5,
) -> Tuple[int, http.client.HTTPMessage, Any]:
    """One request with http.client (authorized by default): status, headers, decoded JSON body."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = dict(auth(emu) if headers is None else headers)
    if data is not None:
        sent["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        return response.status, response.headers, json.loads(raw) if raw else None
    finally:
        conn.close()


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def invoke(emu: Emulator, **fields: Any) -> Tuple[int, http.client.HTTPMessage, Any]:
    body: Dict[str, Any] = {"app_name": "app", "action_name": "act", "version": "1"}
    body.update(fields)
    return call(emu, "POST", "/invocations", body)


def test_post_waits_for_the_end_without_async(emulator: Emulator) -> None:
    emulator.register_action("app", "act", "1", QUICK)
    status, _, created = invoke(emulator, payload='{"q": 1}')
    assert status == 200 and created["status"] == "succeeded" and json.loads(created["output"]) == {"ok": True}
    assert created["id"].startswith("inv_") and len(created["id"]) == 24
    assert (created["app_name"], created["action_name"], created["version"]) == ("app", "act", "1")
    assert created["payload"] == '{"q": 1}' and created["finished_at"]
    assert emulator.invocations_created == [created["id"]]
    assert call(emulator, "GET", "/invocations/" + created["id"])[2] == created
    _, body, ended = read_all(emulator, "/invocations/%s/events" % created["id"])
    assert ended and [e.get("message") for e in events_in(body)] == [None, "working", None]
    (post,) = [r for r in emulator.requests if r.method == "POST"]
    assert post.invocation_id == created["id"] and post.attempt == 0 and json.loads(post.body)["payload"]
    assert invoke(emulator, payload='{"q": 1}')[2]["id"] != created["id"]  # not idempotent: a new one


def test_post_async_answers_queued_at_once(emulator: Emulator) -> None:
    gate = Gate()
    emulator.register_action("app", "act", "1", Script(steps=(State("running"), gate, State("succeeded"))))
    status, _, created = invoke(emulator, **{"async": True, "async_timeout_seconds": 60})
    assert status == 202 and created["status"] == "queued" and created["finished_at"] is None
    assert "payload" not in created
    assert gate.reached.wait(5)
    inv = emulator.invocation(created["id"])
    assert call(emulator, "GET", "/invocations/" + inv.id)[2]["status"] == "running" and not inv.finished
    gate.release()
    assert inv.wait_finished() and inv.invocation()["status"] == "succeeded"
    assert emulator.invocations() == [inv]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "JSON object"),
        (b"\xff", "JSON object"),
        ([1], "JSON object"),
        ({"action_name": "act", "version": "1"}, "Missing required field: app_name"),
        ({"app_name": "app", "version": "1"}, "Missing required field: action_name"),
        ({"app_name": "app", "action_name": "act", "version": ""}, "version"),
        ({"app_name": 1, "action_name": "act", "version": "1"}, "app_name"),
        ({"app_name": "app", "action_name": "act", "version": "1", "payload": {"q": 1}}, "payload"),
        ({"app_name": "app", "action_name": "act", "version": "1", "async": "yes"}, "async"),
        ({"app_name": "app", "action_name": "act", "version": "1", "async": True, "async_timeout_seconds": 9}, "10"),
        ({"app_name": "app", "action_name": "act", "version": "1", "async": True, "async_timeout_seconds": 3601}, "10"),
        ({"app_name": "app", "action_name": "act", "version": "1", "async": True, "async_timeout_seconds": "60"}, "10"),
        ({"app_name": "app", "action_name": "act", "version": "1", "async": True, "async_timeout_seconds": True}, "10"),
        ({"app_name": "app", "action_name": "act", "version": "1", "async_timeout_seconds": 60}, "async: true"),
    ],
)
def test_post_bad_body_is_400(emulator: Emulator, body: Any, message: str) -> None:
    emulator.register_action("app", "act", "1", QUICK)
    status, _, error = call(emulator, "POST", "/invocations", body)
    assert status == 400 and set(error) == {"code", "message"} and error["code"] == "bad_request"
    assert message in error["message"]
    assert emulator.invocations_created == [] and emulator.invocations() == []


def test_post_without_a_length_is_400_and_closes(emulator: Emulator) -> None:
    sock = socket.create_connection(("127.0.0.1", emulator.port), timeout=5)
    try:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" % str(emulator.api_key).encode()
        )
        answer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.1") == 1


def test_post_unknown_action_auth_and_routes(emulator: Emulator) -> None:
    emulator.register_action("app", "act", "1", QUICK)
    status, _, error = invoke(emulator, version="2")
    assert status == 404 and error == {"code": "not_found", "message": "No action app/act at version 2."}
    status, headers, error = call(emulator, "POST", "/invocations", {"app_name": "app"}, {"Authorization": "Bearer bad"})
    assert status == 401 and error["code"] == "unauthorized" and headers["WWW-Authenticate"] == "Bearer"
    assert call(emulator, "POST", "/invocations/x", {})[0] == 404
    assert emulator.invocations_created == []


def test_registry(emulator: Emulator) -> None:
    assert [(a.app_name, a.action_name, a.version) for a in emulator.actions] == [(DEMO_APP, DEMO_ACTION, DEMO_VERSION)]
    payloads: List[Optional[str]] = []

    def factory(payload: Optional[str]) -> Script:
        payloads.append(payload)
        return Script("ignored", [State("failed" if payload else "succeeded")], app_name="x", start=START)

    action = emulator.register_action("app", "act", "1", factory)
    made = action.make_script("inv_1", '"p"')
    assert (made.id, made.app_name, made.action_name, made.version, made.payload, made.start) == (
        "inv_1", "app", "act", "1", '"p"', None
    )
    assert invoke(emulator, payload="1")[2]["status"] == "failed"
    assert invoke(emulator)[2]["status"] == "succeeded" and payloads == ['"p"', "1", None]
    emulator.register_action("app", "act", "1", QUICK)  # replaces
    assert len(emulator.actions) == 2 and invoke(emulator)[2]["output"] == '{"ok":true}'
    emulator.unregister_action("app", "act", "1")
    assert invoke(emulator)[0] == 404
    with pytest.raises(KeyError):
        emulator.unregister_action("app", "act", "1")
    assert Emulator(register_demo=False).actions == []


def test_failing_factory_is_500(emulator: Emulator) -> None:
    def broken(payload: Optional[str]) -> Script:
        raise RuntimeError("no script today")

    emulator.register_action("app", "act", "1", broken)
    status, _, error = invoke(emulator)
    assert status == 500 and "no script today" in error["message"] and emulator.invocations_created == []


def test_demo_action(emulator: Emulator) -> None:
    status, _, final = invoke(emulator, app_name=DEMO_APP, action_name=DEMO_ACTION, version=DEMO_VERSION,
                              payload=json.dumps({"speed": 50}))
    assert status == 200 and final["status"] == "succeeded" and json.loads(final["output"])["products"] == 42
    for payload in ("not json", "[1]", '{"speed": 0}', '{"speed": true}', None):
        fields: Dict[str, Any] = {"app_name": DEMO_APP, "action_name": DEMO_ACTION, "version": DEMO_VERSION}
        if payload is not None:
            fields["payload"] = payload
        status, _, created = invoke(emulator, **fields, **{"async": True})
        assert status == 202
        inv = emulator.invocation(created["id"])
        assert sum(isinstance(s, Pause) for s in inv.script.steps) and inv.script.steps[1] == Pause(0.4)  # speed 1
        inv.finish("failed")


# ---------------------------------------------------------------- POST faults


def test_post_drop_creates_nothing(emulator: Emulator) -> None:
    emulator.register_action("app", "act", "1", QUICK)
    emulator.post_attempts = [PostFault(drop=True)]
    with pytest.raises(http.client.RemoteDisconnected):
        invoke(emulator)
    assert emulator.invocations_created == [] and emulator.requests[0].status is None
    assert invoke(emulator)[0] == 200 and len(emulator.invocations_created) == 1
    assert [r.attempt for r in emulator.requests] == [0, 1]


def test_post_drop_after_creating(emulator: Emulator) -> None:
    emulator.register_action("app", "act", "1", QUICK)
    emulator.post_fault = PostFault(drop=True, create=True)
    with pytest.raises(http.client.RemoteDisconnected):
        invoke(emulator)
    (created,) = emulator.invocations_created
    assert emulator.requests[0].invocation_id == created
    assert emulator.invocation(created).wait_finished()


@pytest.mark.parametrize("status", [500, 502, 503])
def test_post_5xx_after_creating(emulator: Emulator, status: int) -> None:
    emulator.register_action("app", "act", "1", QUICK)
    emulator.post_attempts = [PostFault(status=status, create=True)]
    code, _, error = invoke(emulator, **{"async": True})
    assert code == status and set(error) == {"code", "message"}
    assert len(emulator.invocations_created) == 1  # started, although the client saw an error
    assert invoke(emulator)[0] == 200 and len(emulator.invocations_created) == 2


@pytest.mark.parametrize("status", [429, 503])
def test_post_refused_with_retry_after(emulator: Emulator, status: int) -> None:
    emulator.register_action("app", "act", "1", QUICK)
    emulator.post_attempts = [PostFault(status=status, retry_after="1"), PostFault(status=status)]
    code, headers, error = call(emulator, "POST", "/invocations", b"anything", {})  # before auth and body
    assert (code, headers["Retry-After"]) == (status, "1") and error["code"] in ("rate_limited", "service_unavailable")
    code, headers, _ = invoke(emulator)
    assert code == status and headers["Retry-After"] is None
    assert emulator.invocations_created == [] and invoke(emulator)[0] == 200


def test_post_slow_answer_after_creating(emulator: Emulator) -> None:
    emulator.register_action("app", "act", "1", QUICK)
    emulator.post_attempts = [PostFault(delay=30)]
    with pytest.raises(socket.timeout):  # the client gives up first ...
        call(emulator, "POST", "/invocations", {"app_name": "app", "action_name": "act", "version": "1"}, timeout=0.3)
    assert len(emulator.invocations_created) == 1  # ... but the invocation was started


def test_post_faults_and_invalid_request(emulator: Emulator) -> None:
    emulator.register_action("app", "act", "1", QUICK)
    emulator.post_attempts = [PostFault(status=500, create=True, delay=0.01)]
    assert call(emulator, "POST", "/invocations", {"app_name": "app"})[0] == 400  # the fault cannot create
    assert emulator.invocations_created == [] and emulator.post_fault_for(0).status == 500
    assert emulator.post_fault_for(1) == PostFault()


def test_post_fault_options_are_checked() -> None:
    for bad in ({"status": 500, "drop": True}, {"create": True}, {"delay": -1}):
        with pytest.raises(ValueError):
            PostFault(**bad)


def test_stop_while_a_post_waits(emulator: Emulator) -> None:
    emulator.register_action("app", "act", "1", Script(steps=(State("running"), Pause(30))))
    emulator.register_action("app", "slow", "1", QUICK)
    emulator.post_attempts = [PostFault(), PostFault(delay=30)]
    errors: List[BaseException] = []

    def post(action: str) -> None:
        try:
            invoke(emulator, action_name=action)
        except (OSError, http.client.HTTPException) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(name,)) for name in ("act", "slow")]
    threads[0].start()
    wait_for(lambda: emulator.invocations_created)
    threads[1].start()
    wait_for(lambda: len(emulator.invocations_created) == 2)
    emulator.stop()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 2  # both dropped without an answer
    assert isinstance(emulator.post_fault, PostFault)


def test_post_while_stopping_is_dropped() -> None:
    emu = Emulator(api_key="k").start()
    emu.register_action("app", "act", "1", QUICK)
    emu._stopping.set()  # as stop() does first: a POST arriving now creates nothing
    try:
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            invoke(emu)
    finally:
        emu._stopping.clear()
        emu.stop()
    assert emu.invocations_created == []


# ---------------------------------------------------------------- GET /invocations


def listing(emu: Emulator, **query: Any) -> Tuple[int, http.client.HTTPMessage, Any]:
    return call(emu, "GET", "/invocations?" + urllib.parse.urlencode(query))


def ids(page: Any) -> List[str]:
    return [item["id"] for item in page]


def add_many(emu: Emulator, count: int, **options: Any) -> List[str]:
    """``count`` invocations a minute apart from START, so the newest is the last."""
    made = []
    for n in range(count):
        start = format_timestamp(START_NS + n * 60 * 10**9)
        made.append(emu.add(Script("inv_%02d" % n, [State("succeeded")], start=start, **options)).id)
    return made


def test_list_newest_first_and_headers(emulator: Emulator) -> None:
    made = add_many(emulator, 3)
    emulator.add(Script("same_time_later", [], start=START))  # equal started_at: the later added first
    status, headers, page = listing(emulator)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert ids(page) == made[::-1][:2] + ["same_time_later", "inv_00"]
    assert (headers["X-Has-More"], headers["X-Next-Offset"]) == ("false", "0")
    assert page[-1] == emulator.invocation("inv_00").invocation()


def test_list_pages(emulator: Emulator) -> None:
    made = add_many(emulator, 7)[::-1]
    seen, offset, pages = [], 0, []
    while True:
        _, headers, page = listing(emulator, limit=3, offset=offset)
        seen += ids(page)
        pages.append((len(page), headers["X-Has-More"], headers["X-Next-Offset"]))
        if headers["X-Has-More"] == "false":
            break
        offset = int(headers["X-Next-Offset"])
    assert pages == [(3, "true", "3"), (3, "true", "6"), (1, "false", "0")] and seen == made
    _, headers, page = listing(emulator, limit=3, offset=99)
    assert page == [] and (headers["X-Has-More"], headers["X-Next-Offset"]) == ("false", "0")
    _, headers, page = listing(emulator, limit=7)
    assert len(page) == 7 and headers["X-Has-More"] == "false"
    _, headers, page = listing(emulator, offset=1)  # pages need not start at multiples of the limit
    assert ids(page) == made[1:]
    assert [r.attempt for r in emulator.requests] == list(range(6))


def test_list_default_page_size(emulator: Emulator) -> None:
    assert emulator.page_size == DEFAULT_PAGE_SIZE == 20
    add_many(emulator, 5)
    emulator.page_size = 2
    _, headers, page = listing(emulator)
    assert len(page) == 2 and (headers["X-Has-More"], headers["X-Next-Offset"]) == ("true", "2")
    _, headers, page = listing(emulator, offset=4)
    assert len(page) == 1 and headers["X-Has-More"] == "false"


@pytest.mark.parametrize("fault", LIST_FAULTS)
def test_list_faults(emulator: Emulator, fault: str) -> None:
    add_many(emulator, 5)
    emulator.list_fault = fault
    first = listing(emulator, limit=2, offset=2)[1]
    last = listing(emulator, limit=2, offset=4)[1]
    expected_more = {
        "has_more_without_offset": ("true", None),
        "repeat_offset": ("true", "2"),
        "zero_offset": ("true", "0"),
        "no_has_more": (None, "4"),
    }[fault]
    assert (first["X-Has-More"], first["X-Next-Offset"]) == expected_more
    assert (last["X-Has-More"], last["X-Next-Offset"]) == (None if fault == "no_has_more" else "false", "0")


def test_list_fault_per_request(emulator: Emulator) -> None:
    add_many(emulator, 5)
    emulator.list_attempts = [None, "repeat_offset"]
    assert listing(emulator, limit=2)[1]["X-Next-Offset"] == "2"
    assert listing(emulator, limit=2, offset=2)[1]["X-Next-Offset"] == "2"  # repeated
    assert listing(emulator, limit=2, offset=2)[1]["X-Next-Offset"] == "4"
    assert emulator.list_fault_for(1) == "repeat_offset" and emulator.list_fault_for(2) is None
    with pytest.raises(ValueError):
        Emulator(list_fault="sometimes")
    with pytest.raises(ValueError):
        Emulator(list_attempts=[None, "sometimes"])


def test_list_filters(emulator: Emulator) -> None:
    now = time.time_ns()
    gate = Gate()
    emulator.add(Script("inv_old", [State("succeeded")], app_name="shop", action_name="scrape", version="1",
                        start=format_timestamp(now - 3600 * 10**9)))
    emulator.add(Script("inv_new", [State("failed")], app_name="shop", action_name="Checkout", version="2",
                        start=format_timestamp(now - 60 * 10**9)))
    emulator.add(Script("inv_run", [State("running"), gate], app_name="blog", action_name="post", version="1",
                        start=format_timestamp(now - 10 * 10**9)))
    emulator.add(Script("inv_queued", [gate], app_name="blog", action_name="post", version="2",
                        start=format_timestamp(now - 5 * 10**9)))
    assert gate.reached.wait(5) and emulator.invocation("inv_old").wait_finished()
    assert emulator.invocation("inv_new").wait_finished()
    wait_for(lambda: emulator.invocation("inv_run").invocation()["status"] == "running")
    cases: List[Tuple[Dict[str, str], List[str]]] = [
        ({"app_name": "shop"}, ["inv_new", "inv_old"]),
        ({"action_name": "post"}, ["inv_queued", "inv_run"]),
        ({"version": "1"}, ["inv_run", "inv_old"]),
        ({"status": "running"}, ["inv_run"]),
        ({"status": "queued"}, ["inv_queued"]),
        ({"status": "failed"}, ["inv_new"]),
        ({"status": "succeeded", "app_name": "shop"}, ["inv_old"]),
        ({"since": "2m"}, ["inv_queued", "inv_run", "inv_new"]),
        ({"since": format_timestamp(now - 60 * 10**9)}, ["inv_queued", "inv_run", "inv_new"]),  # inclusive
        ({"since": ""}, ["inv_queued", "inv_run", "inv_new", "inv_old"]),
        ({"query": "checkout"}, ["inv_new"]),  # action name, any case
        ({"query": "BLOG"}, ["inv_queued", "inv_run"]),  # app name
        ({"query": "_ol"}, ["inv_old"]),  # id
        ({"query": "nothing"}, []),
        ({"deployment_id": "dep_1"}, ["inv_queued", "inv_run", "inv_new", "inv_old"]),  # accepted, ignored
        ({"app_name": "blog", "limit": "1", "offset": "1"}, ["inv_run"]),
    ]
    for query, expected in cases:
        status, _, page = listing(emulator, **query)
        assert status == 200 and ids(page) == expected, query
    gate.release()


@pytest.mark.parametrize(
    "query",
    [{"status": "done"}, {"since": "yesterday"}, {"limit": "0"}, {"limit": "-1"}, {"limit": "x"}, {"offset": "-1"},
     {"offset": "1.5"}],
)
def test_list_bad_query_is_400(emulator: Emulator, query: Dict[str, str]) -> None:
    status, _, error = listing(emulator, **query)
    assert status == 400 and error["code"] == "bad_request"


def test_list_needs_the_key(emulator: Emulator) -> None:
    status, _, error = call(emulator, "GET", "/invocations", headers={"Authorization": "Bearer nope"})
    assert status == 401 and error["code"] == "unauthorized"


# ---------------------------------------------------------------- PATCH


def test_patch_cancel_ends_a_live_stream(emulator: Emulator) -> None:
    inv = emulator.add(script(State("running"), Log("working"), Pause(30), Log("never")))
    stream = open_stream(emulator)
    try:
        assert kinds(stream.until_events(2)) == ["invocation_state", "log"]
        status, _, body = call(emulator, "PATCH", "/invocations/inv", {"status": "failed", "output": '"stopped"'})
        assert status == 200 and body["status"] == "failed" and body["output"] == '"stopped"'
        rest, ended = stream.body()
    finally:
        stream.close()
    (final,) = [e for e in events_in(rest) if e["event"] != "sse_heartbeat"]
    assert ended and final["event"] == "invocation_state" and final["invocation"] == body
    assert body["status_reason"] == "Invocation was cancelled" and body["finished_at"] == final["timestamp"]
    assert call(emulator, "GET", "/invocations/inv")[2] == body
    assert inv.wait_idle(1) and [e.kind for e in inv.emitted()] == ["state", "log", "state"]
    _, replay, ended = read_all(emulator)  # a later connection replays the cancel too
    assert ended and events_in(replay)[-1] == final


def test_patch_succeeded_through_a_gate_and_a_waiting_post(emulator: Emulator) -> None:
    gate = Gate()
    emulator.register_action("app", "act", "1", Script(steps=(State("running"), gate, Log("never"))))
    answers: List[Any] = []
    waiter = threading.Thread(target=lambda: answers.append(invoke(emulator)))
    waiter.start()
    assert gate.reached.wait(5)
    (created,) = emulator.invocations_created
    status, _, body = call(emulator, "PATCH", "/invocations/" + created, {"status": "succeeded"})
    waiter.join(10)
    assert status == 200 and body["status"] == "succeeded" and "output" not in body
    assert body["status_reason"] == "Invocation completed successfully"
    assert answers[0][0] == 200 and answers[0][2] == body  # the synchronous POST answered with the end
    inv = emulator.invocation(created)
    inv.append(Log("ignored"))
    assert inv.wait_idle(1) and [e.kind for e in inv.emitted()] == ["state", "state"]


def test_patch_after_the_end_changes_nothing(emulator: Emulator) -> None:
    inv = emulator.add(script(State("succeeded", output="1")))
    assert inv.wait_finished()
    status, _, body = call(emulator, "PATCH", "/invocations/inv", {"status": "failed"})
    assert status == 200 and body["status"] == "succeeded" and body == inv.invocation()
    with pytest.raises(ValueError):
        inv.finish("running")


@pytest.mark.parametrize(
    "body", [b"{", [1], {}, {"status": "running"}, {"status": "failed", "output": {"a": 1}}]
)
def test_patch_bad_body_is_400(emulator: Emulator, body: Any) -> None:
    emulator.add(script(State("running")))
    status, _, error = call(emulator, "PATCH", "/invocations/inv", body)
    assert status == 400 and error["code"] == "bad_request"
    assert emulator.invocation("inv").invocation()["status"] != "failed"


def test_patch_unknown_auth_and_routes(emulator: Emulator) -> None:
    emulator.add(script(State("running")))
    assert call(emulator, "PATCH", "/invocations/nope", {"status": "failed"})[0] == 404
    assert call(emulator, "PATCH", "/invocations", {"status": "failed"})[0] == 404
    assert call(emulator, "PATCH", "/invocations/inv/events", {"status": "failed"})[0] == 404
    assert call(emulator, "PATCH", "/invocations/inv", {"status": "failed"}, {})[0] == 401
    assert emulator.invocation("inv").invocation()["status"] != "failed"


def test_wait_finished_timeout_and_stop() -> None:
    emu = Emulator(api_key="k").start()
    inv = emu.add(Script("inv", [Pause(30)]))
    assert inv.wait_finished(0.05) is False
    results: List[bool] = []
    waiter = threading.Thread(target=lambda: results.append(inv.wait_finished(None)))
    waiter.start()
    emu.stop()
    waiter.join(5)
    assert results == [False]


# ---------------------------------------------------------------- resume switches


def test_state_on_connect(emulator: Emulator) -> None:
    gate = Gate()
    emulator.state_on_connect = True
    emulator.add(script(State("queued"), State("running"), Log("a"), Log("b"), gate, State("succeeded")))
    assert gate.reached.wait(5)
    before = time.time_ns()
    stream = open_stream(emulator, EVENTS + "?since=2025-06-20T12:00:00.003Z")
    try:
        first = stream.until_events(2)
        gate.release()
        rest, ended = stream.body()
    finally:
        stream.close()
    snapshot = first[0]
    assert snapshot["event"] == "invocation_state" and snapshot["invocation"]["status"] == "running"
    assert before <= parse_timestamp(snapshot["timestamp"]) <= time.time_ns()  # stamped at the connect
    assert first[1]["message"] == "b" and ended and kinds(events_in(rest)) == ["invocation_state"]
    assert emulator.requests[0].state_on_connect and emulator.requests[0].events_written == 2


def test_state_on_connect_per_script(emulator: Emulator) -> None:
    emulator.add(Script("on", [State("succeeded")], start=START, state_on_connect=True))
    emulator.state_on_connect = True
    emulator.add(Script("off", [State("succeeded")], start=START, state_on_connect=False))
    _, body, _ = read_all(emulator, "/invocations/on/events")
    on = events_in(body)
    assert len(on) == 2 and on[0]["invocation"] == on[1]["invocation"] and on[0]["timestamp"] != on[1]["timestamp"]
    _, body, _ = read_all(emulator, "/invocations/off/events")
    assert len(events_in(body)) == 1


def test_finished_stream_ends_even_when_since_is_past_the_end(emulator: Emulator) -> None:
    emulator.add(script(Log("a"), State("succeeded")))
    _, body, ended = read_all(emulator, EVENTS + "?since=2030-01-01T00:00:00Z")
    assert ended and body == b""
    emulator.state_on_connect = True  # then the snapshot is the only way to learn the end
    _, body, ended = read_all(emulator, EVENTS + "?since=2030-01-01T00:00:00Z")
    (snapshot,) = events_in(body)
    assert ended and snapshot["invocation"]["status"] == "succeeded"


def jittered(emu: Emulator, name: str, **options: Any) -> List[Any]:
    emu.add(Script(name, [Log(str(n)) for n in range(40)] + [State("succeeded")], start=START, tick=0.01, **options))
    _, body, _ = read_all(emu, "/invocations/%s/events" % name)
    return events_in(body)


def test_jitter_is_bounded_seeded_and_unordered(emulator: Emulator, make_emulator: Callable[..., Emulator]) -> None:
    events = jittered(emulator, "j", jitter=0.05, jitter_seed=7)
    logs = events[:-1]
    stamps = [parse_timestamp(e["timestamp"]) for e in logs]
    offsets = [stamp - (START_NS + n * 10**7) for n, stamp in enumerate(stamps)]
    assert all(abs(offset) <= 5 * 10**7 for offset in offsets) and len(set(offsets)) > 30
    assert stamps != sorted(stamps)  # not ordered by timestamp any more
    assert events[-1]["timestamp"] == format_timestamp(START_NS + 40 * 10**7)  # states are not jittered
    assert jittered(emulator, "j2", jitter=0.05, jitter_seed=7) == [
        dict(e, invocation=dict(e["invocation"], id="j2")) if e["event"] != "log" else e for e in events
    ]
    other = make_emulator(jitter=0.05, jitter_seed=7)  # the emulator's switches, same seed: same stamps
    assert [e["timestamp"] for e in jittered(other, "j")] == [e["timestamp"] for e in events]
    assert [e["timestamp"] for e in jittered(other, "j3", jitter=0.0)][:3] == [
        format_timestamp(START_NS + n * 10**7) for n in range(3)
    ]


def test_since_replays_by_jittered_timestamps_in_stored_order(emulator: Emulator) -> None:
    events = jittered(emulator, "j", jitter=0.05, jitter_seed=3)
    since = events[20]["timestamp"]
    _, body, _ = read_all(emulator, "/invocations/j/events?since=" + since)
    expected = [e for e in events if parse_timestamp(e["timestamp"]) >= parse_timestamp(since)]
    assert events_in(body) == expected and len(expected) < len(events) - 1


def test_late_events(emulator: Emulator) -> None:
    emulator.add(script(Log("a"), Log("b", at=2), Log("late", late_by=3.0), Error("e", "m", late_by=0.5), State("succeeded")))
    _, body, _ = read_all(emulator)
    events = events_in(body)
    assert [e["timestamp"] for e in events] == [
        "2025-06-20T12:00:00.000000000Z",
        "2025-06-20T12:00:02.000000000Z",
        "2025-06-20T11:59:59.001000000Z",  # 3 s before its script time
        "2025-06-20T12:00:01.502000000Z",
        "2025-06-20T12:00:02.003000000Z",  # the clock did not go back
    ]
    _, body, _ = read_all(emulator, EVENTS + "?since=2025-06-20T12:00:00Z")
    assert [e.get("message", e["event"]) for e in events_in(body)] == ["a", "b", "error", "invocation_state"]
    _, body, _ = read_all(emulator, EVENTS + "?since=2025-06-20T11:59:59.001Z")
    assert [e.get("message", e["event"]) for e in events_in(body)] == ["a", "b", "late", "error", "invocation_state"]
    for bad in ({"late_by": -1.0}, {"late_by": 1.0, "at": START}):
        with pytest.raises(ValueError):
            Log("x", **bad)
    with pytest.raises(ValueError):
        Script("x", jitter=-1)


# ---------------------------------------------------------------- scenarios, docs, command line


def test_scenario_forms(tmp_path: Path) -> None:
    data = {
        "invocations": [{"id": "a", "steps": [{"type": "log", "message": "hi", "late_by": 1}]}],
        "actions": [{"app_name": "app", "action_name": "act", "version": "1", "script": {"steps": []}}],
        "emulator": {
            "page_size": 5,
            "heartbeat_interval": 0.5,
            "state_on_connect": True,
            "jitter": 0.1,
            "jitter_seed": 1,
            "post_fault": {"delay": 0.1},
            "post_attempts": [{"status": 503, "retry_after": "1"}],
            "list_fault": "zero_offset",
            "list_attempts": [None, "repeat_offset"],
            "register_demo": False,
        },
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    scenario = load_scenario_file(str(path))
    assert [s.id for s in scenario.invocations] == ["a"] and load_scenario(str(path)) == list(scenario.invocations)
    assert scenario.actions[0].script == Script(steps=())
    assert scenario.settings.post_attempts == (PostFault(status=503, retry_after="1"),)
    emu = Emulator()
    emu.load(scenario)
    assert (emu.page_size, emu.heartbeat_interval, emu.state_on_connect, emu.jitter, emu.jitter_seed) == (
        5, 0.5, True, 0.1, 1
    )
    assert emu.post_fault == PostFault(delay=0.1) and emu.list_attempts == (None, "repeat_offset")
    assert [a.app_name for a in emu.actions] == ["app"]
    emu.stop()
    assert scenario_from_json([{"id": "x"}]).invocations[0].id == "x"
    assert scenario_from_json({"id": "y"}).invocations[0].id == "y"
    assert scenario_from_json({"emulator": {}}) == Scenario()
    kept = Emulator()
    kept.load(Scenario(settings=Settings(register_demo=True)))
    assert len(kept.actions) == 1
    kept.load(Scenario(settings=Settings(register_demo=False)))
    kept.load(Scenario(settings=Settings(register_demo=False)))  # already gone: fine
    assert kept.actions == []


@pytest.mark.parametrize(
    "data, message",
    [
        (3, "JSON object"),
        ({"invocations": [], "extra": 1}, "unknown key"),
        ({"actions": [{"app_name": "a", "action_name": "b", "version": "1", "script": []}]}, "object"),
        ({"actions": [{"app_name": "a", "action_name": "b", "version": "1", "script": {"id": "x"}}]}, "no id"),
        ({"actions": [{"app_name": "", "action_name": "b", "version": "1"}]}, "non-empty"),
        ({"actions": [{"app_name": "a", "action_name": "b", "version": "1", "x": 1}]}, "unknown key"),
        ({"emulator": {"speed": 2}}, "unknown key"),
        ({"emulator": {"list_fault": "bad"}}, "unknown list fault"),
        ({"emulator": {"list_attempts": ["bad"]}}, "unknown list fault"),
        ({"emulator": {"page_size": 0}}, "page_size"),
        ({"emulator": {"post_fault": {"create": True}}}, "create"),
    ],
)
def test_scenario_errors(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scenario_from_json(data)


def docs_example() -> Any:
    """The complete example scenario of docs/emulator.md (the json block after its marker)."""
    text = Path(ROOT, "docs", "emulator.md").read_text(encoding="utf-8")
    _, marker, rest = text.partition("<!-- example-scenario -->")
    assert marker, "docs/emulator.md lost its example marker"
    block = rest.split("```json\n", 1)[1].split("\n```", 1)[0]
    return json.loads(block)


def test_docs_example_loads_and_runs() -> None:
    scenario = scenario_from_json(docs_example())
    assert scenario.invocations and scenario.actions
    emu = Emulator(api_key="k")
    with emu:
        emu.load(scenario)
        headers = {"Authorization": "Bearer k"}
        for script in scenario.invocations:
            path = "/invocations/%s/events" % urllib.parse.quote(script.id, safe="")
            for _ in script.attempts:  # through the scenario's faulty attempts
                with contextlib.suppress(http.client.HTTPException, OSError):
                    request(emu, path, headers)
            _, body, ended = read_all(emu, path, headers)
            assert ended and events_in(body)[-1]["invocation"]["status"] in ("succeeded", "failed"), script.id
        for action in scenario.actions:
            fields = {"app_name": action.app_name, "action_name": action.action_name, "version": action.version}
            status: Optional[int] = None
            for _ in range(len(emu.post_attempts) + 1):  # through the scenario's POST faults
                with contextlib.suppress(http.client.HTTPException, OSError):
                    status, _, final = call(emu, "POST", "/invocations", fields, headers)
                    if status == 200:
                        break
            assert status == 200 and final["status"] in ("succeeded", "failed")
        assert call(emu, "GET", "/invocations", headers=headers)[0] == 200


def test_docs_mention_every_switch_and_step() -> None:
    text = Path(ROOT, "docs", "emulator.md").read_text(encoding="utf-8")
    names = [f.name for f in dataclasses.fields(Settings)] + [f.name for f in dataclasses.fields(Fault)]
    names += [f.name for f in dataclasses.fields(PostFault)] + [f.name for f in dataclasses.fields(Script)]
    names += list(LIST_FAULTS) + ["late_by", "X-Has-More", "X-Next-Offset", "PATCH", "POST /invocations"]
    missing = [name for name in names if "`%s`" % name not in text and name not in text]
    assert missing == []
    source = Path(ROOT, "kernel_sse_emulator.py").read_text(encoding="utf-8")
    assert "shared/" not in source and "DESIGN" not in source and "spec/" not in source


def test_main_prints_paste_ready_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps({
        "invocations": [{"id": "inv one", "steps": [{"type": "state", "status": "succeeded"}]}],
        "actions": [{"app_name": "shop", "action_name": "scrape", "version": "1.2", "script": {}}],
        "emulator": {"heartbeat_interval": 0.5},
    }))

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupt)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    assert main(["--scenario", str(scenario), "--state-on-connect", "--jitter", "0.5", "--jitter-seed", "3",
                 "--page-size", "7", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    url = out.strip()
    assert url.startswith("http://127.0.0.1:") and "docs/emulator.md" in err
    env = "KERNEL_BASE_URL=%s KERNEL_API_KEY=emulator-key" % url
    assert "  %s kernel-sse follow 'inv one'\n" % env in err
    assert "  %s kernel-sse invoke shop scrape --version 1.2\n" % env in err
    assert "  %s kernel-sse invoke demo run --version 1\n" % env in err
    assert main(["--api-key", "sekrit", "--heartbeat", "1"]) == 0
    out, err = capsys.readouterr()
    assert "sekrit" not in out + err and "Set KERNEL_API_KEY" in err
    assert "  KERNEL_BASE_URL=%s kernel-sse follow demo\n" % out.strip() in err


def test_main_applies_switches(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: List[Emulator] = []
    real_stop = Emulator.stop

    def stop(self: Emulator) -> None:
        seen.append(self)
        real_stop(self)

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Emulator, "stop", stop)
    monkeypatch.setattr(time, "sleep", interrupt)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    assert main(["--state-on-connect", "--jitter", "0.5", "--jitter-seed", "3", "--page-size", "7", "--speed", "4"]) == 0
    (emu,) = seen
    assert (emu.state_on_connect, emu.jitter, emu.jitter_seed, emu.page_size) == (True, 0.5, 3, 7)
    assert emu.heartbeat_interval == DEFAULT_HEARTBEAT_INTERVAL / 4
    assert emu.invocation(DEMO_INVOCATION_ID)._jitter_ns == 5 * 10**8  # set before the demo was added
    capsys.readouterr()


def test_help_points_to_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "docs/emulator.md" in capsys.readouterr().out
    import kernel_sse_emulator

    assert "docs/emulator.md" in str(kernel_sse_emulator.__doc__)


# ---------------------------------------------------------------- the official SDK against the new endpoints


def test_official_sdk_invocations(emulator: Emulator) -> None:
    kernel = pytest.importorskip("kernel")
    gate = Gate()
    emulator.register_action("app", "act", "1", QUICK)
    emulator.register_action("app", "held", "1", Script(steps=(State("running"), gate, State("succeeded"))))
    client = kernel.Kernel(
        api_key=emulator.api_key, base_url=emulator.url, max_retries=0, _strict_response_validation=True
    )
    try:
        done = client.invocations.create(app_name="app", action_name="act", version="1", payload='{"q": 1}')
        queued = client.invocations.create(
            app_name="app", action_name="held", version="1", async_=True, async_timeout_seconds=60
        )
        for _ in range(5):
            client.invocations.create(app_name="app", action_name="act", version="1", async_=True)
        retrieved = client.invocations.retrieve(done.id)
        assert gate.reached.wait(5)
        cancelled = client.invocations.update(queued.id, status="failed", output='"cancelled"')
        follow = list(client.invocations.follow(queued.id))
        pages = list(client.invocations.list(limit=2, app_name="app").iter_pages())
        listed = [item.id for item in client.invocations.list(limit=2)]  # auto-pagination
        failed = list(client.invocations.list(status="failed"))
        with pytest.raises(kernel.NotFoundError):
            client.invocations.create(app_name="app", action_name="nope", version="1")
        with pytest.raises(kernel.BadRequestError):
            client.invocations.create(app_name="app", action_name="act", version="1", async_timeout_seconds=60)
        emulator.list_fault = "has_more_without_offset"
        with pytest.raises(RuntimeError, match="X-Has-More"):
            list(client.invocations.list(limit=2))
    finally:
        client.close()
    assert (done.status, done.output, queued.status) == ("succeeded", '{"ok":true}', "queued")
    assert retrieved.payload == '{"q": 1}' and retrieved.finished_at is not None
    assert (cancelled.status, cancelled.output, cancelled.status_reason) == ("failed", '"cancelled"', "Invocation was cancelled")
    assert follow[-1].invocation.status == "failed"
    assert [len(page.items) for page in pages] == [2, 2, 2, 1]
    assert listed == [i.id for i in reversed(emulator.invocations())] and len(listed) == 7
    assert [i.id for i in failed] == [queued.id]
