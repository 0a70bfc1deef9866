"""Follow a Kernel invocation's live event stream and hand each event to plugins.

kernel-sse is one module with no third-party import at module level. Its layers,
bottom up, each in its own section below:

1. the SSE parser (``SSEParser``): incremental, I/O-free, WHATWG-conformant;
2. the typed Kernel event model (``parse_event`` and the event dataclasses);
3. the follow loop (``follow``): reconnect, resume, heartbeat watchdog, deadline;
4. the pluggy hook layer (``hookimpl`` and the hook specifications);
5. the command line (``main``).
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import (
    Callable,
    ClassVar,
    Dict,
    List,
    NamedTuple,
    Optional,
    Tuple,
    Union,
    cast,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # errors
    "KernelSSEError",
    "SSEProtocolError",
    "EventTooLarge",
    "MalformedEvent",
    # parser
    "SSEParser",
    "ServerSentEvent",
    # event model
    "JSONObject",
    "ApiErrorDetail",
    "ApiError",
    "Invocation",
    "LogEvent",
    "InvocationStateEvent",
    "ErrorEvent",
    "HeartbeatEvent",
    "UnknownEvent",
    "KernelEvent",
    "TERMINAL_STATUSES",
    "parse_event",
    "parse_timestamp",
]


# ======================================================================
# Errors
# ======================================================================


class KernelSSEError(Exception):
    """Root of every error kernel-sse raises on purpose; catch this one."""


class SSEProtocolError(KernelSSEError):
    """The byte stream broke the Server-Sent Events framing rules."""


class EventTooLarge(SSEProtocolError):
    """One event grew past ``max_event_bytes``; it was discarded.

    The parser stays usable: it skips the rest of the oversized event and
    parses the stream on. ``events`` holds every event the same ``feed`` call
    completed (before and after the discarded one), so nothing else is lost.
    """

    def __init__(self, limit: int, events: List[ServerSentEvent]) -> None:
        super().__init__(
            f"an event exceeded the {limit}-byte limit and was skipped; "
            "raise max_event_bytes if such events are expected"
        )
        self.limit = limit
        self.events = events


class MalformedEvent(KernelSSEError):
    """An event's data is not the JSON the Kernel API specifies.

    ``data`` carries the raw data text, so nothing is lost.
    """

    def __init__(self, reason: str, data: str) -> None:
        super().__init__(
            f"malformed event ({reason}); the raw data is kept on the "
            "exception's .data; report it if the server sent it"
        )
        self.reason = reason
        self.data = data


# ======================================================================
# SSE parser (sans-I/O)
# ======================================================================

_BOM = codecs.BOM_UTF8
# Byte values, not one-byte strings: ``10 in data`` is a plain memchr, while
# ``b"\n" in data`` first fails (expensively) to read its operand as an int.
_LF, _CR, _NUL = 10, 13, 0


class ServerSentEvent(NamedTuple):
    """One dispatched Server-Sent Event.

    ``event`` is the event type (``"message"`` unless the block set one),
    ``data`` the data lines joined with LF, ``id`` the last event ID in force
    when it was dispatched, and ``retry`` the reconnection time (ms) a
    ``retry`` field in this same block set, or ``None``.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: Optional[int] = None


