"""A local emulator of the Kernel invocation API, for tests, demos and plugin authors.

Standard library only, and independent of ``kernel_sse`` on purpose: it is the
yardstick the client is measured against, so it must not share its code.

It serves, on 127.0.0.1, with Bearer auth and the API's error body
(``{"code": ..., "message": ...}``):

- ``GET /invocations/{id}/events``: the Server-Sent Events stream of an
  invocation, with ``since`` (RFC 3339 or a duration such as ``5m``, inclusive,
  applied to each event's own timestamp), replay then live events, heartbeats
  while idle, and the end of the response once the invocation is finished;
- ``GET /invocations/{id}``: the ``Invocation`` JSON;
- ``POST /invocations``: start a registered action (see :class:`Action`);
- ``GET /invocations``: list with filters and offset pagination
  (``X-Has-More``, ``X-Next-Offset``), newest first;
- ``PATCH /invocations/{id}``: finish or cancel.

An invocation is a :class:`Script`: a list of steps (:class:`Log`,
:class:`State`, :class:`Error`, :class:`Pause`, :class:`Gate`, and the bad-data
steps :class:`Unknown`, :class:`Malformed`, :class:`Raw`) plus :class:`Fault`
options, either for every connection attempt or for one attempt.
``POST /invocations`` has its own :class:`PostFault` options.

In tests::

    with running_emulator(Script("inv1", [Log("hi"), State("succeeded")])) as emu:
        ...  # follow f"{emu.url}/invocations/inv1/events" with emu.api_key

From a shell: ``python kernel_sse_emulator.py [--port N] [--api-key KEY]
[--scenario FILE]`` prints its base URL and ready-to-paste ``kernel-sse``
command lines, and serves until interrupted. ``docs/emulator.md`` describes
the scenario file format, every endpoint and every switch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import decimal
import hmac
import http.server
import json
import random
import re
import secrets
import shlex
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
    "DEFAULT_PAGE_SIZE",
    "DEMO_ACTION",
    "DEMO_APP",
    "DEMO_INVOCATION_ID",
    "DEMO_VERSION",
    "LIST_FAULTS",
    "Action",
    "EmittedEvent",
    "EmulatedInvocation",
    "Emulator",
    "Error",
    "Fault",
    "Gate",
    "Log",
    "Malformed",
    "Pause",
    "PostFault",
    "Raw",
    "RequestRecord",
    "Scenario",
    "Script",
    "ScriptFactory",
    "Settings",
    "Stamp",
    "State",
    "Step",
    "Unknown",
    "demo_script",
    "format_timestamp",
    "load_scenario",
    "load_scenario_file",
    "main",
    "parse_since",
    "parse_timestamp",
    "running_emulator",
    "scenario_from_json",
    "script_from_dict",
]

DEFAULT_HEARTBEAT_INTERVAL = 2.0
"""Seconds of idleness after which a stream gets an ``sse_heartbeat`` event."""

DEMO_INVOCATION_ID = "demo"
"""The invocation id of the built-in demo scenario."""

DEMO_APP, DEMO_ACTION, DEMO_VERSION = "demo", "run", "1"
"""The action every emulator registers unless ``register_demo=False``: it runs
:func:`demo_script`, at the speed given by the payload ``{"speed": N}`` (default 1)."""

DEFAULT_PAGE_SIZE = 20
"""Invocations per ``GET /invocations`` page when the request has no ``limit``."""

_TERMINAL_STATUSES = ("succeeded", "failed")
_NS = 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BOM = b"\xef\xbb\xbf"
# Buffered event bytes are sent once they reach this size, so a long replay
# goes out in a few large chunks instead of one huge one.
_FLUSH_AT = 64 * 1024
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
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


def _check_late(at: Stamp, late_by: float) -> None:
    if late_by < 0:
        raise ValueError("late_by must be >= 0")
    if late_by and isinstance(at, str):
        raise ValueError("late_by cannot shift an explicit timestamp string: write the earlier time instead")


@dataclass(frozen=True)
class Log:
    """A ``log`` event. ``message`` as bytes is put between the JSON quotes as
    is (only ``"``, ``\\`` and control bytes escaped), so it can carry invalid UTF-8.

    ``late_by`` seconds (>= 0) stamps the event that much before its script time,
    so it can be older than events produced before it (a late event); the script
    clock itself does not go back.
    """

    message: Union[str, bytes]
    at: Stamp = None
    late_by: float = 0.0

    def __post_init__(self) -> None:
        _check_stamp(self.at)
        _check_late(self.at, self.late_by)


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
    late_by: float = 0.0
    """As :attr:`Log.late_by`."""

    def __post_init__(self) -> None:
        _check_stamp(self.at)
        _check_late(self.at, self.late_by)


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
    jitter: Optional[float] = None
    """Bound in seconds of the random shift of each ``log`` and ``error`` timestamp
    (uniform in [-jitter, +jitter]); None: the emulator's ``jitter``."""
    jitter_seed: Optional[int] = None
    """Seed of that randomness, for reproducible runs; None: the emulator's ``jitter_seed``."""
    state_on_connect: Optional[bool] = None
    """Start every events response with the current state stamped now; None: the emulator's switch."""

    def __post_init__(self) -> None:
        if self.start is not None:
            parse_timestamp(self.start)
        if self.jitter is not None and self.jitter < 0:
            raise ValueError("jitter must be >= 0")

    def fault_for(self, attempt: int) -> Fault:
        """The fault options of connection attempt ``attempt`` (0-based)."""
        return self.attempts[attempt] if attempt < len(self.attempts) else self.fault


@dataclass(frozen=True)
class PostFault:
    """How one ``POST /invocations`` attempt misbehaves. The default is a well-behaved server.

    Without ``create``, ``status`` and ``drop`` act before the key and the body
    are even checked, and nothing is created. With ``create``, the request is
    handled as usual first (a bad key or body is still answered 401 / 400 / 404),
    the invocation is created and runs, and only then is the answer replaced.
    ``delay`` holds back whatever answer there is (or the drop).
    """

    status: Optional[int] = None
    """Answer this status (e.g. 500, 503, 429) with an Error JSON body."""
    retry_after: Optional[str] = None
    """With ``status``: the ``Retry-After`` header value."""
    drop: bool = False
    """Close the connection after reading the request, without any answer."""
    create: bool = False
    """With ``status`` or ``drop``: create the invocation before failing."""
    delay: float = 0.0
    """Seconds to wait before answering (after creating, when the request creates)."""

    def __post_init__(self) -> None:
        if self.status is not None and self.drop:
            raise ValueError("a POST fault answers a status or drops, not both")
        if self.create and self.status is None and not self.drop:
            raise ValueError("create needs status or drop")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")


LIST_FAULTS = ("has_more_without_offset", "repeat_offset", "zero_offset", "no_has_more")
"""The pagination faults of ``GET /invocations``; each applies to pages that have more after them:

- ``has_more_without_offset``: ``X-Has-More: true`` and no ``X-Next-Offset`` (a server error);
- ``repeat_offset``: ``X-Next-Offset`` is the offset that was asked for;
- ``zero_offset``: ``X-Has-More: true`` with ``X-Next-Offset: 0``;
- ``no_has_more``: no ``X-Has-More`` header on any page (the offsets alone tell).
"""


def _check_list_fault(name: Optional[str]) -> None:
    if name is not None and name not in LIST_FAULTS:
        raise ValueError("unknown list fault %r (one of %s)" % (name, ", ".join(LIST_FAULTS)))


ScriptFactory = Callable[[Optional[str]], Script]
"""Makes the script of a new invocation from the request's ``payload`` (None if absent)."""


@dataclass(frozen=True)
class Action:
    """An ``(app_name, action_name, version)`` that ``POST /invocations`` can start.

    ``script`` is a template :class:`Script` or a :data:`ScriptFactory`. Each new
    invocation gets its steps and faults, with ``id`` (a fresh ``inv_...``),
    ``app_name``, ``action_name``, ``version``, ``payload`` and ``start`` (now)
    replaced by those of the request.
    """

    app_name: str
    action_name: str
    version: str
    script: Union[Script, ScriptFactory]

    def make_script(self, invocation_id: str, payload: Optional[str]) -> Script:
        """The script of a new invocation ``invocation_id`` started with ``payload``."""
        base = self.script if isinstance(self.script, Script) else self.script(payload)
        return dataclasses.replace(
            base,
            id=invocation_id,
            app_name=self.app_name,
            action_name=self.action_name,
            version=self.version,
            payload=payload,
            start=None,
        )


@dataclass(frozen=True)
class Settings:
    """Emulator switches set by a scenario file; None leaves the emulator's value alone.

    Each field is the :class:`Emulator` attribute of the same name.
    """

    heartbeat_interval: Optional[float] = None
    page_size: Optional[int] = None
    state_on_connect: Optional[bool] = None
    jitter: Optional[float] = None
    jitter_seed: Optional[int] = None
    post_fault: Optional[PostFault] = None
    post_attempts: Optional[Sequence[PostFault]] = None
    list_fault: Optional[str] = None
    list_attempts: Optional[Sequence[Optional[str]]] = None
    register_demo: Optional[bool] = None

    def __post_init__(self) -> None:
        _check_list_fault(self.list_fault)
        for name in self.list_attempts or ():
            _check_list_fault(name)
        if self.page_size is not None and self.page_size < 1:
            raise ValueError("page_size must be >= 1")


@dataclass(frozen=True)
class Scenario:
    """What a scenario file describes: invocations that exist at once, actions, switches."""

    invocations: Sequence[Script] = ()
    actions: Sequence[Action] = ()
    settings: Settings = Settings()


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


_SCENARIO_KEYS = ("invocations", "actions", "emulator")


def _action_from_dict(data: Mapping[str, Any], number: int) -> Action:
    values = dict(data)
    template = values.pop("script", {})
    if not isinstance(template, Mapping):
        raise ValueError("action %d: script must be an object" % number)
    if "id" in template:
        raise ValueError("action %d: its script has no id: each invocation gets a new one" % number)
    values["script"] = script_from_dict(template)
    action: Action = _build(Action, values, "action %d" % number)
    for name in ("app_name", "action_name", "version"):
        if not isinstance(getattr(action, name), str) or not getattr(action, name):
            raise ValueError("action %d: %s must be a non-empty string" % (number, name))
    return action


def _settings_from_dict(data: Mapping[str, Any]) -> Settings:
    values = dict(data)
    if "post_fault" in values:
        values["post_fault"] = _build(PostFault, values["post_fault"], "post_fault")
    if "post_attempts" in values:
        attempts = values["post_attempts"]
        values["post_attempts"] = tuple(_build(PostFault, a, "post_attempts") for a in attempts)
    if "list_attempts" in values:
        values["list_attempts"] = tuple(values["list_attempts"])
    settings: Settings = _build(Settings, values, "emulator")
    return settings


def scenario_from_json(data: Any) -> Scenario:
    """Build a :class:`Scenario` from a scenario file's JSON value.

    Three forms (``docs/emulator.md`` describes every field): one script object;
    a list of script objects; or an object with any of ``invocations`` (a list
    of scripts), ``actions`` (a list of ``{"app_name", "action_name", "version",
    "script"}``, the script without ``id``) and ``emulator`` (switches, the
    fields of :class:`Settings`). Raises ValueError or TypeError for anything else.
    """
    if isinstance(data, list):
        return Scenario(invocations=tuple(script_from_dict(item) for item in data))
    if not isinstance(data, Mapping):
        raise ValueError("a scenario is a JSON object or a list of scripts")
    if not any(key in data for key in _SCENARIO_KEYS):
        return Scenario(invocations=(script_from_dict(data),))
    unknown = sorted(set(data) - set(_SCENARIO_KEYS))
    if unknown:
        raise ValueError("scenario: unknown key(s) %s" % ", ".join(unknown))
    return Scenario(
        invocations=tuple(script_from_dict(item) for item in data.get("invocations", [])),
        actions=tuple(_action_from_dict(item, n) for n, item in enumerate(data.get("actions", []))),
        settings=_settings_from_dict(data.get("emulator", {})),
    )


def load_scenario_file(path: str) -> Scenario:
    """Read a JSON scenario file (any of the forms of :func:`scenario_from_json`)."""
    with open(path, encoding="utf-8") as handle:
        return scenario_from_json(json.load(handle))


def load_scenario(path: str) -> List[Script]:
    """Read a JSON scenario file and return only its invocations' scripts."""
    return list(load_scenario_file(path).invocations)


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

    def __init__(
        self,
        script: Script,
        stopping: threading.Event,
        *,
        jitter: float = 0.0,
        jitter_seed: Optional[int] = None,
    ) -> None:
        """Prepare ``script``; call :meth:`_start` to run it.

        ``jitter`` and ``jitter_seed`` apply where the script leaves its own as None.
        """
        self.script = script
        self.id = script.id
        self._stopping = stopping
        self._cond = threading.Condition()
        self._queue: Deque[Step] = deque(script.steps)
        self._busy = False
        self._finished = threading.Event()  # set by finish(): the script produces nothing more
        bound = jitter if script.jitter is None else script.jitter
        self._jitter_ns = int(round(bound * _NS))
        self._random = random.Random(jitter_seed if script.jitter_seed is None else script.jitter_seed)
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
        """Wait until every step so far has run (or :meth:`finish` ended the script);
        False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and not self._finished.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    @property
    def finished(self) -> bool:
        """True once the status is ``succeeded`` or ``failed``."""
        with self._cond:
            return self._state["status"] in _TERMINAL_STATUSES

    def wait_finished(self, timeout: Optional[float] = 5.0) -> bool:
        """Wait until the status is terminal; False if ``timeout`` passed or the emulator stopped first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._state["status"] not in _TERMINAL_STATUSES:
                if self._stopping.is_set():
                    return False
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def finish(self, status: str, output: Optional[str] = None) -> Dict[str, object]:
        """End the invocation as ``PATCH /invocations/{id}`` does; return the invocation object.

        The script stops (remaining steps dropped, pauses and gates cut short) and
        a terminal ``invocation_state`` with ``status`` (``succeeded`` or ``failed``;
        ``failed`` is a cancel) and ``output`` goes to every stream, which then
        ends. An invocation already finished is left as it is.
        """
        if status not in _TERMINAL_STATUSES:
            raise ValueError("status must be succeeded or failed")
        with self._cond:
            if self._state["status"] not in _TERMINAL_STATUSES:
                self._finished.set()
                self._queue.clear()
                reason = "Invocation was cancelled" if status == "failed" else None
                self._history.append(self._emit(State(status, output=output, status_reason=reason)))
                self._cond.notify_all()
            return dict(self._state)

    # ---- for the server

    def _start(self) -> None:
        self._thread.start()

    def _snapshot(self, now_ns: int) -> EmittedEvent:
        """The current state as an ``invocation_state`` event stamped ``now_ns`` (not in the history)."""
        ts = format_timestamp(now_ns)
        with self._cond:
            state = dict(self._state)
        body = {"event": "invocation_state", "timestamp": ts, "invocation": state}
        return EmittedEvent("state", ts, now_ns, _dumps(body), terminal=state["status"] in _TERMINAL_STATUSES)

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True if the emulator stops or :meth:`finish` ends the script first."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not (self._stopping.is_set() or self._finished.is_set()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _wake(self) -> None:
        """Wake the script thread and every waiting stream, so they see a stop."""
        with self._cond:
            self._cond.notify_all()

    def _join(self) -> None:
        if self._thread.ident is not None:  # never started when stop() came first
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
                while not self._queue and not self._stopping.is_set() and not self._finished.is_set():
                    self._cond.wait()
                if self._stopping.is_set() or self._finished.is_set():
                    return
                step = self._queue.popleft()
                self._busy = True
            if isinstance(step, Pause):
                if self._sleep(step.seconds):
                    return
                with self._cond:
                    self._clock += int(round(step.seconds * _NS))
            elif isinstance(step, Gate):
                step.reached.set()
                while not step.opened.wait(_GATE_POLL):
                    if self._stopping.is_set() or self._finished.is_set():
                        return
            else:
                with self._cond:
                    if self._finished.is_set():  # finish() came while this step was on its way
                        return
                    self._history.append(self._emit(step))
                    self._cond.notify_all()

    def _stamp(self, at: Stamp, late_by: float = 0.0, jittered: bool = False) -> Tuple[int, str]:
        """The time of the next event, and the clock moved on one tick past its script time.

        Lateness and jitter change the stamp only: the script clock never goes back.
        """
        if isinstance(at, str):
            ns = parse_timestamp(at)
            self._clock = ns + self._tick_ns
            return ns, at
        ns = self._clock if at is None else self._start_ns + int(round(at * _NS))
        self._clock = ns + self._tick_ns
        ns -= int(round(late_by * _NS))
        if jittered and self._jitter_ns:
            ns += self._random.randint(-self._jitter_ns, self._jitter_ns)
        return ns, format_timestamp(ns)

    def _emit(self, step: Step) -> EmittedEvent:
        """Turn an event step into the event every connection sends (lock held)."""
        if isinstance(step, (Pause, Gate)):  # pragma: no cover - _run handles these
            raise TypeError(step)
        if isinstance(step, (Log, Error)):
            ns, ts = self._stamp(step.at, step.late_by, jittered=True)
        else:
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
    """The invocation in the path; for ``POST /invocations``, the one it created."""
    attempt: Optional[int] = None
    """For ``GET .../events`` of a known invocation: its 0-based attempt number;
    for ``POST /invocations`` and ``GET /invocations``: the 0-based number of the
    request among those to that endpoint (what picks its fault)."""
    status: Optional[int] = None
    """The status answered (None while the request is still being handled)."""
    events_written: int = 0
    """Script events written on this response (heartbeats not counted)."""
    heartbeats_written: int = 0
    body: bytes = b""
    """The request body (``POST`` and ``PATCH``)."""
    state_on_connect: bool = False
    """For ``GET .../events``: the response began with the current-state snapshot."""

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


# ---------------------------------------------------------------- the other endpoints

_Answer = Tuple[int, object, Mapping[str, str]]
"""A JSON answer: status, body, extra headers."""

_DIGITS = re.compile(r"[0-9]+")
_STATUSES = ("queued", "running", "succeeded", "failed")
_FAULT_CODES = {429: "rate_limited", 502: "bad_gateway", 503: "service_unavailable"}
_EQUAL_FILTERS = ("app_name", "action_name", "version", "status")
_SEARCHED = ("id", "app_name", "action_name")  # what the list's "query" looks in
_BAD_SINCE = "Invalid since: use an RFC 3339 timestamp or a duration like 5m."


def _error(status: int, code: str, message: str, headers: Optional[Mapping[str, str]] = None) -> _Answer:
    return status, {"code": code, "message": message}, headers or {}


_UNAUTHORIZED = _error(401, "unauthorized", "Missing or invalid API key.", {"WWW-Authenticate": "Bearer"})


def _fault_answer(status: int, retry_after: Optional[str]) -> _Answer:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    code = _FAULT_CODES.get(status, "internal_error")
    return _error(status, code, "Injected fault: status %d." % status, headers)


def _json_object(body: bytes) -> Union[Dict[str, Any], str]:
    """The body as a JSON object, or the 400 message saying why not."""
    try:
        value = json.loads(body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        return "The body must be a JSON object."
    if not isinstance(value, dict):
        return "The body must be a JSON object."
    return value


@dataclass(frozen=True)
class _CreateRequest:
    app_name: str
    action_name: str
    version: str
    payload: Optional[str]
    run_async: bool
    async_timeout_seconds: Optional[int]


def _parse_create(body: bytes) -> Union[_CreateRequest, str]:
    """A ``POST /invocations`` body, or the 400 message saying what is wrong with it."""
    values = _json_object(body)
    if isinstance(values, str):
        return values
    for name in ("app_name", "action_name", "version"):
        if name not in values:
            return "Missing required field: %s" % name
        if not isinstance(values[name], str) or not values[name]:
            return "%s must be a non-empty string." % name
    payload = values.get("payload")
    if payload is not None and not isinstance(payload, str):
        return "payload must be a string (the JSON document, serialised)."
    run_async = values.get("async", False)
    if not isinstance(run_async, bool):
        return "async must be true or false."
    timeout = values.get("async_timeout_seconds")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 10 <= timeout <= 3600:
            return "async_timeout_seconds must be an integer from 10 to 3600."
        if not run_async:
            return "async_timeout_seconds applies only with async: true."
    return _CreateRequest(
        values["app_name"], values["action_name"], values["version"], payload, run_async, timeout
    )


def _parse_update(body: bytes) -> Union[Tuple[str, Optional[str]], str]:
    """A ``PATCH /invocations/{id}`` body as (status, output), or the 400 message."""
    values = _json_object(body)
    if isinstance(values, str):
        return values
    status = values.get("status")
    if status not in _TERMINAL_STATUSES:
        return "status must be succeeded or failed."
    output = values.get("output")
    if output is not None and not isinstance(output, str):
        return "output must be a string (a JSON document, serialised)."
    return status, output


def _list_invocations(emulator: Emulator, record: RequestRecord) -> _Answer:
    """The answer to ``GET /invocations``: filters, newest first, offset pagination."""
    query = {name: values[0] for name, values in record.query.items()}
    status = query.get("status")
    if status is not None and status not in _STATUSES:
        return _error(400, "bad_request", "status must be one of %s." % ", ".join(_STATUSES))
    since_ns = 0
    if query.get("since"):
        try:
            since_ns = parse_since(query["since"])
        except (ValueError, decimal.InvalidOperation):
            return _error(400, "bad_request", _BAD_SINCE)
    numbers = {"limit": emulator.page_size, "offset": 0}
    for name in numbers:
        if name in query:
            if not _DIGITS.fullmatch(query[name]) or (name == "limit" and int(query[name]) < 1):
                least = " >= 1" if name == "limit" else ""
                return _error(400, "bad_request", "%s must be a whole number%s." % (name, least))
            numbers[name] = int(query[name])
    limit, offset = numbers["limit"], numbers["offset"]
    needle = query.get("query", "").lower()
    with emulator._lock:
        invocations = list(emulator._invocations.values())
        record.attempt = emulator._list_count
        emulator._list_count += 1
    # Newest first: by started_at, then the later added first among equal times.
    ordered = sorted(enumerate(invocations), key=lambda item: (item[1]._start_ns, item[0]), reverse=True)
    matching = []
    for _, invocation in ordered:
        state = invocation.invocation()
        if any(query.get(name, state[name]) != state[name] for name in _EQUAL_FILTERS):
            continue
        if invocation._start_ns < since_ns:
            continue
        if needle and not any(needle in str(state[name]).lower() for name in _SEARCHED):
            continue
        matching.append(state)
    page = matching[offset : offset + limit]
    has_more = offset + limit < len(matching)
    headers = {
        "X-Has-More": "true" if has_more else "false",
        "X-Next-Offset": str(offset + len(page) if has_more else 0),  # 0: the last page
    }
    fault = emulator.list_fault_for(record.attempt)
    if has_more and fault == "has_more_without_offset":
        del headers["X-Next-Offset"]
    elif has_more and fault == "repeat_offset":
        headers["X-Next-Offset"] = str(offset)
    elif has_more and fault == "zero_offset":
        headers["X-Next-Offset"] = "0"
    elif fault == "no_has_more":
        del headers["X-Has-More"]
    return 200, page, headers


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

    def _begin(self) -> Tuple[RequestRecord, str]:
        """Read the request body, record the request; return the record and the path without query."""
        length = self.headers.get("Content-Length", "")
        body = self.rfile.read(int(length)) if _DIGITS.fullmatch(length) else b""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # a chunked body is not read: do not parse it as the next request
        split = urllib.parse.urlsplit(self.path)
        record = RequestRecord(
            method=self.command,
            path=self.path,
            query=urllib.parse.parse_qs(split.query, keep_blank_values=True),
            headers=list(self.headers.items()),
            body=body,
        )
        self.server.emulator._record(record)
        return record, split.path

    def _authorized(self, record: RequestRecord) -> bool:
        """True if the key is good; else answer 401 and return False."""
        if self.server.emulator._authorized(self.headers.get("Authorization")):
            return True
        status, body, headers = _UNAUTHORIZED
        self._send_json(record, status, body, headers)
        return False

    def do_GET(self) -> None:
        """Serve ``/invocations``, ``/invocations/{id}`` and ``/invocations/{id}/events``."""
        emulator = self.server.emulator
        record, path = self._begin()
        if path == "/invocations":
            if self._authorized(record):
                self._send_answer(record, _list_invocations(emulator, record))
            return
        segments = path.split("/")
        if len(segments) not in (3, 4) or segments[:2] != ["", "invocations"] or not segments[2]:
            self._send_error(record, 404, "not_found", "No such route: %s" % path)
            return
        if len(segments) == 4 and segments[3] != "events":
            self._send_error(record, 404, "not_found", "No such route: %s" % path)
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
        if not self._authorized(record):
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

    def do_POST(self) -> None:
        """Serve ``POST /invocations``, with the attempt's :class:`PostFault`."""
        emulator = self.server.emulator
        record, path = self._begin()
        if path != "/invocations":
            self._send_error(record, 404, "not_found", "No such route: %s" % path)
            return
        with emulator._lock:
            record.attempt = emulator._post_count
            emulator._post_count += 1
        fault = emulator.post_fault_for(record.attempt)
        answer = self._invoke(record, fault)
        if fault.delay and emulator._stopping.wait(fault.delay):
            answer = None  # stopping: no answer
        if answer is None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send_answer(record, answer)

    def _invoke(self, record: RequestRecord, fault: PostFault) -> Optional[_Answer]:
        """The answer to a ``POST /invocations`` (None: drop the connection)."""
        emulator = self.server.emulator
        if not fault.create:
            if fault.drop:
                return None
            if fault.status is not None:
                return _fault_answer(fault.status, fault.retry_after)
        if not emulator._authorized(self.headers.get("Authorization")):
            return _UNAUTHORIZED
        request = _parse_create(record.body)
        if isinstance(request, str):
            return _error(400, "bad_request", request)
        action = emulator._action(request.app_name, request.action_name, request.version)
        if action is None:
            return _error(
                404,
                "not_found",
                "No action %s/%s at version %s." % (request.app_name, request.action_name, request.version),
            )
        try:
            invocation, created = emulator._invoke(action, request.payload)
        except Exception as exc:
            if emulator._stopping.is_set():
                return None  # stopping: no answer
            # A faulty script factory: tell the test, do not hang it.
            return _error(500, "internal_error", "The action's script factory failed: %r" % (exc,))
        record.invocation_id = invocation.id
        if fault.drop:
            return None
        if fault.status is not None:
            return _fault_answer(fault.status, fault.retry_after)
        if request.run_async:
            return 202, created, {}
        if not invocation.wait_finished(timeout=None):
            return None
        return 200, invocation.invocation(), {}

    def do_PATCH(self) -> None:
        """Serve ``PATCH /invocations/{id}``: finish or cancel."""
        emulator = self.server.emulator
        record, path = self._begin()
        segments = path.split("/")
        if len(segments) != 3 or segments[:2] != ["", "invocations"] or not segments[2]:
            self._send_error(record, 404, "not_found", "No such route: %s" % path)
            return
        if not self._authorized(record):
            return
        record.invocation_id = urllib.parse.unquote(segments[2])
        with emulator._lock:
            invocation = emulator._invocations.get(record.invocation_id)
        if invocation is None:
            self._send_error(record, 404, "not_found", "Invocation not found.")
            return
        update = _parse_update(record.body)
        if isinstance(update, str):
            self._send_error(record, 400, "bad_request", update)
            return
        self._send_json(record, 200, invocation.finish(*update))

    def _send_answer(self, record: RequestRecord, answer: _Answer) -> None:
        status, body, headers = answer
        self._send_json(record, status, body, headers)

    def _send_fault(self, record: RequestRecord, fault: Fault) -> bool:
        """Answer an injected status or redirect; True if one was sent."""
        if fault.status is not None:
            self._send_answer(record, _fault_answer(fault.status, fault.retry_after))
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
        on_connect = self.invocation.script.state_on_connect
        if self.emulator.state_on_connect if on_connect is None else on_connect:
            # A real server may report the current state first, stamped with the time
            # of the report, not of the change: clients must not resume from it.
            self.out.write(self._encode(self.invocation._snapshot(time.time_ns())))
            self.out.flush()
            self.record.state_on_connect = True
            self.last_write = time.monotonic()
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
                    if event.terminal and not self.fault.keep_open:
                        # The invocation is over: the stream ends even if since filtered the final state out.
                        self._flush()
                        self.out.end()
                        return True
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
    after each script event is on the socket, with ``t`` from ``time.perf_counter()``.
    An emulator is started once and stopped once.

    The other keyword arguments are switches, also plain attributes that may be
    changed at any time (``docs/emulator.md`` describes them):

    - ``page_size``: the ``GET /invocations`` page size when ``limit`` is absent;
    - ``state_on_connect``: start every events response with the invocation's
      current ``invocation_state`` stamped with the time of the connect (a
      script's own ``state_on_connect`` wins);
    - ``jitter`` / ``jitter_seed``: defaults for scripts added later (see :class:`Script`);
    - ``post_fault`` / ``post_attempts``: ``POST /invocations`` attempt ``n``
      (0-based, counted over the emulator) behaves as ``post_attempts[n]`` if
      there is one, else as ``post_fault``;
    - ``list_fault`` / ``list_attempts``: the same for ``GET /invocations`` and
      the names in :data:`LIST_FAULTS` (None: correct headers);
    - ``register_demo``: register the demo action (:data:`DEMO_APP`,
      :data:`DEMO_ACTION`, :data:`DEMO_VERSION`).
    """

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        port: int = 0,
        heartbeat_interval: Optional[float] = DEFAULT_HEARTBEAT_INTERVAL,
        quiet: bool = True,
        on_write: Optional[Callable[[EmittedEvent, float], None]] = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        state_on_connect: bool = False,
        jitter: float = 0.0,
        jitter_seed: Optional[int] = None,
        post_fault: PostFault = PostFault(),
        post_attempts: Sequence[PostFault] = (),
        list_fault: Optional[str] = None,
        list_attempts: Sequence[Optional[str]] = (),
        register_demo: bool = True,
    ) -> None:
        """Configure; nothing listens before :meth:`start`."""
        self.api_key = api_key
        self.heartbeat_interval = heartbeat_interval
        self.quiet = quiet
        self.on_write = on_write
        self.page_size = page_size
        self.state_on_connect = state_on_connect
        self.jitter = jitter
        self.jitter_seed = jitter_seed
        self.post_fault = post_fault
        self.post_attempts: Sequence[PostFault] = post_attempts
        _check_list_fault(list_fault)
        for name in list_attempts:
            _check_list_fault(name)
        self.list_fault = list_fault
        self.list_attempts: Sequence[Optional[str]] = list_attempts
        self._port = port
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._invocations: Dict[str, EmulatedInvocation] = {}
        self._requests: List[RequestRecord] = []
        self._actions: Dict[Tuple[str, str, str], Action] = {}
        self._created: List[str] = []
        self._post_count = 0
        self._list_count = 0
        self._server: Optional[_Server] = None
        self._serve_thread: Optional[threading.Thread] = None
        if register_demo:
            self.register_action(DEMO_APP, DEMO_ACTION, DEMO_VERSION, _demo_factory)

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
        self._wake_all()
        if server is not None:
            with server.lock:
                connections, threads = list(server.connections), list(server.threads)
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            for thread in threads:
                thread.join()
            server.server_close()
        # Again: a POST being handled may have created an invocation since the first wake.
        for invocation in self._wake_all():
            invocation._join()

    def _wake_all(self) -> List[EmulatedInvocation]:
        with self._lock:
            invocations = list(self._invocations.values())
        for invocation in invocations:
            invocation._wake()
        return invocations

    def add(self, script: Script) -> EmulatedInvocation:
        """Add an invocation and start running its script at once."""
        invocation = self._create(script)
        invocation._start()
        return invocation

    def _create(self, script: Script) -> EmulatedInvocation:
        """Add an invocation without starting its script."""
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("the emulator is stopped")
            if script.id in self._invocations:
                raise ValueError("invocation %r already exists" % (script.id,))
            invocation = EmulatedInvocation(
                script, self._stopping, jitter=self.jitter, jitter_seed=self.jitter_seed
            )
            self._invocations[script.id] = invocation
        return invocation

    def register_action(
        self, app_name: str, action_name: str, version: str, script: Union[Script, ScriptFactory]
    ) -> Action:
        """Let ``POST /invocations`` start ``app_name``/``action_name`` at ``version``.

        ``script`` is a template :class:`Script` or a :data:`ScriptFactory` (see
        :class:`Action`). Registering the same triple again replaces it.
        """
        action = Action(app_name, action_name, version, script)
        with self._lock:
            self._actions[(app_name, action_name, version)] = action
        return action

    def unregister_action(self, app_name: str, action_name: str, version: str) -> None:
        """Forget a registered action (KeyError if there is none)."""
        with self._lock:
            del self._actions[(app_name, action_name, version)]

    @property
    def actions(self) -> List[Action]:
        """The registered actions, in the order they were first registered."""
        with self._lock:
            return list(self._actions.values())

    def load(self, scenario: Scenario) -> List[EmulatedInvocation]:
        """Apply a scenario's switches, register its actions, add its invocations (started)."""
        settings = scenario.settings
        for name in (f.name for f in dataclasses.fields(Settings)):
            value = getattr(settings, name)
            if name == "register_demo":
                if value is False:
                    with contextlib.suppress(KeyError):
                        self.unregister_action(DEMO_APP, DEMO_ACTION, DEMO_VERSION)
            elif value is not None:
                setattr(self, name, value)
        for action in scenario.actions:
            self.register_action(action.app_name, action.action_name, action.version, action.script)
        return [self.add(script) for script in scenario.invocations]

    def invocations(self) -> List[EmulatedInvocation]:
        """Every invocation, added or created by ``POST``, oldest first."""
        with self._lock:
            return list(self._invocations.values())

    @property
    def invocations_created(self) -> List[str]:
        """The ids of the invocations that ``POST /invocations`` created, oldest first.

        Faults with ``create`` count (the invocation was started); refused requests do not.
        """
        with self._lock:
            return list(self._created)

    def post_fault_for(self, attempt: int) -> PostFault:
        """The fault options of ``POST /invocations`` attempt ``attempt`` (0-based)."""
        return self.post_attempts[attempt] if attempt < len(self.post_attempts) else self.post_fault

    def list_fault_for(self, attempt: int) -> Optional[str]:
        """The pagination fault of ``GET /invocations`` request ``attempt`` (0-based)."""
        return self.list_attempts[attempt] if attempt < len(self.list_attempts) else self.list_fault

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

    def _action(self, app_name: str, action_name: str, version: str) -> Optional[Action]:
        with self._lock:
            return self._actions.get((app_name, action_name, version))

    def _invoke(self, action: Action, payload: Optional[str]) -> Tuple[EmulatedInvocation, Dict[str, object]]:
        """Create and start an invocation of ``action``; return it and its object as created."""
        # 20 base-36 characters: unguessable-looking, and a clash is beyond any test's reach.
        invocation_id = "inv_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))
        invocation = self._create(action.make_script(invocation_id, payload))
        with self._lock:
            self._created.append(invocation_id)
        created = invocation.invocation()  # before the script runs: status "queued"
        invocation._start()
        return invocation, created

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


def _demo_factory(payload: Optional[str]) -> Script:
    """The demo action's script: :func:`demo_script` at the payload's ``speed`` (default 1)."""
    speed = 1.0
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        # A payload that is not {"speed": positive number} just runs at normal speed.
        value = json.loads(payload or "{}").get("speed", 1.0)
        if not isinstance(value, bool) and float(value) > 0:
            speed = float(value)
    return demo_script(speed)


# ---------------------------------------------------------------- command line


class _Terminated(Exception):
    """SIGTERM arrived."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def _paste_lines(emulator: Emulator, scripts: Sequence[Script], api_key: Optional[str]) -> List[str]:
    """What to paste into another shell to use the emulator: one line per invocation and action."""
    # A key given with --api-key is a secret: it is never printed, the user sets it.
    env = "KERNEL_BASE_URL=%s" % emulator.url
    lines = []
    if api_key is None:
        env += " KERNEL_API_KEY=emulator-key"
    else:
        lines.append("Set KERNEL_API_KEY to the key given with --api-key, then:")
    lines += ["  %s kernel-sse follow %s" % (env, shlex.quote(script.id)) for script in scripts]
    lines += [
        "  %s kernel-sse invoke %s %s --version %s"
        % (env, shlex.quote(a.app_name), shlex.quote(a.action_name), shlex.quote(a.version))
        for a in emulator.actions
    ]
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python kernel_sse_emulator.py``: print the base URL, serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python kernel_sse_emulator.py",
        description="A local emulator of the Kernel invocation API. The scenario format, "
        "the endpoints and every switch are described in docs/emulator.md.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--api-key", help="the only key accepted (default: any non-empty Bearer key)")
    parser.add_argument(
        "--scenario", help="JSON scenario file: invocations, actions, switches (default: the demo invocation)"
    )
    parser.add_argument(
        "--heartbeat", type=float, default=None, help="seconds of idleness before a heartbeat (default: 2)"
    )
    parser.add_argument("--speed", type=float, default=1.0, help="speed factor of the demo scenario")
    parser.add_argument("--page-size", type=int, help="GET /invocations page size without limit (default 20)")
    parser.add_argument(
        "--state-on-connect", action="store_true", help="each event stream starts with the current state, stamped now"
    )
    parser.add_argument("--jitter", type=float, help="bound in seconds of random log/error timestamp jitter")
    parser.add_argument("--jitter-seed", type=int, help="seed of that jitter, for reproducible runs")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not log requests")
    args = parser.parse_args(argv)
    try:
        if args.scenario:
            scenario = load_scenario_file(args.scenario)
        else:
            scenario = Scenario(invocations=(demo_script(args.speed),))
    except (OSError, ValueError, TypeError) as exc:
        parser.error("cannot load scenario: %s" % (exc,))
    emulator = Emulator(api_key=args.api_key, port=args.port, quiet=args.quiet)
    try:
        emulator.start()
    except OSError as exc:
        parser.error("cannot listen on 127.0.0.1:%d: %s" % (args.port, exc.strerror or exc))
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        emulator.load(dataclasses.replace(scenario, invocations=()))
        # Command-line switches win over the scenario's; set before the scripts are added,
        # as an invocation takes its jitter when it is added.
        for name in ("page_size", "jitter", "jitter_seed"):
            if getattr(args, name) is not None:
                setattr(emulator, name, getattr(args, name))
        if args.heartbeat is not None:
            emulator.heartbeat_interval = args.heartbeat
        elif not args.scenario:  # the demo: heartbeats in proportion to its speed
            emulator.heartbeat_interval = DEFAULT_HEARTBEAT_INTERVAL / args.speed
        if args.state_on_connect:
            emulator.state_on_connect = True
        for script in scenario.invocations:
            emulator.add(script)
        print(emulator.url, flush=True)
        print("Kernel API emulator at %s (docs/emulator.md). To try it:" % emulator.url, file=sys.stderr)
        for line in _paste_lines(emulator, scenario.invocations, args.api_key):
            print(line, file=sys.stderr)
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
