"""A local emulator of the Kernel invocation API, for tests, demos and plugin authors.

Standard library only, and independent of ``kernel_sse`` on purpose: it is the
yardstick the client is measured against, so it must not share its code.

It serves, on 127.0.0.1:

- ``GET /invocations/{id}/events``: the Server-Sent Events stream of the spec
  (``shared/spec/invocation-events-openapi.md``), with Bearer auth, ``since``
  (RFC 3339 or a duration such as ``5m``, inclusive), replay then live events,
  heartbeats while idle, and the end of the response after the terminal state;
- ``GET /invocations/{id}``: the ``Invocation`` JSON.

An invocation is a :class:`Script`: a list of steps (:class:`Log`,
:class:`State`, :class:`Error`, :class:`Pause`, :class:`Gate`, and the bad-data
steps :class:`Unknown`, :class:`Malformed`, :class:`Raw`) plus :class:`Fault`
options, either for every connection attempt or for one attempt.

In tests::

    with running_emulator(Script("inv1", [Log("hi"), State("succeeded")])) as emu:
        ...  # follow f"{emu.url}/invocations/inv1/events" with emu.api_key

From a shell: ``python -m kernel_sse_emulator [--port N] [--api-key KEY]
[--scenario FILE]`` prints its base URL and serves until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import decimal
import hmac
import http.server
import json
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEMO_INVOCATION_ID",
    "EmittedEvent",
    "EmulatedInvocation",
    "Emulator",
    "Error",
    "Fault",
    "Gate",
    "Log",
    "Malformed",
    "Pause",
    "Raw",
    "RequestRecord",
    "Script",
    "Stamp",
    "State",
    "Step",
    "Unknown",
    "demo_script",
    "format_timestamp",
    "load_scenario",
    "main",
    "parse_since",
    "parse_timestamp",
    "running_emulator",
    "script_from_dict",
]

DEFAULT_HEARTBEAT_INTERVAL = 2.0
"""Seconds of idleness after which a stream gets an ``sse_heartbeat`` event."""

DEMO_INVOCATION_ID = "demo"
"""The invocation id of the built-in demo scenario."""

_TERMINAL_STATUSES = ("succeeded", "failed")
_NS = 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BOM = b"\xef\xbb\xbf"
# Buffered event bytes are sent once they reach this size, so a long replay
# goes out in a few large chunks instead of one huge one.
_FLUSH_AT = 64 * 1024
_GATE_POLL = 0.05  # how often a closed gate looks whether the emulator stops


# ---------------------------------------------------------------- timestamps

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))\Z"
)
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,
    "\u03bcs": 10**3,
    "ms": 10**6,
    "s": _NS,
    "m": 60 * _NS,
    "h": 3600 * _NS,
}


def format_timestamp(ns: int) -> str:
    """Format nanoseconds since the epoch as RFC 3339 UTC with nine fractional digits.

    >>> format_timestamp(1750420800123456789)
    '2025-06-20T12:00:00.123456789Z'
    """
    seconds, fraction = divmod(ns, _NS)
    moment = _EPOCH + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + ".%09dZ" % fraction


def parse_timestamp(text: str) -> int:
    """Parse an RFC 3339 timestamp (any fraction length, ``Z`` or offset) to epoch nanoseconds.

    Digits past the ninth are truncated. Raises ValueError if ``text`` is not RFC 3339.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp: %r" % (text,))
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    delta = moment - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    if match.group(8):
        off_hours, off_minutes = int(match.group(9)), int(match.group(10))
        if off_hours > 23 or off_minutes > 59:
            raise ValueError("bad UTC offset in %r" % (text,))
        offset = off_hours * 3600 + off_minutes * 60
        # Local time is UTC plus the offset, so UTC is local time minus it.
        seconds += -offset if match.group(8) == "+" else offset
    fraction = int((match.group(7) or "")[:9].ljust(9, "0"))
    return seconds * _NS + fraction


def _parse_duration(text: str) -> int:
    """Parse a Go-style duration ("5m", "90s", "1h30m", "1.5h", "0") to nanoseconds."""
    if text == "0":
        return 0
    position, total = 0, 0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError("not a duration: %r" % (text,))
        total += int(decimal.Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)])
        position = match.end()
    if position == 0:
        raise ValueError("not a duration: %r" % (text,))
    return total


def parse_since(value: str, now_ns: Optional[int] = None) -> int:
    """Turn a ``since`` query value into epoch nanoseconds, as the server does.

    ``value`` is an RFC 3339 timestamp or a duration before ``now_ns`` (default:
    the wall clock). Raises ValueError for anything else.
    """
    try:
        return parse_timestamp(value)
    except ValueError:
        pass
    duration = _parse_duration(value)
    return (time.time_ns() if now_ns is None else now_ns) - duration


# ---------------------------------------------------------------- script steps

Stamp = Union[str, float, None]
"""When an event happened: an RFC 3339 string (sent as written), seconds after
the script's start, or None for "one tick after the previous event"."""


def _check_stamp(at: Stamp) -> None:
    # Parse explicit timestamps when the step is built, so a typo fails in the
    # test that wrote it rather than silently in the emulator's script thread.
    if isinstance(at, str):
        parse_timestamp(at)