class SSEParser:
    """Incremental parser for a ``text/event-stream`` body.

    Feed it bytes as they arrive; it returns the events they complete.  It
    implements the WHATWG HTML "interpreting an event stream" algorithm:
    one leading BOM is dropped, CR, LF and CRLF end lines (also split across
    chunks), invalid UTF-8 becomes U+FFFD, and an unfinished event is never
    dispatched.  ``last_event_id`` is the stream's last event ID string
    (updated at each dispatch point, i.e. each blank line); ``retry`` is the
    latest valid reconnection time in milliseconds, or ``None``.

    Memory for one event is bounded by ``max_event_bytes``: past it,
    ``feed`` raises :class:`EventTooLarge`, skips that event and goes on.
    """

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_event_bytes = max_event_bytes
        self.last_event_id = ""
        self.retry: Optional[int] = None
        # The stream is handled as bytes: every framing character is ASCII,
        # so splitting before decoding is exact (a line end also ends any
        # broken UTF-8 sequence), and decoding each event's data once is far
        # cheaper than decoding every line.
        self._bom_pending = b""  # first bytes, until we know if they are a BOM
        self._at_start = True
        self._last_was_cr = False
        self._tail: List[bytes] = []  # pieces of the unfinished line
        self._tail_size = 0
        self._data: List[bytes] = []  # data lines of the event being built
        self._data_size = 0
        self._type = b""
        self._id_buffer = ""
        self._block_retry: Optional[int] = None
        self._discarding = False  # skipping an oversized event to its blank line
        self._skipping_line = False  # ... and the current line is part of it
        self._overflowed = False

    def feed(self, data: bytes) -> List[ServerSentEvent]:
        """Parse ``data`` and return the events it completes, in order.

        Raises :class:`EventTooLarge` (with the completed events on it) when
        an event outgrows ``max_event_bytes``.
        """
        if self._at_start:
            data = self._strip_bom(data)
        if self._last_was_cr and data[:1] == b"\n":
            data = data[1:]  # the LF of a CRLF split across chunks
            self._last_was_cr = False
        if not data:
            return []
        if _CR in data:
            self._last_was_cr = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            self._last_was_cr = False
        if _LF not in data:
            self._extend_tail(data)
            return self._result([])
        if self._tail:
            self._tail.append(data)
            data = b"".join(self._tail)
            self._tail = []
            self._tail_size = 0
        events: List[ServerSentEvent] = []
        if len(data) >= self.max_event_bytes:
            self._parse_text(data, events)  # the careful path, counting sizes
            return self._result(events)
        if self._data_size or self._discarding or data[:6] != b"data: ":
            # An event begun in an earlier chunk, or a block of another shape:
            # line by line up to the next block that starts with a data line.
            cut = data.find(b"\n\ndata: ") + 2
            if cut == 1:
                self._parse_text(data, events)
                return self._result(events)
            self._parse_text(data[:cut], events)
            data = data[cut:]
        # The hot path of the module: a block that is one ``data:`` line (all
        # the Kernel API sends) becomes an event without a line-by-line pass.
        pieces = data.split(b"\n\ndata: ")
        pieces[0] = pieces[0][6:]
        unfinished = pieces.pop()
        if pieces:
            append = events.append
            id_buffer = self._id_buffer
            for piece in pieces:
                if _LF in piece:  # more lines than one data line
                    self._parse_text(b"data: " + piece + b"\n\n", events)
                    id_buffer = self._id_buffer
                else:
                    append(
                        _new_event(
                            ServerSentEvent,
                            ("message", piece.decode("utf-8", "replace"), id_buffer, None),
                        )
                    )
            self.last_event_id = id_buffer
        if _LF in unfinished:
            self._parse_text(b"data: " + unfinished, events)
        elif len(unfinished) + 6 <= self.max_event_bytes:
            # Kept in pieces: joined once, when the line ends.
            self._tail = [b"data: ", unfinished]
            self._tail_size = len(unfinished) + 6
        else:
            self._extend_tail(b"data: " + unfinished)
        return self._result(events) if self._overflowed else events

    def _parse_text(self, text: bytes, events: List[ServerSentEvent]) -> None:
        """Apply ``text`` line by line; keep its unfinished last line.

        Dispatched events are appended to ``events``.  Every line counts
        toward the event's size, so the limit holds whatever the chunking.
        """
        lines = text.split(b"\n")
        unfinished = lines.pop()
        limit = self.max_event_bytes
        data_lines = self._data
        size = self._data_size
        event_type = self._type
        id_buffer = self._id_buffer
        block_retry = self._block_retry
        discarding = self._discarding
        skipping_line = self._skipping_line
        for line in lines:
            if discarding:
                if skipping_line:
                    skipping_line = False  # the end of the line that overflowed
                elif not line:
                    discarding = False  # the blank line ending the skipped event
                    self.last_event_id = id_buffer
                continue
            if not line:
                self.last_event_id = id_buffer
                if data_lines:
                    events.append(
                        _new_event(
                            ServerSentEvent,
                            (
                                event_type.decode("utf-8", "replace") if event_type else "message",
                                b"\n".join(data_lines).decode("utf-8", "replace"),
                                id_buffer,
                                block_retry,
                            ),
                        )
                    )
                    data_lines = []
                size = 0
                event_type = b""
                block_retry = None
                continue
            size += len(line) + 1
            if size > limit:
                self._overflowed = discarding = True
                data_lines = []
                size = 0
                event_type = b""
                block_retry = None
                continue
            colon = line.find(b":")
            if colon == 0:
                continue  # a comment
            if colon < 0:
                name = line
                value = b""
            else:
                name = line[:colon]
                value = line[colon + 1:]
                if value[:1] == b" ":
                    value = value[1:]
            if name == b"data":
                data_lines.append(value)
            elif name == b"event":
                event_type = value
            elif name == b"id":
                if _NUL not in value:
                    id_buffer = value.decode("utf-8", "replace")
            elif name == b"retry" and value.isdigit():  # ASCII digits only
                try:
                    block_retry = self.retry = int(value)
                except ValueError:
                    pass  # more digits than Python converts (4300): ignored
        self._data = data_lines
        self._data_size = size
        self._type = event_type
        self._id_buffer = id_buffer
        self._block_retry = block_retry
        self._discarding = discarding
        self._skipping_line = skipping_line
        self._extend_tail(unfinished)

    def _strip_bom(self, data: bytes) -> bytes:
        """Drop one UTF-8 BOM at stream start, even split across chunks."""
        head = self._bom_pending + data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._bom_pending = head
            return b""
        self._at_start = False
        self._bom_pending = b""
        return head[len(_BOM):] if head.startswith(_BOM) else head

    def _extend_tail(self, piece: bytes) -> None:
        """Keep the unfinished line, within the event size limit."""
        if not piece:
            return
        if self._discarding:
            self._skipping_line = True  # its bytes are dropped, not kept
            return
        self._tail.append(piece)
        self._tail_size += len(piece)
        if self._tail_size + self._data_size > self.max_event_bytes:
            self._overflowed = self._discarding = self._skipping_line = True
            self._tail = []
            self._tail_size = 0
            self._data = []
            self._data_size = 0
            self._type = b""
            self._block_retry = None

    def _result(self, events: List[ServerSentEvent]) -> List[ServerSentEvent]:
        """Return ``events``, or raise EventTooLarge carrying them."""
        if self._overflowed:
            self._overflowed = False
            raise EventTooLarge(self.max_event_bytes, events)
        return events


