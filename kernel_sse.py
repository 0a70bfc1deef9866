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

# Only what every use needs is imported here: the network, TLS, argparse and
# the like are imported where they are used, so ``import kernel_sse`` stays
# fast on a slow disk.
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ClassVar,
    Iterator,
    NoReturn,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
)

if TYPE_CHECKING:  # pragma: no cover - names for annotations only
    import argparse
    import http.client
    import socket
    import ssl

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # errors
    "KernelSSEError",
    "SSEProtocolError",
    "EventTooLarge",
    "MalformedEvent",
    "ConfigurationError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "StreamTimeout",
    "DeadlineExceeded",
    "ConnectionFailed",
    "PluginError",
    "PluginFailed",
    "UsageError",
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
    # follow loop
    "DEFAULT_BASE_URL",
    "Checkpoint",
    "Follower",
    "follow",
    # output
    "format_time",
    "format_text",
    "format_json",
    "format_result",
    "print_line",
    # hooks
    "HOOK_NAMES",
    "BUNDLED_PLUGINS",
    "HookSpecs",
    "FollowContext",
    "Outcome",
    "Hooks",
    "PluginSet",
    "PluginInfo",
    # hookimpl and hookspec are public too, but left out of __all__ so that
    # ``from kernel_sse import *`` never needs pluggy.
    # command line
    "main",
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
    completed (before and after the discarded one), so nothing else is lost;
    ``positions`` says where in ``events`` each skipped event stood.
    """

    def __init__(
        self, limit: int, events: List[ServerSentEvent], positions: Optional[List[int]] = None
    ) -> None:
        super().__init__(
            f"an event exceeded the {limit}-byte limit and was skipped; "
            "raise max_event_bytes if such events are expected"
        )
        self.limit = limit
        self.events = events
        self.positions = positions if positions is not None else [len(events)]


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


class ConfigurationError(KernelSSEError):
    """The call cannot be made as asked: no key, a bad URL or a bad id."""


class APIStatusError(KernelSSEError):
    """The API answered with an error status that retrying cannot fix.

    ``status`` is the HTTP status, ``code`` and ``message`` come from the
    spec's ``Error`` body (or describe the status when the body has none).
    """

    hint = "check the request"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"the API answered {status} ({code}: {message}); {self.hint}")
        self.status = status
        self.code = code
        self.message = message


class BadRequestError(APIStatusError):
    """400: the API rejected the request, e.g. an unparsable ``since``."""

    hint = "check the --since value and the invocation id"


class AuthenticationError(APIStatusError):
    """401: the API key was missing or refused."""

    hint = "the API key was refused: check KERNEL_API_KEY (or --api-key-file)"


class PermissionDeniedError(APIStatusError):
    """403: the key may not read this invocation."""

    hint = "the key may not read this invocation: check its project and scope"


class NotFoundError(APIStatusError):
    """404: there is no such invocation (for this key and project)."""

    hint = "no such invocation: check the id, the project and KERNEL_BASE_URL"


class StreamTimeout(KernelSSEError):
    """The stream stayed silent (no event) past the idle limit too often."""


class DeadlineExceeded(KernelSSEError):
    """The follow's total deadline passed before the invocation finished."""


class ConnectionFailed(KernelSSEError):
    """Every attempt in a row failed; the retries are exhausted."""


class PluginError(KernelSSEError):
    """A plugin could not be loaded or used as asked."""


class PluginFailed(KernelSSEError):
    """A plugin raised and ``--strict-plugins`` made that fatal."""

    def __init__(self, plugin: str, hook: str, error: BaseException) -> None:
        super().__init__(
            f"plugin {plugin!r} failed in {hook}: {_describe(error)}; fix or block it (-p no:{plugin})"
        )
        self.plugin = plugin
        self.hook = hook
        self.error = error


class UsageError(KernelSSEError):
    """The command line cannot run as given (exit 2)."""


# ======================================================================
# SSE parser (sans-I/O)
# ======================================================================

_BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark
# Byte values, not one-byte strings: ``10 in data`` is a plain memchr, while
# ``b"\n" in data`` first fails (expensively) to read its operand as an int.
_LF, _CR, _NUL, _COLON = 10, 13, 0, 58


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
        # cheaper than decoding every line.  A block (the lines up to a blank
        # line) is parsed once, when its blank line arrives; until then its
        # bytes are held as they came.
        self._bom_pending = b""  # first bytes, until we know if they are a BOM
        self._at_start = True
        self._last_was_cr = False
        self._lines: List[bytes] = []  # complete lines of the unfinished block
        self._tail: List[bytes] = []  # pieces of its unfinished line
        self._room = max_event_bytes  # how much more the unfinished block may hold
        self._discarding = False  # skipping an oversized event to its blank line
        self._skipped_lf = False  # ... and the last byte skipped was a line end
        self._overflows: List[int] = []  # where skipped events stood, this feed

    def feed(self, data: bytes) -> List[ServerSentEvent]:
        """Parse ``data`` and return the events it completes, in order.

        Raises :class:`EventTooLarge` (with the completed events on it) when
        an event outgrows ``max_event_bytes``.
        """
        if self._at_start or self._last_was_cr:
            data = self._chunk_start(data)
        if _CR in data:
            # A CR ending this chunk pairs with an LF starting the next one.
            self._last_was_cr = data[-1] == _CR
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._discarding and data:
            data = self._skip(data)
        if _LF not in data:
            if data:  # more of the unfinished line
                self._tail.append(data)
                self._room -= len(data)
                if self._room < 0:
                    self._overflow(0)
            return self._result([]) if self._overflows else []
        events: List[ServerSentEvent] = []
        tail = self._tail
        end = data.rfind(b"\n\n")
        if end < 0 and (tail or data[0] != _LF):
            # No blank line: the held block goes on.
            self._room -= len(data)
            if tail:  # its unfinished line ends here: hold it whole
                tail.append(data)
                data = b"".join(tail)
                self._tail = []
        else:
            # One or more blocks end here.  With a blank line put in front,
            # every block that starts with a data line follows "\n\ndata: ".
            text = b"".join([b"\n\n", *self._lines, *tail, data])
            self._lines = []
            self._tail = []
            # Where the last blank line's "\n\n" starts in ``text``; end == -1
            # (a blank line at data[0]) counts the LF held before it.
            end += len(text) - len(data)
            data = text[end + 2:]  # the new unfinished block
            self._room = self.max_event_bytes - len(data)
            if len(text) >= self.max_event_bytes:
                self._parse_checked(text[:end].split(b"\n\n"), events)
            else:  # no block in ``text`` can be over the limit: no checks
                # Every piece after the first is a block whose leading
                # "data: " the split cut off, maybe followed by more blocks.
                pieces = text[:end].split(b"\n\ndata: ")
                if pieces[0]:  # blocks before the first that starts with "data: "
                    blocks = pieces[0].split(b"\n\n")
                    del blocks[0]  # the empty one before the blank line put in front
                    self._parse_blocks(blocks, events)
                del pieces[0]
                append = events.append
                id_buffer = self.last_event_id  # only _parse_blocks changes it
                for piece in pieces:
                    if _LF in piece:  # more lines than the data line
                        self._parse_blocks((b"data: " + piece).split(b"\n\n"), events)
                        id_buffer = self.last_event_id
                    else:
                        # The hot path of the module (all the Kernel API
                        # sends).  A piece without LF is a whole block: a
                        # blank line and "data: " before it, a blank line
                        # after it (the next "\n\ndata: " or the end of
                        # ``text``).  So it is one data line's value, and its
                        # event has the default type and no retry.
                        append(
                            _new_event(
                                ServerSentEvent,
                                ("message", piece.decode("utf-8", "replace"), id_buffer, None),
                            )
                        )
        # ``data`` starts at a line start of the unfinished block.
        end = data.rfind(b"\n") + 1
        if end:
            lines = data[:end]
            self._lines.append(lines)
            if lines[:5] == b"retry" or lines.find(b"\nretry") >= 0:
                self._apply_retry(lines)
            data = data[end:]
        if data:
            self._tail.append(data)
        if self._room < 0:
            self._overflow(len(events))
        return self._result(events) if self._overflows else events

    def _parse_blocks(self, blocks: List[bytes], events: List[ServerSentEvent]) -> None:
        """Dispatch each of ``blocks``, complete blocks in stream order."""
        append = events.append
        id_buffer = self.last_event_id
        for block in blocks:
            data_lines: List[bytes] = []
            event_type = "message"
            block_retry: Optional[int] = None
            for line in block.split(b"\n"):
                name, space, value = line.partition(b": ")
                if not space or _COLON in name:
                    # No space after the first colon (or no colon): the
                    # value starts right after the first colon.
                    name, _, value = line.partition(b":")
                if name == b"data":
                    data_lines.append(value)
                elif name == b"id":
                    if _NUL not in value:
                        id_buffer = value.decode("utf-8", "replace")
                elif name == b"event":
                    event_type = value.decode("utf-8", "replace") or "message"
                elif name == b"retry" and value.isdigit():  # ASCII digits only
                    try:
                        block_retry = self.retry = int(value)
                    except ValueError:
                        pass  # more digits than Python converts (4300): ignored
                # Anything else (a comment, an unknown field, the empty line
                # a third LF in a row leaves) is ignored.
            if data_lines:  # no data, no event
                append(
                    _new_event(
                        ServerSentEvent,
                        (
                            event_type,
                            b"\n".join(data_lines).decode("utf-8", "replace"),
                            id_buffer,
                            block_retry,
                        ),
                    )
                )
        self.last_event_id = id_buffer

    def _parse_checked(self, blocks: List[bytes], events: List[ServerSentEvent]) -> None:
        """Dispatch ``blocks`` like ``_parse_blocks``, skipping any over the limit."""
        start = 0
        for index, block in enumerate(blocks):
            if len(block) >= self.max_event_bytes:  # with its last line end, over
                self._parse_blocks(blocks[start:index], events)
                self._overflows.append(len(events))
                start = index + 1
        self._parse_blocks(blocks[start:], events)

    def _apply_retry(self, lines: bytes) -> None:
        """Put the ``retry`` fields of an unfinished block's ``lines`` in force.

        The standard applies a field when its line ends, but only ``retry``
        is visible before the block's blank line.  Parsing the lines as a
        block of their own does it; what else that parse produces (an event,
        the last event ID) is dropped.  The block's own parse, later, sets
        the same ``retry`` again: setting it twice changes nothing.
        """
        last_event_id = self.last_event_id
        self._parse_blocks([lines], [])
        self.last_event_id = last_event_id

    def _chunk_start(self, data: bytes) -> bytes:
        """Drop one UTF-8 BOM at stream start (even split across chunks) and
        the LF of a CRLF whose CR ended the previous chunk."""
        if self._at_start:
            head = self._bom_pending + data
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._bom_pending = head
                return b""
            self._at_start = False
            self._bom_pending = b""
            return head[len(_BOM):] if head.startswith(_BOM) else head
        if data:
            self._last_was_cr = False
            if data[0] == _LF:
                return data[1:]
        return data

    def _skip(self, data: bytes) -> bytes:
        """Drop ``data`` up to the blank line ending the oversized event; return the rest."""
        if self._skipped_lf and data[0] == _LF:
            end = 1
        else:
            end = data.find(b"\n\n") + 2
            if end == 1:
                self._skipped_lf = data[-1] == _LF
                return b""
        self._discarding = False
        return data[end:]

    def _overflow(self, position: int) -> None:
        """Drop the unfinished block: it outgrew the limit."""
        self._overflows.append(position)
        self._discarding = True
        self._skipped_lf = not self._tail
        self._lines = []
        self._tail = []
        self._room = self.max_event_bytes

    def _result(self, events: List[ServerSentEvent]) -> List[ServerSentEvent]:
        """Raise EventTooLarge carrying ``events``."""
        positions = self._overflows
        self._overflows = []
        raise EventTooLarge(self.max_event_bytes, events, positions)


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