@dataclass(frozen=True)
class Log:
    """A ``log`` event. ``message`` as bytes is put between the JSON quotes as
    is (only ``"``, ``\\`` and control bytes escaped), so it can carry invalid UTF-8."""

    message: Union[str, bytes]
    at: Stamp = None

    def __post_init__(self) -> None:
        _check_stamp(self.at)


@dataclass(frozen=True)
class State:
    """An ``invocation_state`` event that moves the invocation to ``status``.

    ``succeeded`` and ``failed`` are terminal: they set ``finished_at``, a default
    ``status_reason``, and end every stream. ``output`` that is not a string is
    sent JSON-encoded, as the spec's ``output`` is a JSON string.
    """

    status: str
    at: Stamp = None
    output: object = None
    status_reason: Optional[str] = None

    def __post_init__(self) -> None:
        _check_stamp(self.at)


@dataclass(frozen=True)
class Error:
    """An ``error`` event (not terminal) with the spec's ``Error`` object."""

    code: str
    message: str
    at: Stamp = None
    details: Optional[Sequence[Mapping[str, str]]] = None
    inner_error: Optional[Mapping[str, str]] = None

    def __post_init__(self) -> None:
        _check_stamp(self.at)


@dataclass(frozen=True)
class Pause:
    """Produce nothing for ``seconds`` of real time; the script clock moves on by as much."""

    seconds: float


@dataclass(frozen=True, eq=False)
class Gate:
    """Stop producing events until the test calls :meth:`release`.

    Events before the gate are written to connected clients; nothing after it
    is produced until the gate opens. ``reached`` is set when the script gets here.
    """

    reached: threading.Event = field(default_factory=threading.Event, repr=False)
    opened: threading.Event = field(default_factory=threading.Event, repr=False)

    def release(self) -> None:
        """Let the script go on past this gate."""
        self.opened.set()


@dataclass(frozen=True)
class Unknown:
    """An event of a kind the spec does not define: ``{"event": kind, "timestamp": ..., **fields}``."""

    kind: str = "browser_ready"
    fields: Mapping[str, object] = field(default_factory=dict)
    at: Stamp = None

    def __post_init__(self) -> None:
        _check_stamp(self.at)


@dataclass(frozen=True)
class Malformed:
    """A ``data:`` line whose payload is written as given; by default broken JSON."""

    payload: str = '{"event": "log", "timestamp": '
    at: Stamp = None

    def __post_init__(self) -> None:
        _check_stamp(self.at)


@dataclass(frozen=True)
class Raw:
    """Bytes written into the body exactly as given: no ``data:``, no line ends added.

    ``at`` only decides whether a ``since`` replay includes it.
    """

    data: bytes
    at: Stamp = None

    def __post_init__(self) -> None:
        _check_stamp(self.at)


Step = Union[Log, State, Error, Pause, Gate, Unknown, Malformed, Raw]
"""One step of a :class:`Script`."""


# ---------------------------------------------------------------- faults and scripts


@dataclass(frozen=True)
class Fault:
    """How one connection attempt misbehaves. The default is a well-behaved server.

    Counts (``drop_after``, ``end_after``, ``silence_after``) are script events
    written on that connection, replayed or live; heartbeats do not count.
    """

    status: Optional[int] = None
    """Answer with this status (e.g. 500, 502, 503, 429) and an Error JSON body,
    before the key is even checked, as a gateway would."""
    retry_after: Optional[str] = None
    """With ``status``: the ``Retry-After`` header value."""
    redirect_to: Optional[str] = None
    """Answer ``redirect_status`` with ``Location: redirect_to + path as sent``;
    an origin such as ``http://127.0.0.1:PORT``, or ``""`` for this origin."""
    redirect_status: int = 307
    drop_after: Optional[int] = None
    """After this many events, write half of the next one and drop the socket
    (no chunked terminator)."""
    reset: bool = False
    """With ``drop_after``: drop with a TCP reset instead of a FIN."""
    end_after: Optional[int] = None
    """After this many events, end the body cleanly, terminal state or not."""
    silence_after: Optional[int] = None
    """After this many events, send nothing at all (no heartbeats) for ``silence`` seconds."""
    silence: float = 0.0
    byte_by_byte: bool = False
    """Send the body one byte per chunk, ``byte_delay`` seconds apart."""
    byte_delay: float = 0.0
    line_ending: str = "\n"
    """``"\\n"``, ``"\\r\\n"`` or ``"\\r"`` for every line of every event."""
    bom: bool = False
    """Start the body with a UTF-8 byte order mark."""
    keep_open: bool = False
    """Do not end the body at the terminal state: keep sending later steps and
    heartbeats until the client goes away."""

    def __post_init__(self) -> None:
        if self.line_ending not in ("\n", "\r\n", "\r"):
            raise ValueError("line_ending must be LF, CRLF or CR")