# Building the tuple directly skips NamedTuple's Python-level __new__: the
# parser builds hundreds of thousands of events a second.
_new_event = cast(
    Callable[[type, Tuple[str, str, str, Optional[int]]], ServerSentEvent], tuple.__new__
)


# ======================================================================
# Event model
# ======================================================================

JSONObject = Dict[str, object]
"""A decoded JSON object, as the API sent it."""

TERMINAL_STATUSES = frozenset({"succeeded", "failed"})
"""Invocation statuses after which nothing more happens."""

_RFC3339 = re.compile(
    r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:(\d\d)(?:\.(\d{1,9}))?"
    r"(?:[Zz]|([+-](?:[01]\d|2[0-3]):[0-5]\d))\Z"
)


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware ``datetime``.

    Up to nine fractional digits are accepted (digits past microseconds are
    truncated), with ``Z`` or a ``+HH:MM``/``-HH:MM`` offset.  Works on every
    supported Python, where ``datetime.fromisoformat`` alone differs by
    version.  A leap second (``:60``) is kept as ``:59``.  Raises
    ``ValueError`` for anything else.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    second, fraction, offset = match.groups()
    # Rewritten into the one form fromisoformat reads on every version.
    return datetime.fromisoformat(
        f"{text[:10]}T{text[11:17]}{'59' if second == '60' else second}"
        f".{(fraction or '')[:6]:0<6}{offset or '+00:00'}"
    )


@dataclass(frozen=True)
class ApiErrorDetail:
    """A lower-level detail of an API error (the spec's ``ErrorDetail``)."""

    code: Optional[str] = None
    message: Optional[str] = None