# Python 3.11+ reads "2025-06-20T12:00:00.123456789Z" as it is, far faster
# than the general path below.
_FROMISOFORMAT_READS_Z = sys.version_info >= (3, 11)


def _plain_utc_time(text: str) -> Optional[datetime]:
    """Parse the usual shape, YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z,
    quickly; None for any other text (the general path then decides).

    Checking the separators pins the shape, so fromisoformat (which reads
    more than RFC 3339, e.g. week dates) only has digits left to judge.
    """
    if (
        _FROMISOFORMAT_READS_Z
        and text[4:17:3] == "--T::"
        and text[-1:] == "Z"
        and len(text) in _PLAIN_UTC_LENGTHS
        and text[19] in ".Z"
    ):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return None  # e.g. a leap second, or February 30th
    return None


_PLAIN_UTC_LENGTHS = frozenset({20, 24, 27, 30})


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware ``datetime``.

    Up to nine fractional digits are accepted (digits past microseconds are
    truncated), with ``Z`` or a ``+HH:MM``/``-HH:MM`` offset.  Works on every
    supported Python, where ``datetime.fromisoformat`` alone differs by
    version.  A leap second (``:60``) is kept as ``:59``.  Raises
    ``ValueError`` for anything else.
    """
    plain = _plain_utc_time(text)
    if plain is not None:
        return plain
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
    data = sse.data
    try:
        # json.loads is this plus Python-level checks that double its cost.
        obj, end = _scan_json(data, 0)
        if end != len(data):
            obj = _load_json(data)  # whitespace around it, or not JSON
    except (StopIteration, ValueError, RecursionError):
        obj = _load_json(data)
    if type(obj) is not dict:
        raise MalformedEvent(f"expected a JSON object, got {_kind(obj)}", data)
    kind = obj.get("event", sse.event)
    # Logs and heartbeats are nearly every event: built without the general
    # path (which would parse the timestamp again, so only for these kinds).
    if kind == "log" or kind == "sse_heartbeat":
        stamp = obj.get("timestamp")
        when = _plain_utc_time(stamp) if type(stamp) is str else None
        if when is not None:
            if kind == "sse_heartbeat":
                return _fast_build(HeartbeatEvent, {"timestamp": when, "timestamp_raw": stamp, "raw": obj})
            message = obj.get("message")
            if type(message) is str:
                return _fast_build(LogEvent, {"timestamp": when, "message": message, "timestamp_raw": stamp, "raw": obj})
    if not isinstance(kind, str):
        raise MalformedEvent(f"event must be a string, got {_kind(kind)}", sse.data)
    builder = _BUILDERS.get(kind)
    if builder is None:
        return UnknownEvent(kind, obj)
    try:
        return builder(_Fields(obj, kind))
    except _Invalid as exc:
        raise MalformedEvent(str(exc), data) from None


# The C scanner json.loads uses underneath (not in typeshed's stubs).
_scan_json = cast(Callable[[str, int], Tuple[object, int]], getattr(json.JSONDecoder(), "scan_once"))
_FastEvent = TypeVar("_FastEvent", LogEvent, HeartbeatEvent)


def _fast_build(cls: Type[_FastEvent], fields: Dict[str, object]) -> _FastEvent:
    """Make a frozen dataclass instance from its complete, checked fields.

    Its __init__ sets each field through object.__setattr__; setting the
    instance dict at once is what makes the fast path fast.
    """
    event = object.__new__(cls)
    object.__setattr__(event, "__dict__", fields)
    return event


def _load_json(data: str) -> object:
    """json.loads, with its errors turned into MalformedEvent."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise MalformedEvent(f"invalid JSON: {exc}", data) from None
    except RecursionError:
        raise MalformedEvent("JSON nested too deeply", data) from None


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
# Follow loop
# ======================================================================

DEFAULT_BASE_URL = "https://api.onkernel.com"
"""Where the Kernel API lives unless ``KERNEL_BASE_URL`` or ``base_url`` says otherwise."""

_PYTHON_VERSION = "%d.%d.%d" % sys.version_info[:3]
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_READ_SIZE = 65536
_CONNECT_TIMEOUT = 30.0


_STATUS_ERRORS: Dict[int, Callable[[int, str, str], APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
}


@dataclass(frozen=True)
class Checkpoint:
    """Where a follow stands, so another one can resume without repeats.

    ``since`` is the timestamp string of the last log, state or error event
    delivered; ``seen`` holds the data of every event delivered at exactly
    that timestamp (repeats included), since the server sends those again.
    """

    since: Optional[str] = None
    seen: Tuple[str, ...] = ()

    def to_json(self) -> JSONObject:
        """A JSON-ready form, for a state file."""
        return {"since": self.since, "seen": list(self.seen)}

    @classmethod
    def from_json(cls, obj: object) -> Checkpoint:
        """Rebuild a checkpoint from :meth:`to_json`; ValueError if it is not one."""
        if not isinstance(obj, dict):
            raise ValueError("a checkpoint must be a JSON object")
        since = obj.get("since")
        seen = obj.get("seen", [])
        if since is not None and not isinstance(since, str):
            raise ValueError("checkpoint 'since' must be a string or null")
        if not isinstance(seen, list) or not all(isinstance(item, str) for item in seen):
            raise ValueError("checkpoint 'seen' must be a list of strings")
        if since is not None:
            parse_timestamp(since)
        return cls(since, tuple(seen))


class _Secret:
    """Holds the API key so no repr, log or traceback can show it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"


class _Attempt(Exception):
    """Internal: one connection attempt ended without the terminal state."""

    def __init__(self, reason: str, retry_after: Optional[float] = None, idle: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.idle = idle


def _is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (plain HTTP is safe there)."""
    import ipaddress

    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_text(name: str, value: str) -> None:
    """Refuse control characters, which could split an HTTP request."""
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ConfigurationError(f"the {name} contains control characters; check where it came from")


def _check_header(name: str, value: str) -> None:
    """Refuse what an HTTP header cannot carry, before any request."""
    _check_text(name, value)
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"the {name} has characters an HTTP header cannot carry; check where it came from"
        ) from None