@dataclass(frozen=True)
class Script:
    """One emulated invocation: its metadata, its steps and its faults.

    Attempt ``n`` (0-based) of ``GET .../events`` behaves as ``attempts[n]`` if
    there is one, else as ``fault``. ``start`` (RFC 3339; default: the wall clock
    when the script is added) is ``started_at`` and the first event's time; each
    event without ``at`` comes ``tick`` seconds after the previous one.
    """

    id: str = "inv_test"
    steps: Sequence[Step] = ()
    fault: Fault = Fault()
    attempts: Sequence[Fault] = ()
    start: Optional[str] = None
    tick: float = 0.001
    app_name: str = "emulated-app"
    version: str = "1.0.0"
    action_name: str = "run"
    payload: Optional[str] = None

    def __post_init__(self) -> None:
        if self.start is not None:
            parse_timestamp(self.start)

    def fault_for(self, attempt: int) -> Fault:
        """The fault options of connection attempt ``attempt`` (0-based)."""
        return self.attempts[attempt] if attempt < len(self.attempts) else self.fault


_STEP_TYPES: Dict[str, Any] = {
    "log": Log,
    "state": State,
    "error": Error,
    "pause": Pause,
    "unknown": Unknown,
    "malformed": Malformed,
    "raw": Raw,
}


def _build(cls: Any, values: Mapping[str, Any], what: str) -> Any:
    """Build dataclass ``cls`` from JSON ``values``, naming unknown keys in the error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError("%s: unknown key(s) %s" % (what, ", ".join(unknown)))
    return cls(**values)


def script_from_dict(data: Mapping[str, Any]) -> Script:
    """Build a :class:`Script` from its JSON form.

    ``{"id": ..., "steps": [{"type": "log", "message": ...}, {"type": "pause",
    "seconds": 1}, ...], "fault": {...}, "attempts": [{...}], ...}``: step types
    are the step class names in lower case (all but ``gate``), other keys are
    the dataclass fields. ``raw`` data is a string, sent UTF-8 encoded.
    """
    values = dict(data)
    steps: List[Step] = []
    for number, raw_step in enumerate(values.pop("steps", [])):
        step_values = dict(raw_step)
        kind = step_values.pop("type", None)
        if kind not in _STEP_TYPES:
            raise ValueError("step %d: unknown type %r" % (number, kind))
        if kind == "raw" and isinstance(step_values.get("data"), str):
            step_values["data"] = step_values["data"].encode("utf-8")
        steps.append(_build(_STEP_TYPES[kind], step_values, "step %d" % number))
    values["steps"] = tuple(steps)
    if "fault" in values:
        values["fault"] = _build(Fault, values["fault"], "fault")
    if "attempts" in values:
        values["attempts"] = tuple(_build(Fault, a, "attempt") for a in values["attempts"])
    built: Script = _build(Script, values, "script")
    return built


def load_scenario(path: str) -> List[Script]:
    """Read a JSON scenario file: one script object, or a list of them."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    items = data if isinstance(data, list) else [data]
    return [script_from_dict(item) for item in items]


# ---------------------------------------------------------------- emitted events


@dataclass(frozen=True)
class EmittedEvent:
    """An event the script produced, as every connection will send it.

    ``data`` is the ``data:`` payload (for ``kind == "raw"``, the raw bytes);
    ``timestamp`` is the string sent, ``ns`` its value in epoch nanoseconds.
    """

    kind: str
    timestamp: str
    ns: int
    data: bytes
    terminal: bool = False

    def json(self) -> Any:
        """The payload decoded as JSON (raises for malformed and raw events)."""
        return json.loads(self.data.decode("utf-8", "replace"))


def _dumps(value: object) -> bytes:
    # Compact and real UTF-8 (not \\u escapes): clients must cope with
    # multi-byte characters split across reads.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


def _json_string_bytes(raw: bytes) -> bytes:
    """Escape ``raw`` for use inside JSON quotes, leaving bytes >= 0x80 untouched."""
    out = bytearray()
    for byte in raw:
        if byte in (0x22, 0x5C):
            out += b"\\" + bytes((byte,))
        elif byte < 0x20:
            out += b"\\u%04x" % byte
        else:
            out.append(byte)
    return bytes(out)


# ---------------------------------------------------------------- one invocation