@dataclass(frozen=True)
class ApiError:
    """An application error as the API reports it (the spec's ``Error``)."""

    code: str
    message: str
    details: Tuple[ApiErrorDetail, ...] = ()
    inner_error: Optional[ApiErrorDetail] = None


@dataclass(frozen=True)
class Invocation:
    """One run of a deployed action (the spec's ``Invocation``).

    ``started_at``/``finished_at`` are aware datetimes; the strings the API
    sent are kept in ``started_at_raw``/``finished_at_raw``.
    """

    id: str
    app_name: str
    version: str
    action_name: str
    started_at: datetime
    status: str
    payload: Optional[str] = None
    output: Optional[str] = None
    finished_at: Optional[datetime] = None
    status_reason: Optional[str] = None
    started_at_raw: str = field(default="", repr=False)
    finished_at_raw: Optional[str] = field(default=None, repr=False)

    @property
    def is_terminal(self) -> bool:
        """True once the invocation has succeeded or failed."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class LogEvent:
    """A log line the application wrote (the spec's ``LogEvent``)."""

    event: ClassVar[str] = "log"
    timestamp: datetime
    message: str
    timestamp_raw: str = field(default="", repr=False)
    raw: JSONObject = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class InvocationStateEvent:
    """The invocation's current state (the spec's ``InvocationStateEvent``)."""

    event: ClassVar[str] = "invocation_state"
    timestamp: datetime
    invocation: Invocation
    timestamp_raw: str = field(default="", repr=False)
    raw: JSONObject = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class ErrorEvent:
    """An error the application reported (the spec's ``ErrorEvent``).

    Not terminal: only a final ``invocation_state`` ends a follow.
    """

    event: ClassVar[str] = "error"
    timestamp: datetime
    error: ApiError
    timestamp_raw: str = field(default="", repr=False)
    raw: JSONObject = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class HeartbeatEvent:
    """The server's keep-alive (the spec's ``SSEHeartbeatEvent``)."""

    event: ClassVar[str] = "sse_heartbeat"
    timestamp: datetime
    timestamp_raw: str = field(default="", repr=False)
    raw: JSONObject = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class UnknownEvent:
    """An event kind this version does not know, kept whole."""

    event: str
    raw: JSONObject = field(default_factory=dict, compare=False)


KernelEvent = Union[LogEvent, InvocationStateEvent, ErrorEvent, HeartbeatEvent, UnknownEvent]
"""Any event ``parse_event`` returns."""


class _Fields:
    """Typed, checked access to one event's JSON object."""

    def __init__(self, obj: JSONObject, where: str) -> None:
        self.obj = obj
        self.where = where

    def text(self, name: str) -> str:
        """A required string field."""
        value = self.obj.get(name)
        if not isinstance(value, str):
            raise _Invalid(self._wrong(name, "a string"))
        return value

    def optional_text(self, name: str) -> Optional[str]:
        """An optional (or null) string field."""
        value = self.obj.get(name)
        if value is None or isinstance(value, str):
            return value
        raise _Invalid(self._wrong(name, "a string"))

    def time(self, name: str) -> Tuple[datetime, str]:
        """A required RFC 3339 timestamp: (datetime, original text)."""
        raw = self.text(name)
        try:
            return parse_timestamp(raw), raw
        except ValueError:
            raise _Invalid(f"{self.where}.{name} is not an RFC 3339 timestamp: {raw!r}") from None

    def obj_field(self, name: str, required: bool = True) -> Optional[_Fields]:
        """A nested object field."""
        value = self.obj.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            raise _Invalid(self._wrong(name, "an object"))
        return _Fields(value, f"{self.where}.{name}")

    def _wrong(self, name: str, expected: str) -> str:
        """Say what is wrong with field ``name``."""
        if name not in self.obj:
            return f"{self.where}.{name} is missing"
        return f"{self.where}.{name} must be {expected}, got {_kind(self.obj[name])}"


class _Invalid(Exception):
    """Internal: a schema violation, turned into MalformedEvent."""


def _kind(value: object) -> str:
    """Name a JSON value's type for an error message."""
    return "null" if value is None else type(value).__name__


def _detail(fields: Optional[_Fields]) -> Optional[ApiErrorDetail]:
    if fields is None:
        return None
    return ApiErrorDetail(fields.optional_text("code"), fields.optional_text("message"))


def _api_error(fields: _Fields) -> ApiError:
    """Build an ApiError from the spec's ``Error`` object."""
    details_value = fields.obj.get("details")
    details: List[ApiErrorDetail] = []
    if details_value is not None:
        if not isinstance(details_value, list):
            raise _Invalid(f"{fields.where}.details must be a list")
        for index, item in enumerate(details_value):
            if not isinstance(item, dict):
                raise _Invalid(f"{fields.where}.details[{index}] must be an object")
            detail = _detail(_Fields(item, f"{fields.where}.details[{index}]"))
            assert detail is not None
            details.append(detail)
    return ApiError(
        fields.text("code"),
        fields.text("message"),
        tuple(details),
        _detail(fields.obj_field("inner_error", required=False)),
    )


def _invocation(fields: _Fields) -> Invocation:
    """Build an Invocation from the spec's ``Invocation`` object."""
    started_at, started_raw = fields.time("started_at")
    finished_raw = fields.optional_text("finished_at")
    finished_at = None
    if finished_raw is not None:
        finished_at, finished_raw = fields.time("finished_at")
    return Invocation(
        id=fields.text("id"),
        app_name=fields.text("app_name"),
        version=fields.text("version"),
        action_name=fields.text("action_name"),
        started_at=started_at,
        status=fields.text("status"),
        payload=fields.optional_text("payload"),
        output=fields.optional_text("output"),
        finished_at=finished_at,
        status_reason=fields.optional_text("status_reason"),
        started_at_raw=started_raw,
        finished_at_raw=finished_raw,
    )


def parse_event(sse: ServerSentEvent) -> KernelEvent:
    """Decode one Server-Sent Event's JSON data into a typed Kernel event.

    The kind comes from the JSON ``event`` property (the SSE event type when
    the property is absent).  An unknown kind becomes :class:`UnknownEvent`;
    data that is not the JSON the spec describes raises
    :class:`MalformedEvent` carrying the raw data.
    """
    try:
        obj = json.loads(sse.data)
    except ValueError as exc:
        raise MalformedEvent(f"invalid JSON: {exc}", sse.data) from None
    except RecursionError:
        raise MalformedEvent("JSON nested too deeply", sse.data) from None
    if not isinstance(obj, dict):
        raise MalformedEvent(f"expected a JSON object, got {_kind(obj)}", sse.data)
    kind = obj.get("event", sse.event)
    if not isinstance(kind, str):
        raise MalformedEvent(f"event must be a string, got {_kind(kind)}", sse.data)
    builder = _BUILDERS.get(kind)
    if builder is None:
        return UnknownEvent(kind, obj)
    try:
        return builder(_Fields(obj, kind))
    except _Invalid as exc:
        raise MalformedEvent(str(exc), sse.data) from None


def _log(fields: _Fields) -> LogEvent:
    timestamp, raw = fields.time("timestamp")
    return LogEvent(timestamp, fields.text("message"), raw, fields.obj)


def _state(fields: _Fields) -> InvocationStateEvent:
    timestamp, raw = fields.time("timestamp")
    invocation = fields.obj_field("invocation")
    assert invocation is not None
    return InvocationStateEvent(timestamp, _invocation(invocation), raw, fields.obj)


def _error(fields: _Fields) -> ErrorEvent:
    timestamp, raw = fields.time("timestamp")
    error = fields.obj_field("error")
    assert error is not None
    return ErrorEvent(timestamp, _api_error(error), raw, fields.obj)


def _heartbeat(fields: _Fields) -> HeartbeatEvent:
    timestamp, raw = fields.time("timestamp")
    return HeartbeatEvent(timestamp, raw, fields.obj)


_BUILDERS: Dict[str, Callable[[_Fields], KernelEvent]] = {
    "log": _log,
    "invocation_state": _state,
    "error": _error,
    "sse_heartbeat": _heartbeat,
}


# ======================================================================
# Command line
# ======================================================================


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``kernel-sse`` command line; return its exit status."""
    raise SystemExit("kernel-sse: the command line is not built yet")


if __name__ == "__main__":
    sys.exit(main())