def _time_key(timestamp: datetime, raw: str) -> Tuple[datetime, int]:
    """An ordering key with the nanoseconds a datetime cannot hold."""
    dot = raw.find(".")
    nanos = 0
    if dot >= 0:
        digits = raw[dot + 7:dot + 10]
        end = 0
        while end < len(digits) and digits[end].isdigit():
            end += 1
        nanos = int(digits[:end].ljust(3, "0")) if end else 0
    return timestamp, nanos


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header, or None."""
    import email.utils

    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _client_error(code: str, message: str, data: str) -> ErrorEvent:
    """An error event made here, for data the stream could not deliver."""
    now = datetime.now(timezone.utc)
    stamp = now.isoformat().replace("+00:00", "Z")
    detail = ApiErrorDetail("raw_data", data)
    raw: JSONObject = {
        "event": "error",
        "timestamp": stamp,
        "error": {"code": code, "message": message, "details": [{"code": "raw_data", "message": data}]},
    }
    return ErrorEvent(now, ApiError(code, message, (detail,)), stamp, raw)


class Follower:
    """Follows one invocation's event stream to its terminal state.

    Iterate over it (or use :func:`follow`) to get typed events.  It
    reconnects after drops, resumes with ``since`` and drops what it already
    delivered, treats ``idle_timeout`` seconds without an event as a drop,
    and stops after the terminal ``invocation_state`` or at ``deadline``
    seconds.  ``checkpoint`` tells where it stands, for a later resume;
    ``attempt`` counts requests, ``reconnects`` the drops recovered from,
    ``invocation`` is the last state delivered.
    """

    def __init__(
        self,
        invocation_id: str,
        *,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        since: Optional[str] = None,
        checkpoint: Optional[Checkpoint] = None,
        idle_timeout: float = 90.0,
        deadline: Optional[float] = None,
        max_retries: int = 10,
        project_id: Optional[str] = None,
        allow_insecure_http: bool = False,
        ssl_context: Optional[ssl.SSLContext] = None,
        max_event_bytes: int = 16 * 1024 * 1024,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        on_retry: Optional[Callable[[int, float, str], None]] = None,
    ) -> None:
        import urllib.parse

        key = api_key if api_key is not None else os.environ.get("KERNEL_API_KEY", "")
        if not key:
            raise ConfigurationError(
                "no API key: set the KERNEL_API_KEY environment variable (or pass api_key)"
            )
        if not invocation_id:
            raise ConfigurationError("the invocation id is empty")
        _check_text("invocation id", invocation_id)
        _check_header("API key", key)
        if idle_timeout <= 0:
            raise ConfigurationError("idle_timeout must be positive")
        if max_retries < 0:
            raise ConfigurationError("max_retries must be 0 or more")
        self.invocation_id = invocation_id
        self.base_url = (base_url or os.environ.get("KERNEL_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._key = _Secret(key)
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError(
                "the base URL must not carry credentials; give the key in KERNEL_API_KEY"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"the base URL {self.base_url!r} is not an http(s) URL; check KERNEL_BASE_URL"
            )
        if parts.scheme == "http" and not _is_loopback(parts.hostname) and not allow_insecure_http:
            raise ConfigurationError(
                f"refusing to send the API key over plain HTTP to {parts.hostname}; "
                "use https, or allow it explicitly (allow_insecure_http)"
            )
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path_prefix = parts.path.rstrip("/")
        self._first_since = since
        self.idle_timeout = idle_timeout
        self.deadline = deadline
        self.max_retries = max_retries
        self.project_id = project_id if project_id is not None else os.environ.get("KERNEL_PROJECT_ID")
        if self.project_id:
            _check_header("project id", self.project_id)
        self._ssl_context = ssl_context
        self.max_event_bytes = max_event_bytes
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.on_retry = on_retry
        self.attempt = 0
        self.reconnects = 0
        self.invocation: Optional[Invocation] = None
        self.finished = False
        self._connection: Optional[http.client.HTTPConnection] = None
        self._response: Optional[http.client.HTTPResponse] = None
        self._ends_at: Optional[float] = None
        # Resume state: the boundary (the last delivered log, state or error
        # timestamp) and how often each event was delivered at it.
        self._boundary_raw: Optional[str] = None
        self._boundary_time: Optional[datetime] = None
        self._seen: Dict[str, int] = {}
        self._skip: Dict[str, int] = {}
        self._replaying = False
        if checkpoint is not None:
            if checkpoint.since is not None:
                self._boundary_raw = checkpoint.since
                self._boundary_time = parse_timestamp(checkpoint.since)
            for data in checkpoint.seen:
                self._seen[data] = self._seen.get(data, 0) + 1

    def __repr__(self) -> str:
        return f"<Follower {self.invocation_id!r} at {self.base_url} attempt={self.attempt}>"

    @property
    def checkpoint(self) -> Checkpoint:
        """Where the follow stands: resume from here with no repeats."""
        seen = tuple(data for data, count in self._seen.items() for _ in range(count))
        return Checkpoint(self._boundary_raw, seen)

    # -- the loop ------------------------------------------------------

    def __iter__(self) -> Iterator[KernelEvent]:
        """Yield every event once, in order, up to the terminal state."""
        if self.deadline is not None:
            self._ends_at = time.monotonic() + self.deadline
        failures = 0
        idle_failures = 0
        try:
            while True:
                self.attempt += 1
                progressed = False
                try:
                    for event in self._stream_once():
                        if not isinstance(event, HeartbeatEvent):
                            progressed = True
                        yield event
                    if self.finished:
                        return
                    raise _Attempt("the server ended the stream before the terminal state")
                except _Attempt as ended:
                    failures = 0 if progressed else failures + 1
                    idle_failures = idle_failures + 1 if ended.idle else 0
                    if failures > self.max_retries:
                        self._give_up(ended, failures, idle_failures)
                    delay = self._backoff(failures, ended.retry_after)
                    self.reconnects += 1
                    if self.on_retry is not None:
                        self.on_retry(self.attempt + 1, delay, ended.reason)
                    self._sleep(delay)
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection, if one is open."""
        if self._response is not None:
            self._response.close()
            self._response = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _give_up(self, ended: _Attempt, failures: int, idle_failures: int) -> NoReturn:
        """Raise the error for retries exhausted."""
        if idle_failures >= failures:
            raise StreamTimeout(
                f"no event for {self.idle_timeout:g}s, {idle_failures} times in a row; the server "
                "sends heartbeats, so the connection is stalled: check proxies and the "
                "network, or raise the idle timeout"
            )
        raise ConnectionFailed(
            f"gave up after {failures} failed attempts in a row (last: {ended.reason}); "
            "check the network and KERNEL_BASE_URL, or raise max_retries"
        )

    def _backoff(self, failures: int, retry_after: Optional[float]) -> float:
        """Seconds to wait before the next attempt: capped full jitter."""
        import random

        if retry_after is not None:
            return retry_after
        ceiling = min(self.backoff_cap, self.backoff_base * (2 ** min(failures, 30)))
        return random.uniform(0, ceiling)

    def _remaining(self) -> Optional[float]:
        """Seconds left before the deadline, or None without one."""
        if self._ends_at is None:
            return None
        return self._ends_at - time.monotonic()

    def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, but never past the deadline."""
        remaining = self._remaining()
        if remaining is not None and delay >= remaining:
            time.sleep(max(0.0, remaining))
            self._deadline_passed()
        time.sleep(delay)

    def _deadline_passed(self) -> NoReturn:
        """Raise DeadlineExceeded."""
        raise DeadlineExceeded(
            f"the deadline of {self.deadline:g}s passed before the invocation finished; "
            "raise the deadline, or resume later from the checkpoint (--state-file)"
        )

    def _time_left(self, limit: float) -> float:
        """``limit``, shortened to what is left before the deadline."""
        remaining = self._remaining()
        if remaining is None:
            return limit
        if remaining <= 0:
            self._deadline_passed()
        return min(limit, remaining)

    # -- one attempt ---------------------------------------------------

    def _request_path(self) -> str:
        """The events path, with ``since`` for a resume."""
        import urllib.parse

        path = f"{self._path_prefix}/invocations/{urllib.parse.quote(self.invocation_id, safe='')}/events"
        since = self._boundary_raw or self._first_since
        if since:
            path += "?" + urllib.parse.urlencode({"since": since})
        return path

    def _headers(self) -> Dict[str, str]:
        """The request headers (the only place the key is used)."""
        headers = {
            "Authorization": f"Bearer {self._key.value}",
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
            "User-Agent": f"kernel-sse/{__version__} Python/{_PYTHON_VERSION}",
        }
        if self.project_id:
            headers["X-Kernel-Project-Id"] = self.project_id
        return headers

    def _open(self, host: str, port: int, scheme: str) -> http.client.HTTPConnection:
        """Make a connection, through the HTTPS proxy if the environment names one."""
        import base64
        import http.client
        import ssl
        import urllib.parse

        # Connecting waits no longer than an idle stream would.
        timeout = self._time_left(min(_CONNECT_TIMEOUT, self.idle_timeout))
        if scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=timeout)
        context = self._ssl_context or ssl.create_default_context()
        proxy = _proxy_for(host)
        if proxy is None:
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        connection = http.client.HTTPSConnection(
            proxy_parts.hostname or "", proxy_parts.port or 8080, timeout=timeout, context=context
        )
        tunnel_headers = {}
        if proxy_parts.username is not None:
            credentials = f"{urllib.parse.unquote(proxy_parts.username)}:" + urllib.parse.unquote(
                proxy_parts.password or ""
            )
            tunnel_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(
                credentials.encode()
            ).decode("ascii")
        connection.set_tunnel(host, port, headers=tunnel_headers)
        return connection

    def _exchange(
        self, connection: http.client.HTTPConnection, path: str
    ) -> Tuple[http.client.HTTPResponse, socket.socket]:
        """Send the request and read the response head, within the idle limit
        and the deadline however slowly the server answers; return the
        response and its socket."""
        import http.client
        import socket
        import threading

        limit = self._time_left(self.idle_timeout)
        expired = threading.Event()

        def interrupt() -> None:
            # http.client restarts the socket timeout for every byte of the
            # head, so a trickling server is cut off from outside.
            expired.set()
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(limit, interrupt)
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.request("GET", path, headers=self._headers())
            # Taken now: for a response that closes the connection,
            # http.client hands the socket to the response and forgets it.
            sock = connection.sock
            assert sock is not None  # request() connected
            return connection.getresponse(), sock
        except (OSError, http.client.HTTPException) as exc:
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                self._deadline_passed()
            if expired.is_set() or isinstance(exc, socket.timeout):
                raise _Attempt(f"no response within {limit:g}s", idle=True) from None
            raise _Attempt(f"connection failed: {_describe(exc)}") from None
        finally:
            watchdog.cancel()
            watchdog.join()

    def _connect(self) -> Tuple[http.client.HTTPResponse, socket.socket]:
        """Send the request, following same-origin redirects; return a 200
        response and its socket."""
        import urllib.parse

        scheme, host, port = self._scheme, self._host, self._port
        path = self._request_path()
        for _hop in range(_MAX_REDIRECTS + 1):
            self.close()
            connection = self._connection = self._open(host, port, scheme)
            response, sock = self._exchange(connection, path)
            self._response = response
            status = response.status
            if status == 200:
                content_type = response.getheader("Content-Type", "")
                if not content_type.lower().startswith("text/event-stream"):
                    raise _Attempt(f"expected an event stream, got {content_type or 'no content type'}")
                return response, sock
            if status in _REDIRECT_STATUSES:
                location = response.getheader("Location", "")
                target = urllib.parse.urlsplit(
                    urllib.parse.urljoin(f"{scheme}://{host}:{port}{path}", location)
                )
                target_port = target.port or (443 if target.scheme == "https" else 80)
                if (target.scheme, target.hostname, target_port) != (scheme, host, port):
                    raise APIStatusError(
                        status,
                        "redirect_refused",
                        f"redirect to another origin ({target.scheme}://{target.hostname}:"
                        f"{target_port}) refused so the API key stays with {host}; "
                        "set KERNEL_BASE_URL to the new address if it is trusted",
                    )
                path = target.path + ("?" + target.query if target.query else "")
                continue
            body = _read_body(response)
            if status in _RETRYABLE_STATUSES or status >= 500:
                raise _Attempt(
                    f"the API answered {status}",
                    retry_after=_parse_retry_after(response.getheader("Retry-After")),
                )
            code, message = _error_body(status, body)
            raise _STATUS_ERRORS.get(status, APIStatusError)(status, code, message)
        raise _Attempt(f"more than {_MAX_REDIRECTS} redirects")

    def _stream_once(self) -> Iterator[KernelEvent]:
        """One connection: yield new events until the stream ends or stalls."""
        import http.client
        import socket

        response, sock = self._connect()
        parser = SSEParser(self.max_event_bytes)
        self._replaying = self._boundary_raw is not None or bool(self._seen)
        self._skip = dict(self._seen)
        idle_ends = time.monotonic() + self.idle_timeout
        while True:
            now = time.monotonic()
            wait = idle_ends - now
            if self._ends_at is not None and self._ends_at - now < wait:
                wait = self._ends_at - now
                if wait <= 0:
                    self._deadline_passed()
            if wait <= 0:
                raise _Attempt(f"no event for {self.idle_timeout:g}s", idle=True)
            sock.settimeout(wait)
            try:
                chunk = response.read1(_READ_SIZE)
            except socket.timeout:
                continue  # the loop head tells the idle limit from the deadline
            except (OSError, http.client.HTTPException) as exc:
                raise _Attempt(f"the connection broke: {_describe(exc)}") from None
            if not chunk:
                raise _Attempt("the server ended the stream before the terminal state")
            try:
                sses: List[Optional[ServerSentEvent]] = list(parser.feed(chunk))
            except EventTooLarge as exc:
                sses = list(exc.events)
                for position in reversed(exc.positions):
                    sses.insert(position, None)  # where the skipped event was
            if sses:
                idle_ends = time.monotonic() + self.idle_timeout
            for sse in sses:
                if sse is None:
                    yield _client_error(
                        "client_event_too_large",
                        f"an event larger than {self.max_event_bytes} bytes was skipped",
                        "",
                    )
                    continue
                event = self._typed(sse)
                if event is not None:
                    yield event
                if self.finished:
                    return

    def _typed(self, sse: ServerSentEvent) -> Optional[KernelEvent]:
        """Type one event; None when it repeats one already delivered."""
        try:
            event = parse_event(sse)
        except MalformedEvent as exc:
            if not self._deliver_untimed(sse.data):
                return None
            return _client_error("client_malformed_event", exc.reason, exc.data)
        if isinstance(event, (LogEvent, InvocationStateEvent, ErrorEvent)):
            delivered = self._deliver(event.timestamp, event.timestamp_raw, sse.data)
            if isinstance(event, InvocationStateEvent) and (delivered or event.invocation.is_terminal):
                # A terminal state seen again (resuming a finished follow)
                # still ends the follow, without a repeat.
                self.invocation = event.invocation
                self.finished = event.invocation.is_terminal
            return event if delivered else None
        if isinstance(event, UnknownEvent) and not self._deliver_untimed(sse.data):
            return None
        return event

    def _deliver(self, timestamp: datetime, raw: str, data: str) -> bool:
        """Decide if a timestamped event is new; if so, record it.

        On a resume the server replays from ``since`` inclusive: drop what
        lies before the boundary, and at the boundary exactly as many copies
        of each event as were delivered before.
        """
        order = self._order(timestamp, raw)
        if self._replaying:
            if order < 0 or (order == 0 and self._replayed(data)):
                return False
            if order > 0:
                self._replaying = False
        if order > 0:
            self._boundary_raw = raw
            self._boundary_time = timestamp
            self._seen = {data: 1}
        elif order == 0:
            self._seen[data] = self._seen.get(data, 0) + 1
        return True

    def _deliver_untimed(self, data: str) -> bool:
        """Decide if an event without a usable timestamp (unknown kind,
        malformed) is new: while replaying, skip as many as were delivered."""
        if self._replaying and self._replayed(data):
            return False
        self._seen[data] = self._seen.get(data, 0) + 1
        return True

    def _replayed(self, data: str) -> bool:
        """True (and counted) if ``data`` is one more copy the server replays
        of what was delivered before the reconnect."""
        left = self._skip.get(data, 0)
        if left:
            self._skip[data] = left - 1
        return bool(left)

    def _order(self, timestamp: datetime, raw: str) -> int:
        """-1, 0 or 1 as ``raw`` lies before, at or after the boundary."""
        boundary = self._boundary_raw
        if boundary is None or self._boundary_time is None:
            return 1
        if raw == boundary:
            return 0
        if len(raw) == len(boundary) and raw[-1] == boundary[-1] == "Z" and raw[10] == boundary[10]:
            return 1 if raw > boundary else -1  # same shape: text order is time order
        mine = _time_key(timestamp, raw)
        theirs = _time_key(self._boundary_time, boundary)
        return (mine > theirs) - (mine < theirs)


def _proxy_for(host: str) -> Optional[str]:
    """The HTTPS proxy the environment names for ``host``, if any."""
    import urllib.request

    # Public in CPython since 3.0 but missing from typeshed's stubs.
    bypass = cast(Callable[[str, Dict[str, str]], bool], getattr(urllib.request, "proxy_bypass_environment"))
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get("https")
    if not proxy or bypass(host, proxies):
        return None
    return proxy


def _describe(exc: BaseException) -> str:
    """A one-line description of a network error."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_body(response: http.client.HTTPResponse) -> bytes:
    """Read an error body, bounded, never failing."""
    import http.client

    try:
        return response.read(65536)
    except (OSError, http.client.HTTPException):
        return b""