class EmulatedInvocation:
    """A running :class:`Script`: its produced events, its state, its attempts.

    A background thread runs the steps in order; connections replay what it
    produced and then wait for more.
    """

    def __init__(self, script: Script, stopping: threading.Event) -> None:
        """Prepare ``script``; call :meth:`_start` to run it."""
        self.script = script
        self.id = script.id
        self._stopping = stopping
        self._cond = threading.Condition()
        self._queue: Deque[Step] = deque(script.steps)
        self._busy = False
        self._history: List[EmittedEvent] = []
        self._attempts = 0
        self._tick_ns = int(round(script.tick * _NS))
        self._start_ns = time.time_ns() if script.start is None else parse_timestamp(script.start)
        self._clock = self._start_ns
        self._state: Dict[str, object] = {
            "id": script.id,
            "app_name": script.app_name,
            "version": script.version,
            "action_name": script.action_name,
            "status": "queued",
            "started_at": script.start or format_timestamp(self._start_ns),
            "finished_at": None,
        }
        if script.payload is not None:
            self._state["payload"] = script.payload
        self._thread = threading.Thread(
            target=self._run, name="kernel-sse-emulator-script-%s" % script.id
        )

    def __repr__(self) -> str:
        return "<EmulatedInvocation %r status=%s events=%d>" % (
            self.id,
            self._state["status"],
            len(self._history),
        )

    # ---- for tests

    def append(self, *steps: Step) -> None:
        """Add steps to the end of the script, also while clients are connected."""
        with self._cond:
            self._queue.extend(steps)
            self._cond.notify_all()

    def emitted(self) -> List[EmittedEvent]:
        """The events produced so far, in order (heartbeats are per connection, not here)."""
        with self._cond:
            return list(self._history)

    def invocation(self) -> Dict[str, object]:
        """The current ``Invocation`` object, as ``GET /invocations/{id}`` returns it."""
        with self._cond:
            return dict(self._state)

    @property
    def attempts(self) -> int:
        """How many ``GET .../events`` requests for this invocation arrived."""
        with self._cond:
            return self._attempts

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every step so far has run; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # ---- for the server

    def _start(self) -> None:
        self._thread.start()

    def _wake(self) -> None:
        """Wake the script thread and every waiting stream, so they see a stop."""
        with self._cond:
            self._cond.notify_all()

    def _join(self) -> None:
        self._thread.join()

    def _next_attempt(self) -> int:
        with self._cond:
            self._attempts += 1
            return self._attempts - 1

    def _wait_events(self, position: int, timeout: Optional[float]) -> List[EmittedEvent]:
        """Events from ``position`` on, waiting up to ``timeout`` (None: forever) for one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._history) <= position and not self._stopping.is_set():
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._history[position:]

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()  # for wait_idle
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    return
                step = self._queue.popleft()
                self._busy = True
            if isinstance(step, Pause):
                if self._stopping.wait(step.seconds):
                    return
                with self._cond:
                    self._clock += int(round(step.seconds * _NS))
            elif isinstance(step, Gate):
                step.reached.set()
                while not step.opened.wait(_GATE_POLL):
                    if self._stopping.is_set():
                        return
            else:
                with self._cond:
                    self._history.append(self._emit(step))
                    self._cond.notify_all()

    def _stamp(self, at: Stamp) -> Tuple[int, str]:
        """The time of the next event, and the clock moved on one tick past it."""
        if isinstance(at, str):
            ns, text = parse_timestamp(at), at
        else:
            ns = self._clock if at is None else self._start_ns + int(round(at * _NS))
            text = format_timestamp(ns)
        self._clock = ns + self._tick_ns
        return ns, text

    def _emit(self, step: Step) -> EmittedEvent:
        """Turn an event step into the event every connection sends (lock held)."""
        if isinstance(step, (Pause, Gate)):  # pragma: no cover - _run handles these
            raise TypeError(step)
        ns, ts = self._stamp(step.at)
        if isinstance(step, Log):
            if isinstance(step.message, bytes):
                head = _dumps({"event": "log", "timestamp": ts, "message": ""})
                data = head[:-2] + _json_string_bytes(step.message) + b'"}'
            else:
                data = _dumps({"event": "log", "timestamp": ts, "message": step.message})
            return EmittedEvent("log", ts, ns, data)
        if isinstance(step, State):
            return self._emit_state(step, ns, ts)
        if isinstance(step, Error):
            error: Dict[str, object] = {"code": step.code, "message": step.message}
            if step.details is not None:
                error["details"] = [dict(d) for d in step.details]
            if step.inner_error is not None:
                error["inner_error"] = dict(step.inner_error)
            return EmittedEvent("error", ts, ns, _dumps({"event": "error", "timestamp": ts, "error": error}))
        if isinstance(step, Unknown):
            body: Dict[str, object] = {"event": step.kind, "timestamp": ts}
            body.update(step.fields)
            return EmittedEvent("unknown", ts, ns, _dumps(body))
        if isinstance(step, Malformed):
            return EmittedEvent("malformed", ts, ns, step.payload.encode("utf-8", "surrogatepass"))
        return EmittedEvent("raw", ts, ns, step.data)

    def _emit_state(self, step: State, ns: int, ts: str) -> EmittedEvent:
        state = self._state
        state["status"] = step.status
        terminal = step.status in _TERMINAL_STATUSES
        if terminal:
            state["finished_at"] = ts
            default_reason = (
                "Invocation completed successfully" if step.status == "succeeded" else "Invocation failed"
            )
            state["status_reason"] = step.status_reason or default_reason
        elif step.status_reason is not None:
            state["status_reason"] = step.status_reason
        if step.output is not None:
            state["output"] = step.output if isinstance(step.output, str) else _dumps(step.output).decode("utf-8")
        body = {"event": "invocation_state", "timestamp": ts, "invocation": dict(state)}
        return EmittedEvent("state", ts, ns, _dumps(body), terminal=terminal)


# ---------------------------------------------------------------- requests


@dataclass(repr=False)
class RequestRecord:
    """One request the emulator received. ``path`` is exactly as sent (query included)."""

    method: str
    path: str
    query: Dict[str, List[str]]
    headers: List[Tuple[str, str]]
    invocation_id: Optional[str] = None
    attempt: Optional[int] = None
    """For ``GET .../events`` of a known invocation: its 0-based attempt number."""
    status: Optional[int] = None
    """The status answered (None while the request is still being handled)."""
    events_written: int = 0
    """Script events written on this response (heartbeats not counted)."""
    heartbeats_written: int = 0

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def __repr__(self) -> str:
        # The Authorization header holds the key: never show it.
        shown = [(k, "<redacted>" if k.lower() == "authorization" else v) for k, v in self.headers]
        return "RequestRecord(%s %s status=%s headers=%r)" % (self.method, self.path, self.status, shown)


class _Stopping(Exception):
    """The emulator is stopping: abandon the response."""


class _ChunkedWriter:
    """Chunked transfer encoding over the handler's socket, with the byte faults."""

    def __init__(self, wfile: Any, fault: Fault, stopping: threading.Event) -> None:
        self._wfile = wfile
        self._fault = fault
        self._stopping = stopping
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        data, self._buffer = bytes(self._buffer), bytearray()
        if not data:
            return
        if not self._fault.byte_by_byte:
            self._wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            return
        for index in range(len(data)):
            self._wfile.write(b"1\r\n" + data[index : index + 1] + b"\r\n")
            if self._fault.byte_delay and self._stopping.wait(self._fault.byte_delay):
                raise _Stopping()

    def end(self) -> None:
        self.flush()
        self._wfile.write(b"0\r\n\r\n")


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes the two endpoints; the streaming itself is in :meth:`_stream`."""

    protocol_version = "HTTP/1.1"
    server_version = "kernel-sse-emulator"
    disable_nagle_algorithm = True  # an event must leave as soon as it is written
    server: _Server

    def version_string(self) -> str:
        """The ``Server`` header: no Python version, as a real API would not show one."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Log to stderr unless the emulator is quiet (request lines hold no key)."""
        if not self.server.emulator.quiet:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        """Serve ``/invocations/{id}`` and ``/invocations/{id}/events``."""
        emulator = self.server.emulator
        split = urllib.parse.urlsplit(self.path)
        record = RequestRecord(
            method=self.command,
            path=self.path,
            query=urllib.parse.parse_qs(split.query, keep_blank_values=True),
            headers=list(self.headers.items()),
        )
        emulator._record(record)
        segments = split.path.split("/")
        if len(segments) not in (3, 4) or segments[:2] != ["", "invocations"] or not segments[2]:
            self._send_error(record, 404, "not_found", "No such route: %s" % split.path)
            return
        if len(segments) == 4 and segments[3] != "events":
            self._send_error(record, 404, "not_found", "No such route: %s" % split.path)
            return
        invocation_id = urllib.parse.unquote(segments[2])
        record.invocation_id = invocation_id
        invocation = emulator._invocations.get(invocation_id)
        events = len(segments) == 4
        fault = Fault()
        if events and invocation is not None:
            record.attempt = invocation._next_attempt()
            fault = invocation.script.fault_for(record.attempt)
            if self._send_fault(record, fault):
                return
        if not emulator._authorized(self.headers.get("Authorization")):
            self._send_error(
                record, 401, "unauthorized", "Missing or invalid API key.", {"WWW-Authenticate": "Bearer"}
            )
            return
        if invocation is None:
            self._send_error(record, 404, "not_found", "Invocation not found.")
            return
        if not events:
            self._send_json(record, 200, invocation.invocation())
            return
        since_ns = 0
        since = record.query.get("since", [""])[0]
        if since:
            try:
                since_ns = parse_since(since)
            except (ValueError, decimal.InvalidOperation):
                self._send_error(
                    record,
                    400,
                    "bad_request",
                    "Invalid since: use an RFC 3339 timestamp or a duration like 5m.",
                )
                return
        self._stream(record, invocation, since_ns, fault)

    def _send_fault(self, record: RequestRecord, fault: Fault) -> bool:
        """Answer an injected status or redirect; True if one was sent."""
        if fault.status is not None:
            headers = {} if fault.retry_after is None else {"Retry-After": fault.retry_after}
            code = {429: "rate_limited", 502: "bad_gateway", 503: "service_unavailable"}
            self._send_error(
                record,
                fault.status,
                code.get(fault.status, "internal_error"),
                "Injected fault: status %d." % fault.status,
                headers,
            )
            return True
        if fault.redirect_to is not None:
            record.status = fault.redirect_status
            self.send_response(fault.redirect_status)
            self.send_header("Location", fault.redirect_to.rstrip("/") + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def _send_json(
        self,
        record: RequestRecord,
        status: int,
        body: object,
        headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        data = _dumps(body)
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self,
        record: RequestRecord,
        status: int,
        code: str,
        message: str,
        headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        self._send_json(record, status, {"code": code, "message": message}, headers)

    def _stream(
        self, record: RequestRecord, invocation: EmulatedInvocation, since_ns: int, fault: Fault
    ) -> None:
        """Send the SSE response; a socket error or a stop just ends it."""
        record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("X-SSE-Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            ended = _Stream(self, record, invocation, since_ns, fault).run()
        except (OSError, _Stopping):
            ended = False
        if not ended:
            self.close_connection = True


class _Stream:
    """The body of one SSE response: replay, live events, heartbeats, and the attempt's faults."""

    def __init__(
        self,
        handler: _Handler,
        record: RequestRecord,
        invocation: EmulatedInvocation,
        since_ns: int,
        fault: Fault,
    ) -> None:
        self.handler = handler
        self.emulator = handler.server.emulator
        self.record = record
        self.invocation = invocation
        self.since_ns = since_ns
        self.fault = fault
        self.out = _ChunkedWriter(handler.wfile, fault, self.emulator._stopping)
        self.eol = fault.line_ending.encode("ascii")
        self.silenced = False
        self.pending: List[EmittedEvent] = []  # written but not yet flushed
        self.last_write = time.monotonic()

    def run(self) -> bool:
        """Stream until the terminal state, a fault or a stop; True if the body ended cleanly."""
        stopping = self.emulator._stopping
        if self.fault.bom:
            self.out.write(_BOM)
            self.out.flush()
        if self._checkpoint():
            return True
        position = 0
        while True:
            interval = self.emulator.heartbeat_interval
            timeout = None if interval is None else max(0.0, self.last_write + interval - time.monotonic())
            batch = self.invocation._wait_events(position, timeout)
            if stopping.is_set():
                return False
            if not batch:
                if interval is not None and time.monotonic() - self.last_write >= interval:
                    self._heartbeat()
                continue
            position += len(batch)
            for event in batch:
                if event.ns < self.since_ns:
                    continue
                if self.record.events_written == self.fault.drop_after:
                    self._drop(event)
                    return False
                self.out.write(self._encode(event))
                self.pending.append(event)
                self.record.events_written += 1
                if event.terminal and not self.fault.keep_open:
                    self._flush()
                    self.out.end()
                    return True
                if self._checkpoint():
                    return True
            self._flush()

    def _checkpoint(self) -> bool:
        """Apply the faults due after the events written so far; True if the body ended."""
        count = self.record.events_written
        if count == self.fault.end_after:
            self._flush()
            self.out.end()
            return True
        if count == self.fault.silence_after and not self.silenced:
            self.silenced = True
            self._flush()
            if self.emulator._stopping.wait(self.fault.silence):
                raise _Stopping()
            self.last_write = time.monotonic()
        return False

    def _encode(self, event: EmittedEvent) -> bytes:
        if event.kind == "raw":
            return event.data
        return b"data: " + event.data + self.eol + self.eol

    def _heartbeat(self) -> None:
        heartbeat = {"event": "sse_heartbeat", "timestamp": format_timestamp(time.time_ns())}
        self.out.write(b"data: " + _dumps(heartbeat) + self.eol + self.eol)
        self.out.flush()
        self.record.heartbeats_written += 1
        self.last_write = time.monotonic()

    def _flush(self) -> None:
        """Send what is buffered, then tell the write hook when those events left."""
        if not self.pending:
            return
        self.out.flush()
        self.last_write = time.monotonic()
        hook = self.emulator.on_write
        if hook is not None:
            now = time.perf_counter()
            for event in self.pending:
                hook(event, now)
        del self.pending[:]

    def _drop(self, event: EmittedEvent) -> None:
        """Send half of ``event`` and drop the connection, with no chunked terminator."""
        self._flush()
        encoded = self._encode(event)
        self.out.write(encoded[: max(1, len(encoded) // 2)])
        self.out.flush()
        if self.fault.reset:
            self.handler.server.reset_on_close(self.handler.connection)
        else:
            self.handler.connection.shutdown(socket.SHUT_RDWR)


class _Server(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer that tracks its threads and sockets so stop can end them."""

    daemon_threads = False
    block_on_close = False  # stop() joins the threads itself, after closing their sockets

    def __init__(self, port: int, emulator: Emulator) -> None:
        self.emulator = emulator
        self.lock = threading.Lock()
        self.threads: Set[threading.Thread] = set()
        self.connections: Set[socket.socket] = set()
        self.resets: Set[socket.socket] = set()
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the address (slow where DNS is absent)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])

    def reset_on_close(self, request: socket.socket) -> None:
        """Close ``request`` with a TCP reset instead of a FIN when its handler is done."""
        with self.lock:
            self.resets.add(request)

    def shutdown_request(self, request: Any) -> None:
        """Close the connection: with a FIN as usual, or with a reset if one was asked for."""
        with self.lock:
            reset = request in self.resets
            self.resets.discard(request)
        if not reset:
            super().shutdown_request(request)
            return
        # Linger 0 makes close() send a reset; a shutdown first would send a FIN.
        request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve ``request`` in a tracked thread."""
        thread = threading.Thread(
            target=self._serve, args=(request, client_address), name="kernel-sse-emulator-connection"
        )
        with self.lock:
            self.threads.add(thread)
            self.connections.add(request)
        thread.start()

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError:
            pass  # the client went away or stop() closed the socket: not an emulator error
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self.lock:
                self.connections.discard(request)
                self.threads.discard(threading.current_thread())


# ---------------------------------------------------------------- the emulator


class Emulator:
    """The emulated Kernel API on ``127.0.0.1``. Use it as a context manager.

    ``api_key`` None accepts any non-empty Bearer token (a missing one is still
    401). ``heartbeat_interval`` (seconds, None for never) may be changed at any
    time; it applies from a stream's next wait. ``on_write(event, t)`` is called
    after each event is on the socket, with ``t`` from ``time.perf_counter()``.
    An emulator is started once and stopped once.
    """

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        port: int = 0,
        heartbeat_interval: Optional[float] = DEFAULT_HEARTBEAT_INTERVAL,
        quiet: bool = True,
        on_write: Optional[Callable[[EmittedEvent, float], None]] = None,
    ) -> None:
        """Configure; nothing listens before :meth:`start`."""
        self.api_key = api_key
        self.heartbeat_interval = heartbeat_interval
        self.quiet = quiet
        self.on_write = on_write
        self._port = port
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._invocations: Dict[str, EmulatedInvocation] = {}
        self._requests: List[RequestRecord] = []
        self._server: Optional[_Server] = None
        self._serve_thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        return "<Emulator %s invocations=%d>" % (where, len(self._invocations))

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43210`` (no trailing slash)."""
        return "http://127.0.0.1:%d" % self.port

    def start(self) -> Emulator:
        """Bind to 127.0.0.1 and serve in a background thread."""
        if self._server is not None or self._stopping.is_set():
            raise RuntimeError("an emulator is started only once")
        self._server = _Server(self._port, self)
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="kernel-sse-emulator"
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection, and join every thread it started."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        server = self._server
        if server is not None and self._serve_thread is not None:
            server.shutdown()
            self._serve_thread.join()
        with self._lock:
            invocations = list(self._invocations.values())
        for invocation in invocations:
            invocation._wake()
        if server is not None:
            with server.lock:
                connections, threads = list(server.connections), list(server.threads)
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            for thread in threads:
                thread.join()
            server.server_close()
        for invocation in invocations:
            invocation._join()

    def add(self, script: Script) -> EmulatedInvocation:
        """Add an invocation and start running its script at once."""
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("the emulator is stopped")
            if script.id in self._invocations:
                raise ValueError("invocation %r already exists" % (script.id,))
            invocation = EmulatedInvocation(script, self._stopping)
            self._invocations[script.id] = invocation
            invocation._start()
        return invocation

    def invocation(self, invocation_id: str) -> EmulatedInvocation:
        """The invocation added with ``invocation_id`` (KeyError if none)."""
        with self._lock:
            return self._invocations[invocation_id]

    @property
    def requests(self) -> List[RequestRecord]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the requests recorded so far."""
        with self._lock:
            del self._requests[:]

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def _authorized(self, header: Optional[str]) -> bool:
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        if self.api_key is None:
            return True
        return hmac.compare_digest(token.encode("utf-8"), self.api_key.encode("utf-8"))


@contextlib.contextmanager
def running_emulator(
    *scripts: Script,
    api_key: Optional[str] = None,
    port: int = 0,
    heartbeat_interval: Optional[float] = DEFAULT_HEARTBEAT_INTERVAL,
    quiet: bool = True,
    on_write: Optional[Callable[[EmittedEvent, float], None]] = None,
) -> Iterator[Emulator]:
    """Start an :class:`Emulator` with ``scripts`` added, and stop it on exit."""
    emulator = Emulator(
        api_key=api_key, port=port, heartbeat_interval=heartbeat_interval, quiet=quiet, on_write=on_write
    )
    with emulator:
        for script in scripts:
            emulator.add(script)
        yield emulator


# ---------------------------------------------------------------- the demo

_DEMO_STEPS: Sequence[Tuple[float, str]] = (
    (0.0, "Starting action scrape-products (shop-scraper 1.4.2)"),
    (0.3, "Launching Chromium 126.0.6478.126 (headless, stealth mode)"),
    (0.5, "Browser session kx7q2m9d4rwz ready: viewport 1920x1080, locale en-US"),
    (0.2, "Navigating to https://shop.example.com/"),
    (0.6, "GET https://shop.example.com/ -> 200 (412 ms, 1.2 MB)"),
    (0.2, "Cookie banner detected; clicking \u201cAccept all\u201d"),
    (0.3, "Page title: \u201cExample Shop \u2013 Home\u201d"),
    (0.3, "Searching for \u201cmechanical keyboard\u201d"),
    (0.4, "Typed query into input[name=q] and pressed Enter"),
    (0.5, "Waiting for selector .product-card (timeout 15 s)"),
    (0.4, "Found 24 product cards on page 1"),
    (0.2, "Extracted: Keychron K2 Pro \u2013 $109.00 \u2013 in stock"),
    (0.1, "Extracted: Logitech MX Mechanical \u2013 $149.99 \u2013 in stock"),
    (0.1, "Extracted: Ducky One 3 TKL \u2013 $129.00 \u2013 2 left"),
    (0.1, "Extracted: Razer BlackWidow V4 \u2013 $169.99 \u2013 in stock"),
    (0.1, "Extracted: NuPhy Air75 V2 \u2013 $119.95 \u2013 back-ordered"),
    (0.1, "Extracted: Varmilo VA87M \u2013 \u20ac139,00 \u2013 in stock"),
    (0.2, "Extracted 24/24 products from page 1"),
    (0.3, "Clicking \u201cNext page\u201d"),
    (0.2, "Waiting for network idle on page 2"),
)
_DEMO_STEPS_AFTER_WAIT: Sequence[Tuple[float, str]] = (
    (0.0, "Network idle after 3.02 s"),
    (0.2, "Found 18 product cards on page 2"),
    (0.2, "Extracted: Akko 5075B Plus \u2013 $89.99 \u2013 in stock"),
    (0.1, "Extracted: Glorious GMMK Pro \u2013 $169.99 \u2013 in stock"),
    (0.1, "Extracted: Corsair K70 RGB Pro \u2013 $159.99 \u2013 in stock"),
    (0.1, "Extracted: Epomaker TH80 \u2013 $79.99 \u2013 in stock"),
)
_DEMO_STEPS_AFTER_RETRY: Sequence[Tuple[float, str]] = (
    (0.6, "Retry 1/3 for card 17 succeeded: Leopold FC750R \u2013 $115.00 \u2013 in stock"),
    (0.2, "Extracted 18/18 products from page 2"),
    (0.2, "No further pages: pagination ends at page 2"),
    (0.3, "Cheapest in stock: Epomaker TH80 at $79.99"),
    (0.3, "Screenshot saved: /tmp/kernel/screenshots/results.png (1920x4312)"),
    (0.2, "Uploading results.json (42 products, 18.4 kB)"),
    (0.3, "Closing browser session kx7q2m9d4rwz"),
    (0.2, "Action finished in 9.9 s: 42 products from 2 pages, 1 retry"),
)


def demo_script(
    speed: float = 1.0, invocation_id: str = DEMO_INVOCATION_ID, start: Optional[str] = None
) -> Script:
    """The built-in demo: a browser automation run of about 10 s divided by ``speed``.

    Queued, running, three dozen log lines, one non-fatal error, a 3 s wait
    (heartbeats show up there with the default interval), then succeeded with
    an output object. Run it with ``heartbeat_interval=DEFAULT_HEARTBEAT_INTERVAL / speed``
    to keep heartbeats in proportion.
    """
    if speed <= 0:
        raise ValueError("speed must be positive")
    steps: List[Step] = [State("queued"), Pause(0.4 / speed), State("running")]

    def logs(lines: Sequence[Tuple[float, str]]) -> None:
        for delay, message in lines:
            if delay:
                steps.append(Pause(delay / speed))
            steps.append(Log(message))

    logs(_DEMO_STEPS)
    steps.append(Pause(3.0 / speed))
    logs(_DEMO_STEPS_AFTER_WAIT)
    steps.append(Pause(0.2 / speed))
    steps.append(
        Error("selector_timeout", "Timed out after 5000 ms waiting for .price on card 17; retrying")
    )
    logs(_DEMO_STEPS_AFTER_RETRY)
    output = {
        "products": 42,
        "pages": 2,
        "retries": 1,
        "cheapest": {"name": "Epomaker TH80", "price": 79.99, "currency": "USD"},
        "screenshot": "/tmp/kernel/screenshots/results.png",
    }
    steps.append(Pause(0.2 / speed))
    steps.append(State("succeeded", output=output))
    return Script(
        id=invocation_id,
        steps=tuple(steps),
        start=start,
        app_name="shop-scraper",
        version="1.4.2",
        action_name="scrape-products",
        payload='{"query": "mechanical keyboard", "max_pages": 3}',
    )


# ---------------------------------------------------------------- command line


class _Terminated(Exception):
    """SIGTERM arrived."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m kernel_sse_emulator``: print the base URL, serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m kernel_sse_emulator", description="A local emulator of the Kernel invocation API."
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--api-key", help="the only key accepted (default: any non-empty Bearer key)")
    parser.add_argument("--scenario", help="JSON file with a script or a list of scripts (default: the demo)")
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT_INTERVAL, help="seconds")
    parser.add_argument("--speed", type=float, default=1.0, help="speed factor of the demo scenario")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not log requests")
    args = parser.parse_args(argv)
    try:
        scripts = load_scenario(args.scenario) if args.scenario else [demo_script(args.speed)]
    except (OSError, ValueError, TypeError) as exc:
        parser.error("cannot load scenario: %s" % (exc,))
    emulator = Emulator(api_key=args.api_key, port=args.port, heartbeat_interval=args.heartbeat, quiet=args.quiet)
    try:
        emulator.start()
    except OSError as exc:
        parser.error("cannot listen on 127.0.0.1:%d: %s" % (args.port, exc.strerror or exc))
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for script in scripts:
            emulator.add(script)
        print(emulator.url, flush=True)
        required = "the key given with --api-key" if args.api_key else "any non-empty Bearer key"
        print("Kernel API emulator; API key: %s. Invocations:" % required, file=sys.stderr)
        for script in scripts:
            print("  %s/invocations/%s/events" % (emulator.url, script.id), file=sys.stderr)
        print("Press Ctrl-C to stop.", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, _Terminated):
        print("Stopped.", file=sys.stderr)
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
