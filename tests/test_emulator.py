"""Tests of the Kernel API emulator: the spec's responses, scripting, every fault, shutdown.

Everything goes over real sockets on 127.0.0.1. Streams are read raw (chunk by
chunk) where the test is about bytes on the wire, with http.client elsewhere.
"""

from __future__ import annotations

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
    DEMO_INVOCATION_ID,
    EmittedEvent,
    Emulator,
    Error,
    Fault,
    Gate,
    Log,
    Malformed,
    Pause,
    Raw,
    Script,
    State,
    Unknown,
    demo_script,
    format_timestamp,
    load_scenario,
    parse_since,
    parse_timestamp,
    running_emulator,
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