def _error_body(status: int, body: bytes) -> Tuple[str, str]:
    """The spec's ``Error`` {code, message} from a body, or a description."""
    import http.client

    try:
        obj = json.loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("code"), str) and isinstance(obj.get("message"), str):
        return str(obj["code"]), str(obj["message"])
    reason = http.client.responses.get(status, "error")
    return reason.lower().replace(" ", "_"), reason


def follow(
    invocation_id: str,
    *,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    since: Optional[str] = None,
    checkpoint: Optional[Checkpoint] = None,
    idle_timeout: float = 90.0,
    deadline: Optional[float] = None,
    max_retries: int = 10,
    project_id: Optional[str] = None,
    allow_insecure_http: bool = False,
    ssl_context: Optional[ssl.SSLContext] = None,
    max_event_bytes: int = 16 * 1024 * 1024,
) -> Iterator[KernelEvent]:
    """Yield an invocation's events once each, in order, to its terminal state.

    ``api_key`` and ``base_url`` default to ``KERNEL_API_KEY`` and
    ``KERNEL_BASE_URL``.  See :class:`Follower` for the behaviour and for
    lifecycle details (reconnects, checkpoints).
    """
    return iter(
        Follower(
            invocation_id,
            api_key=api_key,
            base_url=base_url,
            since=since,
            checkpoint=checkpoint,
            idle_timeout=idle_timeout,
            deadline=deadline,
            max_retries=max_retries,
            project_id=project_id,
            allow_insecure_http=allow_insecure_http,
            ssl_context=ssl_context,
            max_event_bytes=max_event_bytes,
        )
    )


# ======================================================================
# Output: events as text lines or JSON lines (plain functions)
# ======================================================================


def format_time(timestamp: datetime) -> str:
    """A timestamp as a short, sortable UTC string with milliseconds."""
    utc = timestamp.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def format_text(event: KernelEvent) -> Optional[str]:
    """Render an event as one human-readable line (None for heartbeats).

    The line has no colour; plugins add it.  Log messages are printed as the
    application wrote them.
    """
    if isinstance(event, LogEvent):
        return f"{format_time(event.timestamp)} {event.message}"
    if isinstance(event, InvocationStateEvent):
        invocation = event.invocation
        reason = f": {invocation.status_reason}" if invocation.status_reason else ""
        return f"{format_time(event.timestamp)} [{invocation.status}]{reason}"
    if isinstance(event, ErrorEvent):
        return f"{format_time(event.timestamp)} [error] {event.error.code}: {event.error.message}"
    if isinstance(event, UnknownEvent):
        return f"[{event.event}] {json.dumps(event.raw, ensure_ascii=False, sort_keys=True)}"
    return None


def format_json(event: KernelEvent) -> str:
    """Render an event as one JSON line: the object the API sent, values as sent."""
    return json.dumps(event.raw, ensure_ascii=False, separators=(",", ":"))


def format_result(invocation: Invocation, elapsed: Optional[float] = None) -> str:
    """Describe a finished invocation: status, reason, duration and output."""
    lines = [
        f"invocation {invocation.id} ({invocation.app_name} {invocation.action_name} "
        f"v{invocation.version}) {invocation.status}"
        + (f": {invocation.status_reason}" if invocation.status_reason else "")
    ]
    if invocation.finished_at is not None:
        took = (invocation.finished_at - invocation.started_at).total_seconds()
        lines[0] += f" after {took:.1f}s"
    elif elapsed is not None:
        lines[0] += f" (followed for {elapsed:.1f}s)"
    if invocation.output is not None:
        try:
            output = json.dumps(json.loads(invocation.output), indent=2, ensure_ascii=False)
        except (ValueError, RecursionError):
            output = invocation.output
        lines.append("output: " + output)
    return "\n".join(lines)


def print_line(line: str, json_of: Optional[KernelEvent] = None) -> None:
    """Print ``line`` on standard output and flush; where stdout cannot
    encode it (a Latin-1 locale, say), lose nothing: a JSON line (give its
    event as ``json_of``) is written with ``\\u`` escapes, a text line with
    backslash escapes."""
    try:
        print(line, flush=True)
    except UnicodeEncodeError:
        if json_of is not None:
            print(json.dumps(json_of.raw, separators=(",", ":")), flush=True)
        else:
            encoding = getattr(sys.stdout, "encoding", None) or "ascii"
            print(line.encode(encoding, "backslashreplace").decode(encoding), flush=True)


# ======================================================================
# Hooks
# ======================================================================

HOOK_NAMES = (
    "add_arguments",
    "on_start",
    "on_log",
    "on_state",
    "on_error",
    "on_heartbeat",
    "on_unknown",
    "on_reconnect",
    "on_terminal",
    "on_finish",
)
"""Every hook a plugin can implement, in the order they first fire."""


@dataclass(frozen=True)
class Outcome:
    """How a follow ended, as the ``on_finish`` hook and the exit code see it.

    ``status`` is ``succeeded`` or ``failed`` (the invocation's own), or
    ``refused`` (the API said no), ``gave_up`` (retries or idle limit),
    ``deadline``, ``interrupted``, ``plugin_error``.  ``invocation`` is the
    last state seen, ``message`` says what went wrong, if anything.
    """

    status: str
    exit_code: int
    invocation: Optional[Invocation] = None
    message: Optional[str] = None


_PluginState = TypeVar("_PluginState")


class FollowContext:
    """What a hook knows about the follow in progress; read-only.

    Never holds the API key.
    """

    def __init__(self, follower: Follower, options: Mapping[str, object]) -> None:
        self._follower = follower
        self._options = dict(options)
        self._started = datetime.now(timezone.utc)
        self._started_clock = time.monotonic()
        self._plugin_states: Dict[Callable[[], object], object] = {}

    @property
    def invocation_id(self) -> str:
        """The invocation being followed."""
        return self._follower.invocation_id

    @property
    def base_url(self) -> str:
        """The API base URL."""
        return self._follower.base_url

    @property
    def attempt(self) -> int:
        """The connection attempt in progress (1 for the first request)."""
        return self._follower.attempt

    @property
    def reconnects(self) -> int:
        """How many drops were recovered from so far."""
        return self._follower.reconnects

    @property
    def started_at(self) -> datetime:
        """When the follow started (aware, UTC)."""
        return self._started

    @property
    def elapsed(self) -> float:
        """Seconds since the follow started."""
        return time.monotonic() - self._started_clock

    @property
    def options(self) -> Mapping[str, object]:
        """The parsed command-line options (plugins' own included), by dest name."""
        return self._options

    def state_for(self, factory: Callable[[], _PluginState]) -> _PluginState:
        """This follow's own instance of a plugin's state, made by ``factory()`` on first use.

        Plugins keep per-follow state here instead of in module globals, so
        several follows in one process never mix their counts or files::

            class _Counts:
                def __init__(self) -> None:
                    self.logs = 0

            @kernel_sse.hookimpl
            def on_log(event, context):
                context.state_for(_Counts).logs += 1
        """
        try:
            return cast(_PluginState, self._plugin_states[factory])
        except KeyError:
            state = self._plugin_states[factory] = factory()
            return state

    def __repr__(self) -> str:
        return f"<FollowContext {self.invocation_id!r} attempt={self.attempt}>"


class HookSpecs:
    """The hooks a kernel-sse plugin may implement (mark them ``@kernel_sse.hookimpl``).

    A plugin may take any subset of a hook's arguments.  A hook that raises
    is reported once on stderr and the others still run.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the plugin's command-line options, before the command line is parsed.

        ``parser`` is the ``follow`` (and ``demo``) subcommand's parser.
        """

    def on_start(self, context: FollowContext) -> None:
        """The follow is starting (before the first request)."""

    def on_log(self, event: LogEvent, context: FollowContext) -> None:
        """A log line the application wrote; each is delivered once."""

    def on_state(self, event: InvocationStateEvent, context: FollowContext) -> None:
        """The invocation's state changed (or was reported on connect)."""

    def on_error(self, event: ErrorEvent, context: FollowContext) -> None:
        """An error event; not terminal.  Codes starting ``client_`` come from
        kernel-sse itself (malformed or oversized data), with the raw data in
        ``event.error.details``."""

    def on_heartbeat(self, event: HeartbeatEvent, context: FollowContext) -> None:
        """The server's keep-alive arrived."""

    def on_unknown(self, event: UnknownEvent, context: FollowContext) -> None:
        """An event of a kind this version does not know, kept whole in ``event.raw``."""

    def on_reconnect(self, attempt: int, delay: float, reason: str, context: FollowContext) -> None:
        """The connection was lost (``reason``); attempt ``attempt`` starts in ``delay`` s."""

    def on_terminal(self, invocation: Invocation, context: FollowContext) -> None:
        """The invocation reached ``succeeded`` or ``failed``; called exactly once."""

    def on_finish(self, outcome: Outcome, context: FollowContext) -> None:
        """The follow is over, however it ended (also without a terminal state)."""


def _import_pluggy() -> Any:
    """Import pluggy, or explain how to get it."""
    try:
        import pluggy
    except ImportError:
        raise PluginError(
            "plugins need the 'pluggy' package: pip install pluggy (or pip install kernel-sse)"
        ) from None
    return pluggy


if TYPE_CHECKING:  # pragma: no cover - for mypy and plugin authors' editors
    import pluggy

    hookimpl: pluggy.HookimplMarker
    hookspec: pluggy.HookspecMarker


def __getattr__(name: str) -> Any:
    """Create ``hookimpl`` and ``hookspec`` on first use, so that importing
    kernel_sse never imports pluggy."""
    if name in ("hookimpl", "hookspec"):
        pluggy = _import_pluggy()
        marker = pluggy.HookimplMarker("kernel_sse") if name == "hookimpl" else pluggy.HookspecMarker("kernel_sse")
        globals()[name] = marker
        return marker
    raise AttributeError(f"module 'kernel_sse' has no attribute {name!r}")


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin, as ``kernel-sse plugins`` lists it."""

    name: str
    source: str
    version: str
    hooks: Tuple[str, ...]

    def to_json(self) -> JSONObject:
        """The JSON object ``kernel-sse plugins --json`` prints."""
        return {"name": self.name, "source": self.source, "version": self.version, "hooks": list(self.hooks)}


BUNDLED_PLUGINS = ("console", "jsonl", "webhook", "prometheus", "logging")
"""The plugins that ship in ``kernel_sse_plugins``, registered by default."""


class _Impl(NamedTuple):
    """One plugin's implementation of one hook."""

    plugin: str
    function: Callable[..., object]
    argnames: Tuple[str, ...]


class Hooks:
    """Calls plugin hooks one implementation at a time, so a failing plugin
    neither stops the follow nor keeps the others from the event.

    Typed methods (one per hook) keep callers checked by mypy.  ``failures``
    counts the calls that raised.
    """

    def __init__(self, impls: Mapping[str, Sequence[_Impl]], strict: bool = False, trace: bool = False) -> None:
        self._impls = impls
        self.strict = strict
        self.trace = trace
        # A count, not the exceptions: their tracebacks would keep every
        # failing call's events alive for the whole follow.
        self.failures = 0
        self._reported: set[Tuple[str, str]] = set()

    def _call(self, hook: str, **kwargs: object) -> None:
        for impl in self._impls.get(hook, ()):
            if self.trace:
                print(f"kernel-sse trace: {impl.plugin}.{hook}({', '.join(impl.argnames)})", file=sys.stderr)
            try:
                impl.function(*[kwargs[name] for name in impl.argnames])
            except (BrokenPipeError, KeyboardInterrupt, UsageError):
                # The reader of standard output is gone (nobody to print for),
                # the user or a signal stops the run, or a plugin refuses its
                # options (exit 2, before the first request when raised in on_start).
                raise
            except BaseException as exc:  # noqa: B036 - sys.exit or CancelledError in a hook is a plugin error too
                self.failures += 1
                if self.strict:  # fatal: the caller reports it, once
                    raise PluginFailed(impl.plugin, hook, exc) from exc
                if (impl.plugin, hook) not in self._reported:
                    self._reported.add((impl.plugin, hook))
                    print(
                        f"kernel-sse: plugin {impl.plugin!r} failed in {hook}: {_describe(exc)}",
                        file=sys.stderr,
                    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Let plugins add command-line options."""
        self._call("add_arguments", parser=parser)

    def on_start(self, context: FollowContext) -> None:
        """The follow starts."""
        self._call("on_start", context=context)

    def on_event(self, event: KernelEvent, context: FollowContext) -> None:
        """Route one event to its hook."""
        if isinstance(event, LogEvent):
            self._call("on_log", event=event, context=context)
        elif isinstance(event, InvocationStateEvent):
            self._call("on_state", event=event, context=context)
        elif isinstance(event, ErrorEvent):
            self._call("on_error", event=event, context=context)
        elif isinstance(event, HeartbeatEvent):
            self._call("on_heartbeat", event=event, context=context)
        else:
            self._call("on_unknown", event=event, context=context)

    def on_reconnect(self, attempt: int, delay: float, reason: str, context: FollowContext) -> None:
        """The connection dropped; another attempt follows."""
        self._call("on_reconnect", attempt=attempt, delay=delay, reason=reason, context=context)

    def on_terminal(self, invocation: Invocation, context: FollowContext) -> None:
        """The invocation finished."""
        self._call("on_terminal", invocation=invocation, context=context)

    def on_finish(self, outcome: Outcome, context: FollowContext) -> None:
        """The follow is over."""
        self._call("on_finish", outcome=outcome, context=context)


def _impls_of(obj: object, plugin: str) -> Dict[str, List[_Impl]]:
    """Hook implementations of a plain object (no pluggy): its hook-named methods."""
    import inspect

    impls: Dict[str, List[_Impl]] = {}
    for hook in HOOK_NAMES:
        function = getattr(obj, hook, None)
        if callable(function):
            argnames = tuple(inspect.signature(function).parameters)
            impls.setdefault(hook, []).append(_Impl(plugin, function, argnames))
    return impls


class PluginSet:
    """The plugins of one run: loaded with pluggy, listed, turned into :class:`Hooks`."""

    def __init__(self) -> None:
        pluggy = _import_pluggy()
        self._manager = pluggy.PluginManager("kernel_sse")
        self._manager.add_hookspecs(_hookspecs_class())
        self.sources: Dict[str, str] = {}
        self.versions: Dict[str, str] = {}

    def register(self, plugin: object, name: str, source: str, version: Optional[str] = None) -> None:
        """Register one plugin object (usually a module) under ``name``."""
        if self._manager.is_blocked(name) or self._manager.has_plugin(name):
            return
        try:
            self._manager.register(plugin, name=name)
            self._manager.check_pending()
        except Exception as exc:  # pluggy's validation errors name the bad hook
            if self._manager.is_registered(plugin):
                self._manager.unregister(plugin)
            raise PluginError(f"plugin {name!r} ({source}) is not valid: {exc}") from None
        for caller in self._manager.get_hookcallers(plugin) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and (impl.hookwrapper or getattr(impl, "wrapper", False)):
                    self._manager.unregister(plugin)
                    raise PluginError(
                        f"plugin {name!r} uses a hook wrapper, which kernel-sse does not support: "
                        "hooks are called one by one so a failing plugin cannot stop the others"
                    )
        self.sources[name] = source
        module_version = getattr(plugin, "__version__", None)
        self.versions[name] = version or (module_version if isinstance(module_version, str) else "unknown")

    def block(self, name: str) -> None:
        """Block a plugin by name (``-p no:NAME``), bundled ones included."""
        self._manager.set_blocked(name)

    def load(self, spec: str, source: str) -> None:
        """Load a plugin from a module name or a path to a ``.py`` file."""
        name, module = _import_plugin(spec)
        self.register(module, name, source)

    def load_bundled(self) -> None:
        """Register the bundled plugins, when their package is installed."""
        import importlib

        for name in BUNDLED_PLUGINS:
            if self._manager.is_blocked(name):
                continue
            try:
                module = importlib.import_module(f"kernel_sse_plugins.{name}")
            except ImportError:
                continue  # a lone kernel_sse.py: the CLI prints by itself
            self.register(module, name, "bundled", __version__)

    def load_entry_points(self) -> None:
        """Register the plugins installed under the entry-point group ``kernel_sse``."""
        for entry_point in _entry_points("kernel_sse"):
            if self._manager.is_blocked(entry_point.name) or self._manager.has_plugin(entry_point.name):
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:
                raise PluginError(f"entry-point plugin {entry_point.name!r} failed to load: {_describe(exc)}") from None
            dist = getattr(entry_point, "dist", None)
            self.register(plugin, entry_point.name, "entrypoint", getattr(dist, "version", None))

    def names(self) -> List[str]:
        """Registered plugin names, in registration order."""
        return [name for name, _plugin in self._manager.list_name_plugin() if name in self.sources]

    def info(self) -> List[PluginInfo]:
        """What ``kernel-sse plugins`` lists."""
        result = []
        for name, plugin in self._manager.list_name_plugin():
            if name not in self.sources:
                continue
            hooks = tuple(sorted(caller.name for caller in self._manager.get_hookcallers(plugin) or ()))
            result.append(PluginInfo(name, self.sources[name], self.versions[name], hooks))
        return result

    def hooks(self, strict: bool = False, trace: bool = False) -> Hooks:
        """The typed hook caller over every registered plugin."""
        impls: Dict[str, List[_Impl]] = {}
        for hook in HOOK_NAMES:
            caller = getattr(self._manager.hook, hook)
            # pluggy calls the last registered first; keep that order, except
            # for add_arguments: bundled options first, so a clash blames the newcomer.
            found = caller.get_hookimpls()
            ordered = found if hook == "add_arguments" else list(reversed(found))
            impls[hook] = [_Impl(impl.plugin_name, impl.function, tuple(impl.argnames)) for impl in ordered]
        return Hooks(impls, strict=strict, trace=trace)


_SPECS_MARKED: List[type] = []


def _hookspecs_class() -> type:
    """HookSpecs, with pluggy's spec marker applied (once)."""
    if not _SPECS_MARKED:
        spec_marker = _import_pluggy().HookspecMarker("kernel_sse")
        for hook in HOOK_NAMES:
            spec_marker(getattr(HookSpecs, hook))
        _SPECS_MARKED.append(HookSpecs)
    return HookSpecs


def _import_plugin(spec: str) -> Tuple[str, object]:
    """Import ``spec`` (a module name or a ``.py`` path); return (name, module)."""
    import importlib
    import importlib.util

    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        name = os.path.splitext(os.path.basename(path))[0]
        if not os.path.isfile(path):
            raise PluginError(f"plugin file {spec!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"kernel_sse_plugin_{name}", path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"cannot load plugin file {spec!r}")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise PluginError(f"plugin file {spec!r} failed to import: {_describe(exc)}") from None
        return name, module
    try:
        return spec.rsplit(".", 1)[-1], importlib.import_module(spec)
    except Exception as exc:
        raise PluginError(f"plugin {spec!r} failed to import: {_describe(exc)}") from None


def _entry_points(group: str) -> List[Any]:
    """Entry points of ``group`` (importlib.metadata's API differs by version)."""
    from importlib import metadata

    found = metadata.entry_points()
    if hasattr(found, "select"):
        return list(found.select(group=group))
    return list(cast(Dict[str, List[Any]], found).get(group, []))  # pragma: no cover - Python < 3.10


# ======================================================================
# Command line
# ======================================================================

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_GAVE_UP = 4
EXIT_PLUGIN_ERROR = 5
EXIT_INTERNAL = 70
EXIT_LOCKED = 75
EXIT_SIGINT = 130
EXIT_SIGPIPE = 141
EXIT_SIGTERM = 143

_DURATION = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|\u00b5s|ms|s|m|h)(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|\u00b5s|ms|s|m|h))*\Z")
_STATE_KIND = "kernel-sse-state"
_SAVE_EVERY = 1.0  # seconds between state-file writes while following


class _Signalled(KeyboardInterrupt):
    """Internal: SIGTERM or SIGHUP arrived; unwinds the follow like Ctrl-C."""


class _BuiltinOutput:
    """Text or JSON lines on stdout with no plugin at all (a lone kernel_sse.py).

    The bundled ``console`` and ``jsonl`` plugins replace it when installed.
    """

    def __init__(self, output_format: str, quiet: bool) -> None:
        self.output_format = output_format
        self.quiet = quiet

    def _write(self, event: KernelEvent) -> None:
        if self.quiet:
            return
        line = format_json(event) if self.output_format == "jsonl" else format_text(event)
        if line is not None:
            print_line(line, event if self.output_format == "jsonl" else None)

    def on_log(self, event: LogEvent) -> None:
        """Print a log line."""
        self._write(event)

    def on_state(self, event: InvocationStateEvent) -> None:
        """Print a state change."""
        self._write(event)

    def on_error(self, event: ErrorEvent) -> None:
        """Print an error event."""
        self._write(event)

    def on_heartbeat(self, event: HeartbeatEvent) -> None:
        """Heartbeats appear in JSON lines only."""
        self._write(event)

    def on_unknown(self, event: UnknownEvent) -> None:
        """Print an event of an unknown kind."""
        self._write(event)

    def on_terminal(self, invocation: Invocation, context: FollowContext) -> None:
        """Print the result (text output only: JSON lines stay pure)."""
        if self.output_format == "text":
            print_line(format_result(invocation, context.elapsed))


def _add_follow_options(parser: argparse.ArgumentParser) -> None:
    """The options ``follow`` and ``demo`` share."""
    parser.add_argument("--format", choices=("text", "jsonl"), default="text",
                        help="text lines, or one JSON object per event (default: text)")
    parser.add_argument("--idle-timeout", type=float, default=90.0, metavar="SECONDS",
                        help="seconds without any event (heartbeats count) before reconnecting (default: 90)")
    parser.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                        help="give up (exit 4) if the invocation has not finished after this many seconds (default: none)")
    parser.add_argument("--max-retries", type=int, default=10, metavar="N",
                        help="after a failed attempt, at most N more in a row (default: 10)")
    parser.add_argument("--state-file", metavar="PATH",
                        help="resume from and save progress to PATH, so repeated runs print each line once")
    parser.add_argument("-p", dest="plugins", action="append", default=[], metavar="PLUGIN",
                        help="load a plugin (module name or .py path); -p no:NAME blocks one; repeatable")
    parser.add_argument("--strict-plugins", action="store_true",
                        help="stop at the first plugin error (exit 5) instead of reporting it and going on")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the outcome")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="connection diagnostics on stderr, and tracebacks for errors")


def _build_parser() -> Tuple[argparse.ArgumentParser, List[argparse.ArgumentParser]]:
    """The command-line parser, and the subparsers plugins may extend."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="kernel-sse",
        description="Follow a Kernel invocation's live event stream.",
        epilog="exit status: 0 succeeded, 1 failed, 2 usage, 3 refused by the API, 4 gave up, "
        "5 plugin error, 70 internal error (a bug), 75 state file locked, 130/143 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"kernel-sse {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    follow_parser = commands.add_parser("follow", help="follow an invocation until it finishes")
    follow_parser.add_argument("invocation_id", metavar="INVOCATION_ID")
    follow_parser.add_argument("--base-url", default=None,
                               help=f"API base URL (default: $KERNEL_BASE_URL or {DEFAULT_BASE_URL})")
    follow_parser.add_argument("--api-key-file", metavar="PATH",
                               help="read the API key from PATH (default: $KERNEL_API_KEY)")
    follow_parser.add_argument("--since", default=None,
                               help="start at this RFC 3339 time or this long ago (e.g. 5m, 1h30m)")
    _add_follow_options(follow_parser)
    demo_parser = commands.add_parser("demo", help="follow a demo invocation on a local emulator (offline)")
    demo_parser.add_argument("--speed", type=float, default=1.0, help="run the ~10 s demo this many times faster")
    _add_follow_options(demo_parser)
    plugins_parser = commands.add_parser("plugins", help="list the loaded plugins")
    plugins_parser.add_argument("--json", action="store_true", help="as a JSON list")
    plugins_parser.add_argument("-p", dest="plugins", action="append", default=[], metavar="PLUGIN",
                                help="also load this plugin; -p no:NAME blocks one")
    return parser, [follow_parser, demo_parser]


def _requested_plugins(argv: Sequence[str]) -> List[str]:
    """The -p values of a command line, before it can be fully parsed."""
    found = []
    for index, arg in enumerate(argv):
        if arg == "-p" and index + 1 < len(argv):
            found.append(argv[index + 1])
        elif arg.startswith("-p") and len(arg) > 2 and not arg.startswith("--"):
            found.append(arg[2:])
    return found


def _load_plugins(argv: Sequence[str]) -> Optional[PluginSet]:
    """Load every plugin the run asks for; None when pluggy is missing and none is needed."""
    requested = _requested_plugins(argv)
    from_env = [name.strip() for name in os.environ.get("KERNEL_SSE_PLUGINS", "").split(",") if name.strip()]
    try:
        plugins = PluginSet()
    except PluginError:
        if [spec for spec in requested + from_env if not spec.startswith("no:")]:
            raise
        return None
    for spec in requested + from_env:
        if spec.startswith("no:"):
            plugins.block(spec[3:])
    plugins.load_bundled()
    if not os.environ.get("KERNEL_SSE_DISABLE_PLUGIN_AUTOLOAD"):
        plugins.load_entry_points()
    for spec in from_env:
        if not spec.startswith("no:"):
            plugins.load(spec, "env")
    for spec in requested:
        if not spec.startswith("no:"):
            plugins.load(spec, "-p")
    return plugins


def _hooks_for(plugins: Optional[PluginSet], args: argparse.Namespace) -> Hooks:
    """The hooks of this run: the plugins', or the built-in output alone."""
    strict = bool(getattr(args, "strict_plugins", False))
    trace = os.environ.get("KERNEL_SSE_TRACE", "") not in ("", "0")
    if plugins is None:
        builtin = _BuiltinOutput(args.format, args.quiet)
        return Hooks(_impls_of(builtin, "builtin"), strict=strict, trace=trace)
    names = plugins.names()
    # A lone kernel_sse.py has no bundled output plugins: print by itself,
    # under the name of the plugin it stands in for (so -p no:NAME works).
    stand_in = "jsonl" if args.format == "jsonl" else "console"
    if "console" not in names and "jsonl" not in names and stand_in not in _blocked(args):
        plugins.register(_marked(_BuiltinOutput(args.format, args.quiet)), stand_in, "builtin", __version__)
    return plugins.hooks(strict=strict, trace=trace)


def _blocked(args: argparse.Namespace) -> List[str]:
    """Plugin names blocked with -p no:NAME or KERNEL_SSE_PLUGINS."""
    specs = list(getattr(args, "plugins", [])) + os.environ.get("KERNEL_SSE_PLUGINS", "").split(",")
    return [spec.strip()[3:] for spec in specs if spec.strip().startswith("no:")]


def _marked(output: _BuiltinOutput) -> _BuiltinOutput:
    """Mark the built-in output's methods as hook implementations for pluggy."""
    marker = _import_pluggy().HookimplMarker("kernel_sse")
    for hook in HOOK_NAMES:
        function = getattr(type(output), hook, None)
        if function is not None and not hasattr(function, "kernel_sse_impl"):
            marker(function)
    return output


def _read_api_key(args: argparse.Namespace) -> str:
    """The API key from --api-key-file or KERNEL_API_KEY."""
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as handle:
                key = handle.read().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the API key file {args.api_key_file!r}: {exc.strerror}") from None
        if not key:
            raise UsageError(f"the API key file {args.api_key_file!r} is empty")
        return key
    key = os.environ.get("KERNEL_API_KEY", "").strip()
    if not key:
        raise UsageError("no API key: set KERNEL_API_KEY (or pass --api-key-file PATH)")
    return key


def _check_since(value: Optional[str]) -> None:
    """Refuse a --since the API would reject, before any request."""
    if value is None:
        return
    if _DURATION.match(value):
        return
    try:
        parse_timestamp(value)
    except ValueError:
        raise UsageError(
            f"--since {value!r} is neither an RFC 3339 time (2025-06-20T12:00:00Z) nor a duration (5m, 1h30m)"
        ) from None


class _StateFile:
    """The ``--state-file``: a locked, atomically written JSON checkpoint."""

    def __init__(self, path: str, invocation_id: str) -> None:
        self.path = path
        self.invocation_id = invocation_id
        self._lock_handle: Optional[Any] = None
        self.finished_status: Optional[str] = None

    def lock(self) -> None:
        """Take the exclusive lock, or raise _Locked."""
        import fcntl

        try:
            handle = open(self.path + ".lock", "a+")
        except OSError as exc:
            raise UsageError(f"cannot use the state file {self.path!r}: {exc.strerror}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise _Locked(f"another run holds the lock on {self.path!r}; try again later") from None
        self._lock_handle = handle

    def unlock(self) -> None:
        """Release the lock."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def load(self) -> Optional[Checkpoint]:
        """The saved checkpoint, None for a new file; UsageError if corrupt or foreign."""
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UsageError(f"cannot read the state file {self.path!r}: {exc.strerror}") from None
        try:
            obj = json.loads(data.decode("utf-8"))
            if not isinstance(obj, dict) or obj.get("kind") != _STATE_KIND:
                raise ValueError("not a kernel-sse state file")
            if obj.get("invocation_id") != self.invocation_id:
                raise UsageError(
                    f"the state file {self.path!r} belongs to invocation {obj.get('invocation_id')!r}, "
                    f"not {self.invocation_id!r}: use another --state-file"
                )
            finished = obj.get("finished_status")
            if finished is not None and finished not in TERMINAL_STATUSES:
                raise ValueError("bad finished_status")
            self.finished_status = finished
            return Checkpoint.from_json(obj.get("checkpoint"))
        except (ValueError, RecursionError) as exc:
            raise UsageError(
                f"the state file {self.path!r} is corrupt or not kernel-sse's ({exc}); "
                "move it away to start over"
            ) from None

    def save(self, checkpoint: Checkpoint, finished_status: Optional[str]) -> None:
        """Write atomically: temp file, fsync, rename; mode 0600."""
        import contextlib
        import tempfile

        obj = {
            "kind": _STATE_KIND,
            "version": 1,
            "invocation_id": self.invocation_id,
            "checkpoint": checkpoint.to_json(),
            "finished_status": finished_status,
        }
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, temp = tempfile.mkstemp(prefix=".kernel-sse-", dir=directory)
        except OSError as exc:
            raise UsageError(f"cannot write the state file {self.path!r}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(obj, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise UsageError(f"cannot write the state file {self.path!r}: {exc.strerror}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


class _Locked(KernelSSEError):
    """Internal: the state file is locked by another run (exit 75)."""


def _exit_for_status(status: str) -> int:
    return EXIT_SUCCEEDED if status == "succeeded" else EXIT_FAILED


def _run_follow(args: argparse.Namespace, hooks: Hooks, api_key: str, base_url: Optional[str]) -> int:
    """Follow one invocation through the hooks; return the exit status."""
    state = _StateFile(args.state_file, args.invocation_id) if args.state_file else None
    if state is not None:
        state.lock()
    try:
        checkpoint = state.load() if state is not None else None
        if state is not None and state.finished_status is not None:
            return _exit_for_status(state.finished_status)  # delivered in an earlier run
        follower = Follower(
            args.invocation_id,
            api_key=api_key,
            base_url=base_url,
            since=getattr(args, "since", None),
            checkpoint=checkpoint,
            idle_timeout=args.idle_timeout,
            deadline=args.deadline,
            max_retries=args.max_retries,
        )
        return _drive(follower, args, hooks, state)
    finally:
        if state is not None:
            state.unlock()


def _drive(follower: Follower, args: argparse.Namespace, hooks: Hooks, state: Optional[_StateFile]) -> int:
    """Run the follow, call the hooks, save state, and decide the exit status."""
    context = FollowContext(follower, vars(args))

    def on_retry(attempt: int, delay: float, reason: str) -> None:
        hooks.on_reconnect(attempt, delay, reason, context)  # first: the console clears its status line
        if args.verbose:
            print(f"kernel-sse: {reason}; attempt {attempt} in {delay:.2f}s", file=sys.stderr)

    follower.on_retry = on_retry
    saved_at = time.monotonic()
    outcome: Outcome
    try:
        hooks.on_start(context)
        for event in follower:
            hooks.on_event(event, context)
            if state is not None and time.monotonic() - saved_at >= _SAVE_EVERY:
                state.save(follower.checkpoint, None)
                saved_at = time.monotonic()
        invocation = follower.invocation
        assert invocation is not None and invocation.is_terminal
        if state is not None:
            state.save(follower.checkpoint, invocation.status)
        hooks.on_terminal(invocation, context)
        outcome = Outcome(invocation.status, _exit_for_status(invocation.status), invocation)
    except APIStatusError as exc:
        outcome = Outcome("refused", EXIT_REFUSED, follower.invocation, str(exc))
    except DeadlineExceeded as exc:
        outcome = Outcome("deadline", EXIT_GAVE_UP, follower.invocation, str(exc))
    except (ConnectionFailed, StreamTimeout) as exc:
        outcome = Outcome("gave_up", EXIT_GAVE_UP, follower.invocation, str(exc))
    except PluginFailed as exc:
        outcome = Outcome("plugin_error", EXIT_PLUGIN_ERROR, follower.invocation, str(exc))
    except UsageError as exc:  # the state file could not be written
        outcome = Outcome("usage_error", EXIT_USAGE, follower.invocation, str(exc))
    except BrokenPipeError:
        # Like `yes | head`: stop quietly, and keep Python from complaining
        # about the closed pipe again at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        outcome = Outcome("interrupted", EXIT_SIGPIPE, follower.invocation, None)
    except _Signalled:
        outcome = Outcome("interrupted", EXIT_SIGTERM, follower.invocation, "terminated (SIGTERM)")
    except KeyboardInterrupt:
        outcome = Outcome("interrupted", EXIT_SIGINT, follower.invocation, "interrupted (SIGINT)")
    finally:
        follower.close()
    if state is not None and outcome.status not in TERMINAL_STATUSES and outcome.status != "usage_error":
        try:
            state.save(follower.checkpoint, None)
        except UsageError as exc:
            outcome = Outcome("usage_error", EXIT_USAGE, follower.invocation, str(exc))
    if outcome.message is not None:
        print(f"kernel-sse: {outcome.message}", file=sys.stderr)
    try:
        hooks.on_finish(outcome, context)
    except PluginFailed as exc:
        print(f"kernel-sse: {exc}", file=sys.stderr)
        return EXIT_PLUGIN_ERROR
    if outcome.exit_code == EXIT_SUCCEEDED and hooks.failures:
        return EXIT_PLUGIN_ERROR
    return outcome.exit_code


def _list_plugins(plugins: Optional[PluginSet], as_json: bool) -> int:
    """``kernel-sse plugins``: one line (or JSON object) per plugin."""
    infos = plugins.info() if plugins is not None else []
    if as_json:
        print(json.dumps([info.to_json() for info in infos], indent=2))
    elif plugins is None:
        print("no plugins (pluggy is not installed: the built-in text and jsonl output is used)")
    elif not infos:
        print("no plugins loaded")
    for info in infos if not as_json else ():
        print(f"{info.name} {info.version} ({info.source}): {', '.join(info.hooks) or 'no hooks'}")
    return EXIT_SUCCEEDED


def _run_demo(args: argparse.Namespace, hooks: Hooks) -> int:
    """``kernel-sse demo``: follow the emulator's demo invocation, offline."""
    try:
        import kernel_sse_emulator as emulator_module
    except ImportError:
        raise UsageError("the demo needs kernel_sse_emulator.py next to kernel_sse.py (pip install kernel-sse)") from None
    api_key = os.urandom(16).hex()  # a throwaway key: the emulator is local
    script = emulator_module.demo_script(speed=args.speed)
    with emulator_module.running_emulator(
        script, api_key=api_key, heartbeat_interval=emulator_module.DEFAULT_HEARTBEAT_INTERVAL / args.speed
    ) as emulator:
        args.invocation_id = script.id
        return _run_follow(args, hooks, api_key, emulator.url)


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Signalled()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``kernel-sse`` command line; return its exit status."""
    import signal
    import traceback

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(arg == "--verbose" or re.fullmatch(r"-[qv]*v[qv]*", arg) for arg in argv)  # -v, -qv
    # From the start: a SIGTERM while plugins load is exit 143 too, not death by the signal.
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        plugins = _load_plugins(argv)
        parser, extensible = _build_parser()
        if plugins is not None:
            for subparser in extensible:
                plugins.hooks(strict=True).add_arguments(subparser)
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return EXIT_SUCCEEDED if exc.code == 0 else EXIT_USAGE
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.command == "plugins":
            return _list_plugins(plugins, args.json)
        if args.max_retries < 0 or args.idle_timeout <= 0 or (args.deadline is not None and args.deadline <= 0):
            raise UsageError("--max-retries must be >= 0, --idle-timeout and --deadline > 0")
        hooks = _hooks_for(plugins, args)
        if args.command == "demo":
            return _run_demo(args, hooks)
        _check_since(args.since)
        return _run_follow(args, hooks, _read_api_key(args), args.base_url)
    except _Locked as exc:
        print(f"kernel-sse: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (UsageError, ConfigurationError, PluginError, PluginFailed) as exc:
        if verbose:
            traceback.print_exc()
        print(f"kernel-sse: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _Signalled:
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except Exception:  # a bug: say so, and never pass for "the invocation failed" (1)
        traceback.print_exc()
        print(f"kernel-sse {__version__}: internal error; please report it with the traceback above",
              file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    # Plugins ``import kernel_sse``: give them this very module, not a second
    # copy whose classes would not match the events this one makes.
    sys.modules.setdefault("kernel_sse", sys.modules[__name__])
    sys.exit(main())
