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
import collections
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
    ContextManager,
    Deque,
    Iterator,
    NoReturn,
    Dict,
    List,
    Mapping,
    Match,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
)

if TYPE_CHECKING:  # pragma: no cover - names for annotations only
    import argparse
    from typing import Coroutine
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
    "describe_error",
    "PYTHON_TERMS",
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
    # HTTP/1.1 response reader
    "HTTPProtocolError",
    "ResponseHead",
    "BodyData",
    "EndOfMessage",
    "HTTPEvent",
    "HTTPResponseReader",
    # follow state and loop
    "DEFAULT_BASE_URL",
    "REORDER_WINDOW",
    "FollowState",
    "Checkpoint",
    "Follower",
    "follow",
    "AsyncFollower",
    "afollow",
    # invocation endpoints
    "InvokeUncertain",
    "InvocationsPage",
    "invoke",
    "get_invocation",
    "list_invocations",
    "cancel_invocation",
    # output
    "format_time",
    "visible",
    "json_line",
    "tagged_text",
    "tagged_json",
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
    "run_follow",
    # hookimpl and hookspec are public too, but left out of __all__ so that
    # ``from kernel_sse import *`` never needs pluggy.
    # command line
    "main",
]


# ======================================================================
# Errors
# ======================================================================


class KernelSSEError(Exception):
    """Root of every error kernel-sse raises on purpose; catch this one.

    The message says what happened; ``fix`` says what to do next.  Either
    may name a setting as ``{name}`` (``{max_retries}``, ``{deadline}``...):
    ``str(exc)`` shows the Python parameter, the command line shows its flag
    (:func:`describe_error`).  Known secrets never appear in either.
    """

    fix = ""

    def __init__(self, message: str = "", fix: Optional[str] = None) -> None:
        super().__init__(message)
        if fix is not None:
            self.fix = fix

    def __str__(self) -> str:
        return describe_error(self, PYTHON_TERMS)


PYTHON_TERMS: Dict[str, str] = {
    "api_key": "api_key (or the KERNEL_API_KEY environment variable)",
    "base_url": "base_url",
    "allow_insecure_http": "allow_insecure_http=True",
    "checkpoint": "checkpoint (Follower.checkpoint)",
    "deadline": "deadline",
    "idle_timeout": "idle_timeout",
    "max_retries": "max_retries",
    "max_event_bytes": "max_event_bytes",
    "since": "since",
    "backoff_base": "backoff_base",
    "backoff_cap": "backoff_cap",
    "reorder_window": "reorder_window",
    "retry_after_cap": "retry_after_cap",
    "payload": "payload (or payload_json)",
    "timeout": "timeout",
    "version": "version",
}
"""How an error names each setting in the Python API (see :class:`KernelSSEError`)."""

_SECRETS: Set[str] = set()  # every secret this process holds (API key, proxy password): redacted from all messages


def _register_secret(value: str) -> None:
    """Remember a secret so that no message ever shows it."""
    if len(value) >= 4:
        _SECRETS.add(value)


def _redact(text: str) -> str:
    """``text`` with every known secret replaced by ``***``."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def describe_error(error: BaseException, terms: Mapping[str, str]) -> str:
    """An error's message and fix on one line, naming settings in ``terms``
    (setting name -> how the interface in use spells it), secrets redacted."""
    message = Exception.__str__(error)
    fix = getattr(error, "fix", "")
    text = f"{message}; {fix}" if message and fix else message or fix
    rendered = re.sub(r"\{([a-z_]+)\}", lambda match: terms.get(match.group(1), match.group(0)), text)
    return _redact(rendered)


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
            f"an event exceeded the {limit}-byte limit and was skipped",
            fix="raise {max_event_bytes} if such events are expected",
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
            f"malformed event ({reason}); the raw data is kept on the exception's .data",
            fix="report it if the server sent it",
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

    fix = "check the request"

    def __init__(self, status: int, code: str, message: str, fix: Optional[str] = None) -> None:
        super().__init__(f"the API answered {status} ({code}: {message})", fix)
        self.status = status
        self.code = code
        self.message = message


class BadRequestError(APIStatusError):
    """400: the API rejected the request, e.g. an unparsable ``since``."""

    fix = "check {since} and the invocation id"


class AuthenticationError(APIStatusError):
    """401: the API key was missing or refused."""

    fix = "the API key was refused: check {api_key}"


class PermissionDeniedError(APIStatusError):
    """403: the key may not read this invocation."""

    fix = "the key may not read this invocation: check its project (KERNEL_PROJECT_ID) and scope"


class NotFoundError(APIStatusError):
    """404: there is no such invocation (for this key and project)."""

    fix = "no such invocation: check the id, the project and {base_url}"


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
            f"plugin '{plugin}' failed in {hook}: {_describe(error)}", fix=f"fix or block it (-p no:{plugin})"
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
        # The stream is split as bytes (every framing character is ASCII),
        # and a block (the lines up to a blank line) is parsed once, when
        # its blank line arrives; until then its bytes are held as they
        # came: ``_held`` is what followed the last blank line in the chunk
        # that had it, ``_more`` the chunks since, none of which had a blank
        # line (usually none: most chunks end a block).
        self._held = b""
        self._more: List[bytes] = []
        self._room = 0  # while ``_more`` holds chunks: how much more may come
        # Set while a chunk needs work before the plain path can take it:
        # a BOM may still come, a CR ended the last chunk, or an oversized
        # event is being skipped.  A chunk with a CR in it also takes that
        # work.  Clear, ``feed`` touches none of these.
        self._prepare_next = True
        self._at_start = True
        self._bom_pending = b""  # first bytes, until we know if they are a BOM
        self._last_was_cr = False
        self._discarding = False  # skipping an oversized event to its blank line
        self._skipped_lf = False  # ... and the last byte skipped was a line end

    def feed(self, data: bytes) -> List[ServerSentEvent]:
        """Parse ``data`` and return the events it completes, in order.

        Raises :class:`EventTooLarge` (with the completed events on it) when
        an event outgrows ``max_event_bytes``.
        """
        if self._prepare_next or _CR in data:
            data = self._prepare(data)  # now LF-only, BOM and skipped bytes gone
        end = data.rfind(b"\n")
        if end > 0 and data[end - 1] == _LF:
            end -= 1  # the usual chunk: its last LF ends a blank line
        else:
            lines_end = end >= 0
            end = data.rfind(b"\n\n", 0, end) if end > 0 else -1
            # A blank line at data[0] needs the held bytes to end with a
            # line end (if none are held, the LF is an empty first line).
            if end < 0 and (data[:1] != b"\n" or (self._more or [self._held])[-1][-1:] != b"\n"):
                # No blank line: the held block goes on.  Every chunk of a
                # long line, and a small chunk of a big event.
                if not data:  # held pieces are never empty
                    return []
                more = self._more
                if not more:
                    self._room = self.max_event_bytes - len(self._held)
                more.append(data)
                self._room -= len(data)
                if self._room < 0:
                    self._overflow()
                    raise EventTooLarge(self.max_event_bytes, [], [0])
                if lines_end:
                    self._held_lines_done(more)
                return []
        # One or more blocks end here.
        more = self._more
        if more:
            text = b"".join([self._held, *more, data])
            self._more = []
        else:
            text = self._held + data
        # Where the last blank line's "\n\n" starts in ``text``; end == -1
        # (a blank line at data[0]) counts the LF held before it.
        end += len(text) - len(data)
        self._held = held = text[end + 2:]
        if _LF in held and b"retry" in held:  # a complete retry line held?
            self._apply_retry(held[:held.rfind(b"\n") + 1])
        if len(text) >= self.max_event_bytes:
            return self._dispatch_checked(text, end)
        # No block in ``text`` can be over the limit: no checks.  The
        # completed blocks are decoded at once: they start and end at line
        # ends, which are ASCII, and the decoder never takes an ASCII byte
        # into a broken sequence, so this is what decoding each value alone
        # gives.
        events: List[ServerSentEvent] = []
        if text[:6] != b"data: ":  # blocks with other fields first: per line
            self._parse_lines(text[:end].decode("utf-8", "replace").split("\n"), events)
            return events
        # Each piece is a block whose leading "data: " the split cut off
        # (the first one's, the slice), maybe followed by more blocks.
        pieces = text[6:end].decode("utf-8", "replace").split("\n\ndata: ")
        id_buffer = self.last_event_id  # only _parse_lines changes it
        append = events.append
        for piece in pieces:
            if "\n" in piece:  # more lines than the data line
                lines = piece.split("\n")
                data_value = lines[0]
                del lines[0]
                self._parse_lines(lines, events, data_value)
                id_buffer = self.last_event_id
            else:
                # The hot path of the module (all the Kernel API sends).  A
                # piece without LF is a whole block: a blank line and "data: "
                # before it, a blank line after it (the next "\n\ndata: " or
                # the end of the region).  So it is one data line's value,
                # and its event has the default type and no retry.
                append(_new_event(ServerSentEvent, ("message", piece, id_buffer, None)))
        return events

    def _parse_lines(
        self, lines: List[str], events: List[ServerSentEvent], data: Optional[str] = None
    ) -> None:
        """Dispatch the blocks of ``lines``, complete blocks in stream order.

        An empty line ends a block, and so does the end of ``lines``.
        ``data`` is the value of a data line the first block has before
        ``lines``.
        """
        append = events.append
        id_buffer = self.last_event_id
        event_type = "message"
        block_retry: Optional[int] = None
        more: List[str] = []  # the data values after the block's first
        for line in lines:
            # The usual spellings first, without splitting the line.
            if line[:6] == "data: ":
                if data is None:
                    data = line[6:]
                else:
                    more.append(line[6:])
                continue
            if not line:  # a blank line: dispatch
                if data is not None:
                    if more:
                        data = "\n".join([data, *more])
                        more = []
                    append(_new_event(ServerSentEvent, (event_type, data, id_buffer, block_retry)))
                    data = None
                event_type = "message"
                block_retry = None
                continue
            if line[:4] == "id: ":
                if "\0" not in line:
                    id_buffer = line[4:]
                continue
            if line[:7] == "event: ":
                event_type = line[7:] or "message"
                continue
            name, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]  # one leading space is not part of the value
            if name == "data":
                if data is None:
                    data = value
                else:
                    more.append(value)
            elif name == "id":
                if "\0" not in value:
                    id_buffer = value
            elif name == "event":
                event_type = value or "message"
            elif name == "retry" and value.isascii() and value.isdigit():
                try:
                    block_retry = self.retry = int(value)
                except ValueError:
                    pass  # more digits than Python converts (4300): ignored
            # Anything else (a comment, an unknown field) is ignored.
        if data is not None:  # the end of the last block
            if more:
                data = "\n".join([data, *more])
            append(_new_event(ServerSentEvent, (event_type, data, id_buffer, block_retry)))
        self.last_event_id = id_buffer

    def _dispatch_checked(self, text: bytes, end: int) -> List[ServerSentEvent]:
        """``feed``'s dispatch when ``text`` may hold blocks over the limit.

        ``text[:end]`` holds the completed blocks.  Every block over the
        limit is skipped, and so is the new held block if it already is.
        """
        limit = self.max_event_bytes
        events: List[ServerSentEvent] = []
        positions: List[int] = []
        blocks = text[:end].split(b"\n\n")
        start = 0
        for index, block in enumerate(blocks):
            if len(block) >= limit:  # with its last line end, over
                self._parse_lines(_lines_of(blocks[start:index]), events)
                positions.append(len(events))
                start = index + 1
        self._parse_lines(_lines_of(blocks[start:]), events)
        if len(self._held) > limit:
            self._overflow()
            positions.append(len(events))
        if positions:
            raise EventTooLarge(limit, events, positions)
        return events

    def _held_lines_done(self, more: List[bytes]) -> None:
        """Put in force the ``retry`` fields of the held lines ``more[-1]`` ends.

        The first of them started after the last LF before ``more[-1]``.
        Each piece is joined here at most twice, so this stays linear.
        """
        index = len(more) - 2
        while index >= 0 and _LF not in more[index]:
            index -= 1
        first = more[index] if index >= 0 else self._held
        lines = b"".join([first, *more[index + 1:]])
        lines = lines[lines.rfind(b"\n", 0, len(first)) + 1:lines.rfind(b"\n") + 1]
        if b"retry" in lines:
            self._apply_retry(lines)

    def _apply_retry(self, lines: bytes) -> None:
        """Put the ``retry`` fields of a held block's complete ``lines`` in force.

        The standard applies a field when its line ends, but only ``retry``
        is visible before the block's blank line.  Parsing the lines as a
        block of their own does it; what else that parse produces (an event,
        the last event ID) is dropped.  The block's own parse, later, sets
        the same ``retry`` again: setting it twice changes nothing.
        """
        last_event_id = self.last_event_id
        self._parse_lines(_lines_of([lines]), [])
        self.last_event_id = last_event_id

    def _prepare(self, data: bytes) -> bytes:
        """Turn ``data`` into what the plain path of ``feed`` takes.

        Drops one UTF-8 BOM at stream start (even split across chunks) and
        the LF of a CRLF whose CR ended the previous chunk; makes every line
        end an LF; skips what is left of an oversized event.
        """
        if self._at_start:
            head = self._bom_pending + data
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._bom_pending = head
                return b""
            self._at_start = False
            self._bom_pending = b""
            data = head[len(_BOM):] if head.startswith(_BOM) else head
        elif self._last_was_cr and data:
            self._last_was_cr = False
            if data[0] == _LF:
                data = data[1:]
        if _CR in data:
            # A CR ending this chunk pairs with an LF starting the next one.
            self._last_was_cr = data[-1] == _CR
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._discarding and data:
            data = self._skip(data)
        self._prepare_next = self._last_was_cr or self._discarding
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

    def _overflow(self) -> None:
        """Drop the held block: it outgrew the limit."""
        self._discarding = self._prepare_next = True
        self._skipped_lf = (self._more or [self._held])[-1][-1:] == b"\n"
        self._held = b""
        self._more = []


def _lines_of(blocks: List[bytes]) -> List[str]:
    """The lines of complete ``blocks``, decoded, with an empty line between blocks."""
    return b"\n\n".join(blocks).decode("utf-8", "replace").split("\n")


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
        # Legal JSON, only deeper than this call stack allows: try once with room.
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + 20000)
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise MalformedEvent("JSON nested too deeply", data) from None
        finally:
            sys.setrecursionlimit(limit)


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
# HTTP/1.1 response reader (sans-I/O)
# ======================================================================

# What the asyncio driver reads a response with: bytes in, events out, no
# socket and no clock, in the manner of h11.  It reads one response (RFC 9112)
# and only what a client that never upgrades, never pipelines and never sends
# ``TE`` can meet.


class HTTPProtocolError(SSEProtocolError):
    """The HTTP/1.1 response broke the message rules, went past a reader
    limit, or the connection closed before the response was complete.

    The connection cannot be trusted after it: close it.
    """


@dataclass(frozen=True)
class ResponseHead:
    """The status line and header section of the final (non-1xx) response.

    ``headers`` holds every field in the order received: names as sent,
    values without their surrounding spaces and tabs, decoded as ISO-8859-1
    (as ``http.client`` does); obsolete line folding is already unfolded.
    ``http_version`` is the status line's version, e.g. ``"1.1"``.
    """

    status: int
    reason: str
    headers: Tuple[Tuple[str, str], ...]
    http_version: str = "1.1"

    def header(self, name: str) -> Optional[str]:
        """The value of the field ``name`` (in any case), or ``None``.

        Repeated fields are joined with ``", "``, as RFC 9110 allows for
        fields whose value is a list.  ``Set-Cookie`` is the known exception:
        read each of its values from ``headers``.
        """
        name = name.lower()
        values = [value for key, value in self.headers if key.lower() == name]
        return ", ".join(values) if values else None


@dataclass(frozen=True)
class BodyData:
    """Some bytes of the response body, as soon as they arrived.

    How the body is cut into ``BodyData`` events says nothing: it follows
    how the bytes were fed.  ``data`` is never empty.
    """

    data: bytes


@dataclass(frozen=True)
class EndOfMessage:
    """The response is complete; ``trailers`` are the fields of a chunked
    body's trailer section (decoded like ``ResponseHead.headers``)."""

    trailers: Tuple[Tuple[str, str], ...] = ()


HTTPEvent = Union[ResponseHead, BodyData, EndOfMessage]
"""Any event ``HTTPResponseReader`` returns."""

# Reader states.  The first five read a line at a time; the others take body
# bytes as they come (or, once done, nothing).
_STATUS, _HEADERS, _CHUNK_SIZE, _CHUNK_END, _TRAILERS = range(5)
_BODY_LENGTH, _BODY_CLOSE, _CHUNK_DATA, _DONE = range(5, 9)

_HTTP_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
_HTTP_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values and reason phrases: visible ASCII, spaces, tabs and obs-text;
# no control character (a bare CR, a NUL) and no DEL.
_HTTP_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_HTTP_HEX = re.compile(rb"[0-9A-Fa-f]+")
_HTTP_DIGITS = re.compile(r"[0-9]+")
# Enough for any length a body can have, few enough that converting the
# digits can never be slow or fail.
_HTTP_MAX_LENGTH_DIGITS = 18
_HTTP_MAX_CHUNK_SIZE_DIGITS = 16


def _http_excerpt(text: Union[bytes, str], limit: int = 40) -> str:
    """A short, printable excerpt of ``text`` for an error message."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


class HTTPResponseReader:
    """Incremental, I/O-free reader of one HTTP/1.x response.

    Feed it the bytes the connection delivers, split anywhere; it returns
    events: one :class:`ResponseHead`, then :class:`BodyData` as body bytes
    arrive (never held back to fill a buffer), then one
    :class:`EndOfMessage`, after which ``done`` is true.  When the peer
    closes the connection call :meth:`feed_eof`: it ends a body delimited by
    the close and raises if the response was incomplete.  A driver::

        reader = HTTPResponseReader()
        while not reader.done:
            data = await stream.read(65536)
            for event in reader.feed(data) if data else reader.feed_eof():
                handle(event)

    Framing follows RFC 9112 section 6.3: no body for a response to a
    ``HEAD`` request (``request_method``) or with status 204 or 304; else
    ``Transfer-Encoding: chunked`` (which wins over a ``Content-Length``
    sent with it, as the RFC says and ``http.client`` does); else
    ``Content-Length``; else the body runs until the connection closes.
    A transfer coding other than chunked, and ``Transfer-Encoding`` in an
    HTTP/1.0 response (faulty framing, RFC 9112 section 6.1), are errors.
    Interim 1xx responses (100 Continue, 103 Early Hints) are skipped; 101
    is an error, as this reader never asks to switch protocols.  LF alone
    ends lines as well as CRLF.

    Memory stays bounded: ``max_line`` caps one status, header, chunk-size
    or trailer line (its line end not counted); ``max_headers`` the fields of
    the header section, and again of the trailer section; ``max_header_bytes``
    the bytes before the body (interim responses included), and again the
    trailer section's.  Past a limit, or on any breach of the protocol,
    :class:`HTTPProtocolError` is raised (the events of that same call are
    lost with it); the reader then raises it again on every call.

    Bytes after the end of the response are not read: ``trailing_bytes``
    counts them (a driver closes the connection once ``done``).
    """

    def __init__(
        self,
        request_method: str = "GET",
        *,
        max_line: int = 16 * 1024,
        max_headers: int = 100,
        max_header_bytes: int = 64 * 1024,
    ) -> None:
        self.request_method = request_method
        self.max_line = max_line
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.head: Optional[ResponseHead] = None
        """The final response's head, once read."""
        self.trailing_bytes = 0
        """How many bytes arrived after the end of the response (unread)."""
        self._state = _STATUS
        self._buf = bytearray()  # the start of an unfinished line, nothing else
        self._remaining = 0  # bytes left of the Content-Length or of the chunk
        self._fields: List[List[str]] = []  # the header or trailer section so far
        self._section_bytes = 0
        self._status = 0
        self._reason = ""
        self._version = ""
        self._eof = False
        self._failure: Optional[str] = None

    @property
    def done(self) -> bool:
        """True once :class:`EndOfMessage` has been returned."""
        return self._state == _DONE

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> List[HTTPEvent]:
        """Read ``data`` (the next bytes received) and return the events
        they complete, in order.  A ``bytes`` object is sliced, never
        copied whole; another buffer is copied once.

        An empty ``data`` is not the end of input: call :meth:`feed_eof`.
        Raises :class:`HTTPProtocolError`.
        """
        if self._failure is not None:
            raise HTTPProtocolError(self._failure)
        events: List[HTTPEvent] = []
        if not data:
            return events
        if self._eof:
            raise RuntimeError("feed() after feed_eof(): the connection had already closed")
        if type(data) is not bytes:
            data = bytes(data)  # body slices must be bytes, and immutable
        self._parse(data, events)
        return events

    def feed_eof(self) -> List[HTTPEvent]:
        """Note that the peer closed the connection; return the last events.

        Ends a body that runs until the close (``[EndOfMessage()]``); returns
        ``[]`` when the response was already complete; raises
        :class:`HTTPProtocolError` when it was not.
        """
        if self._failure is not None:
            raise HTTPProtocolError(self._failure)
        self._eof = True
        events: List[HTTPEvent] = []
        state = self._state
        if state == _BODY_CLOSE:
            self._end(events, [])
        elif state == _STATUS and not self._buf:
            self._fail("the connection closed before the response's status line arrived")
        elif state <= _HEADERS:
            self._fail("the connection closed in the middle of the response head")
        elif state == _BODY_LENGTH:
            self._fail(f"the connection closed {self._remaining} bytes before the end of the body (Content-Length)")
        elif state != _DONE:
            self._fail("the connection closed in the middle of the chunked body")
        return events

    def _fail(self, message: str) -> NoReturn:
        self._failure = message
        raise HTTPProtocolError(message)

    def _parse(self, data: bytes, events: List[HTTPEvent]) -> None:
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _DONE:
                self.trailing_bytes += end - pos
                return
            if state == _BODY_CLOSE:
                events.append(BodyData(data[pos:]))  # data itself when pos is 0
                return
            if state >= _BODY_LENGTH:  # Content-Length or chunk data
                take = min(self._remaining, end - pos)
                events.append(BodyData(data[pos : pos + take]))
                pos += take
                self._remaining -= take
                if not self._remaining:
                    if state == _BODY_LENGTH:
                        self._end(events, [])
                    else:
                        self._state = _CHUNK_END
                continue
            # A line state.  Only the start of an unfinished line is ever
            # buffered, and the search for its end stops where the line would
            # be too long: a line without end costs no more than the limit.
            limit = 0 if state == _CHUNK_END else self.max_line
            buffered = len(self._buf)
            lf = data.find(b"\n", pos, pos + limit + 2 - buffered)  # room for a CR
            if lf < 0:
                if buffered + end - pos > limit + 1:
                    self._too_long()
                self._buf += data[pos:]
                return
            line = data[pos:lf]
            if buffered:
                line = bytes(self._buf) + line
                self._buf.clear()
            size = len(line) + 1
            if line[-1:] == b"\r":
                line = line[:-1]
            if len(line) > limit:
                self._too_long()
            pos = lf + 1
            self._line(line, size, events)

    def _too_long(self) -> NoReturn:
        what = {
            _STATUS: "the status line",
            _HEADERS: "a header line",
            _CHUNK_SIZE: "a chunk-size line",
            _TRAILERS: "a trailer line",
        }.get(self._state)
        if what is None:  # _CHUNK_END, whose line must be empty
            self._fail("a chunk's data is not followed by CRLF (the chunk is longer than its size says)")
        self._fail(f"{what} is longer than max_line ({self.max_line} bytes)")

    def _line(self, line: bytes, size: int, events: List[HTTPEvent]) -> None:
        """Act on one complete line (without its line end) of ``size`` bytes."""
        state = self._state
        if state == _CHUNK_END:  # the empty line after a chunk's data
            self._state = _CHUNK_SIZE
            return
        if state == _CHUNK_SIZE:
            self._chunk_size(line)
            return
        section = "trailer" if state == _TRAILERS else "header"
        self._section_bytes += size
        if self._section_bytes > self.max_header_bytes:
            what = "the trailer section" if state == _TRAILERS else "the response head"
            self._fail(f"{what} is larger than max_header_bytes ({self.max_header_bytes} bytes)")
        if state == _STATUS:
            self._status_line(line)
        elif line:
            self._field_line(line, section)
        elif state == _HEADERS:
            self._end_of_head(events)
        else:
            self._end(events, self._fields)

    def _status_line(self, line: bytes) -> None:
        match = _HTTP_STATUS_LINE.fullmatch(line)
        if match is None:
            self._fail(f"not an HTTP/1.x status line: {_http_excerpt(line)}")
        self._version = "1." + match.group(1).decode("ascii")
        self._status = int(match.group(2))
        self._reason = (match.group(3) or b"").decode("latin-1")
        self._fields = []
        self._state = _HEADERS

    def _field_line(self, line: bytes, section: str) -> None:
        if line[0] in b" \t":
            # Obsolete line folding: RFC 9112 section 5.2 has a user agent
            # replace it with a space, so the value goes on the last field.
            if not self._fields:
                self._fail(f"a folded line before the first {section} field: {_http_excerpt(line)}")
            last = self._fields[-1]
            last[1] = (last[1] + " " + self._field_value(line, line, section)).strip(" \t")
            return
        name, colon, value = line.partition(b":")
        if not colon or _HTTP_TOKEN.fullmatch(name) is None:
            self._fail(f"not a valid {section} field line: {_http_excerpt(line)}")
        if len(self._fields) >= self.max_headers:
            self._fail(f"more than max_headers ({self.max_headers}) {section} fields")
        self._fields.append([name.decode("ascii"), self._field_value(value, line, section)])

    def _field_value(self, value: bytes, line: bytes, section: str) -> str:
        value = value.strip(b" \t")
        if _HTTP_FIELD_VALUE.fullmatch(value) is None:
            self._fail(f"a control character in a {section} field value: {_http_excerpt(line)}")
        return value.decode("latin-1")

    def _end_of_head(self, events: List[HTTPEvent]) -> None:
        head = ResponseHead(self._status, self._reason, tuple((n, v) for n, v in self._fields), self._version)
        if head.status < 200:
            if head.status == 101:
                self._fail("the server switched protocols (101), which this reader never asks for")
            self._state = _STATUS  # an interim response: the final one follows
            return
        self.head = head
        events.append(head)
        self._fields = []  # from now on, the trailer section
        self._section_bytes = 0
        if self.request_method == "HEAD" or head.status in (204, 304):
            self._end(events, [])
            return
        coding = head.header("transfer-encoding")
        if coding is not None:
            # Only chunked: a client that sends no TE header cannot get
            # another coding, and a length would not survive one anyway.
            if head.http_version == "1.0":
                self._fail("an HTTP/1.0 response with Transfer-Encoding (its framing cannot be trusted)")
            codings = [c.strip(" \t").lower() for c in coding.split(",")]
            if [c for c in codings if c] != ["chunked"]:
                self._fail(f"unsupported Transfer-Encoding: {_http_excerpt(coding)} (only chunked is)")
            self._state = _CHUNK_SIZE
            return
        length_field = head.header("content-length")
        if length_field is None:
            self._state = _BODY_CLOSE
            return
        values = [value.strip(" \t") for value in length_field.split(",")]  # repeats were joined
        for value in values:
            if _HTTP_DIGITS.fullmatch(value) is None:
                self._fail(f"not a valid Content-Length: {_http_excerpt(length_field)}")
            if len(value) > _HTTP_MAX_LENGTH_DIGITS:
                self._fail(f"Content-Length too large: {_http_excerpt(value)}")
        if len({int(value) for value in values}) > 1:
            self._fail(f"conflicting Content-Length values: {_http_excerpt(length_field)}")
        self._remaining = int(values[0])
        if self._remaining:
            self._state = _BODY_LENGTH
        else:
            self._end(events, [])

    def _chunk_size(self, line: bytes) -> None:
        size = line.split(b";", 1)[0].rstrip(b" \t")  # extensions are ignored
        if _HTTP_HEX.fullmatch(size) is None:
            self._fail(f"not a valid chunk-size line: {_http_excerpt(line)}")
        if len(size) > _HTTP_MAX_CHUNK_SIZE_DIGITS:
            self._fail(f"chunk size too large: {_http_excerpt(size)}")
        self._remaining = int(size, 16)
        self._state = _CHUNK_DATA if self._remaining else _TRAILERS

    def _end(self, events: List[HTTPEvent], trailers: List[List[str]]) -> None:
        events.append(EndOfMessage(tuple((n, v) for n, v in trailers)))
        self._state = _DONE


# ======================================================================
# Follow state (sans-I/O): the rules of a follow, told what happened
# ======================================================================

DEFAULT_BASE_URL = "https://api.onkernel.com"
"""Where the Kernel API lives unless ``KERNEL_BASE_URL`` or ``base_url`` says otherwise."""

REORDER_WINDOW = 5.0
"""Seconds of timestamp disorder around the resume point that lose or repeat nothing."""

_WINDOW_LIMIT = 4096  # events remembered inside the reorder window (bounds the state file)
_STATUS_PROBE_AFTER = 10.0  # seconds on a connection without any invocation_state before asking GET /invocations/{id}
_STATUS_PROBE_EVERY = 60.0  # and again this often while the stream still carries none
_TOO_LARGE = "\x00client_event_too_large"  # stands for the data of an event too large to keep


def _fingerprint(data: str) -> str:
    """A short digest of an event's data: what the checkpoint remembers of it."""
    import hashlib

    return hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


_DIGEST = "\x00#"  # marks a window identity that is a fingerprint, not the data itself
_SHORT_DATA = 512


def _identity(data: str) -> str:
    """How the reorder window knows an event in memory: its data when short
    (no hashing on the hot path), else the marked fingerprint of it."""
    return data if len(data) <= _SHORT_DATA else _DIGEST + _fingerprint(data)


def _as_fingerprint(identity: str) -> str:
    """The fingerprint a checkpoint stores for a window identity."""
    return identity[len(_DIGEST):] if identity.startswith(_DIGEST) else _fingerprint(identity)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_Key = str
"""An ordering key for a timestamp: the instant in UTC as the API writes it,
``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``, so keys compare as strings; instants
outside years 1 to 9999 in UTC (``0001-01-01T00:00:00+01:00``) are clamped
to the ends of that range."""
_OLDEST: _Key = ""  # before any time: where untimed events sit before any timed one
_FIRST_KEY, _LAST_KEY = "0001-01-01T00:00:00.000000000Z", "9999-12-31T23:59:59.999999999Z"


def _time_key(timestamp: datetime, raw: str) -> _Key:
    """The ordering key of a timestamp (``raw`` as sent, ``timestamp`` parsed)."""
    if len(raw) == 30 and raw[29] == "Z" and raw[19] == "." and raw[10] == "T":
        return raw  # the API's own shape, already checked by the parser: the key as it is
    delta = timestamp - _EPOCH  # aware minus aware: a timedelta, never out of range
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    dot = raw.find(".")
    nanos = 0
    if dot >= 0:
        digits = raw[dot + 7:dot + 10]
        end = 0
        while end < len(digits) and "0" <= digits[end] <= "9":
            end += 1
        nanos = int(digits[:end].ljust(3, "0")) if end else 0
    return _key_of(micros, nanos)


def _key_of(micros: int, nanos: int = 0) -> _Key:
    """The key of an instant given as microseconds since the epoch (and nanoseconds)."""
    from datetime import timedelta

    try:
        moment = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return _FIRST_KEY if micros < 0 else _LAST_KEY
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06d%03dZ" % (
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second, moment.microsecond, nanos
    )


def _micros_of(key: _Key) -> int:
    """Microseconds since the epoch of a key (its nanoseconds aside)."""
    moment = datetime(int(key[0:4]), int(key[5:7]), int(key[8:10]), int(key[11:13]), int(key[14:16]),
                      int(key[17:19]), int(key[20:26]), tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _next_key(key: _Key) -> _Key:
    """The key one nanosecond after ``key``."""
    nanos = int(key[26:29]) + 1
    if nanos < 1000:
        return key[:26] + "%03d" % nanos + "Z"
    return _key_of(_micros_of(key) + 1, 0)


def _format_since(moment: datetime) -> str:
    """A UTC RFC 3339 time with microseconds, for ``since`` (four-digit years:
    strftime writes year 1 as "1" on some platforms)."""
    utc = moment.astimezone(timezone.utc)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (
        utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond
    )


@dataclass(frozen=True)
class Checkpoint:
    """Where a follow stands, so another one can resume without loss or repeats.

    ``since`` is the timestamp (as sent) of the newest log or error event
    delivered.  ``seen`` holds ``(timestamp, fingerprint)`` for each event
    delivered in the reorder window before it (repeats included, at most
    4096: about 300 KB of JSON at worst), so a replay can tell a late event
    it never delivered from a copy of one it did.  ``states`` fingerprints
    the invocation states delivered (a replayed one is not news);
    ``floor``, when set, is a time before which nothing is asked for again
    (the window overflowed).
    """

    since: Optional[str] = None
    seen: Tuple[Tuple[str, str], ...] = ()
    states: Tuple[str, ...] = ()
    floor: Optional[str] = None

    def to_json(self) -> JSONObject:
        """A JSON-ready form, for a state file."""
        return {
            "since": self.since,
            "seen": [list(item) for item in self.seen],
            "states": list(self.states),
            "floor": self.floor,
        }

    @classmethod
    def from_json(cls, obj: object) -> Checkpoint:
        """Rebuild a checkpoint from :meth:`to_json` (or the older form whose
        ``seen`` lists the data delivered at ``since``); ValueError if it is not one."""
        if not isinstance(obj, dict):
            raise ValueError("a checkpoint must be a JSON object")
        since, floor, states = obj.get("since"), obj.get("floor"), obj.get("states", [])
        if not isinstance(states, list) or not all(isinstance(item, str) for item in states):
            raise ValueError("checkpoint 'states' must be a list of strings")
        for name, value in (("since", since), ("floor", floor)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"checkpoint {name!r} must be a string or null")
        for value in (since, floor):
            if value is not None:
                parse_timestamp(value)
        items = obj.get("seen", [])
        if not isinstance(items, list):
            raise ValueError("checkpoint 'seen' must be a list")
        seen: List[Tuple[str, str]] = []
        for item in items:
            if isinstance(item, str):  # the older form: the data itself, delivered at ``since``
                seen.append((since or "", _fingerprint(item)))
            elif (isinstance(item, list) and len(item) == 2
                  and all(isinstance(part, str) for part in item)):
                seen.append((item[0], item[1]))
            else:
                raise ValueError("checkpoint 'seen' must hold [timestamp, fingerprint] pairs")
        return cls(since, tuple(seen), tuple(states), floor)


class _Ended(Exception):
    """Internal: one connection attempt ended without the terminal state."""

    def __init__(self, reason: str, retry_after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class FollowState:
    """The rules of one follow, with no I/O and no clock of its own.

    A driver (:class:`Follower` over ``http.client``, :class:`AsyncFollower`
    over asyncio) tells it what happened, always with the time ``now`` (a
    monotonic clock, in seconds), and does what it answers:

    - :meth:`start_attempt` before each request: the ``since`` to send (it
      raises :class:`DeadlineExceeded` once the deadline has passed);
    - :meth:`receive` with the bytes that arrived: the events to deliver, in
      order, each once;
    - :meth:`attempt_failed` when the attempt ended without the terminal
      state: the seconds to wait before the next one, or the error that ends
      the follow (retries exhausted, idle too often, deadline);
    - :meth:`status_probe_due` / :meth:`receive_status`: when the stream
      carries no state, the driver asks ``GET /invocations/{id}``, so a
      finished invocation is never waited on forever;
    - :attr:`wake_at`: the one time bound of whatever the driver waits on
      (idle limit or deadline, whichever is first); the driver must wake
      and call :meth:`check_time` then.

    Once-only delivery: a reconnect asks for ``since`` = the newest log or
    error timestamp delivered, less :data:`REORDER_WINDOW` seconds, and drops
    from the replay exactly the events it delivered before (by fingerprint,
    as many copies as were delivered), so an event stamped a little earlier
    than the newest one (application clocks, buffering), if never delivered,
    is delivered now; nothing is repeated.  Invocation states
    do not move the resume point (a server may stamp its snapshot with the
    time of the connect): one is delivered when its content differs from the
    last state delivered.  Oversized, malformed and unknown events follow
    the same once-only rule as every other event.
    """

    def __init__(
        self,
        *,
        now: float,
        since: Optional[str] = None,
        checkpoint: Optional[Checkpoint] = None,
        idle_timeout: float = 90.0,
        deadline: Optional[float] = None,
        max_retries: int = 10,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: Optional[float] = None,
        max_event_bytes: int = 16 * 1024 * 1024,
        reorder_window: float = REORDER_WINDOW,
        random: Optional[Callable[[], float]] = None,
    ) -> None:
        _check_number("idle_timeout", idle_timeout, minimum=0.0, inclusive=False)
        if deadline is not None:
            _check_number("deadline", deadline, minimum=0.0, inclusive=False)
        _check_number("backoff_base", backoff_base, minimum=0.0)
        _check_number("backoff_cap", backoff_cap, minimum=0.0)
        if retry_after_cap is not None:
            _check_number("retry_after_cap", retry_after_cap, minimum=0.0)
        _check_number("reorder_window", reorder_window, minimum=0.0)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be a whole number, 0 or more (got {max_retries!r})")
        import random as random_module

        self.idle_timeout = float(idle_timeout)
        self.deadline = deadline
        self.deadline_at = None if deadline is None else now + deadline
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_after_cap = backoff_cap if retry_after_cap is None else retry_after_cap
        self.max_event_bytes = max_event_bytes
        self.reorder_window = reorder_window
        self._window_micros = int(reorder_window * 1_000_000)
        self._starts: Dict[str, str] = {}  # the window's start for the second a key falls in
        self._random = random or random_module.random
        self.attempt = 0
        self.reconnects = 0
        self.invocation: Optional[Invocation] = None
        self.finished = False
        self._user_since = since
        self._failures = 0
        self._idle_failures = 0
        self._progressed = False
        self._idle_at = now + self.idle_timeout
        self._probe_at: Optional[float] = None
        self._state_on_connection = False
        self._probed_on_connection = False
        self._parser = SSEParser(max_event_bytes)
        # Resume state: the newest timed event delivered, the window of
        # recent deliveries, and the last state's content.
        self._latest: Optional[_Key] = None
        self._latest_raw: Optional[str] = None
        self._floor: Optional[_Key] = None
        self._floor_raw: Optional[str] = None
        self._window: Dict[str, int] = {}
        self._window_order: Deque[Tuple[_Key, str, str]] = collections.deque()  # (time, raw time, fingerprint)
        self._skip: Dict[str, int] = {}
        self._skip_before: Optional[_Key] = None
        self._states: List[str] = []
        self._restored = False  # the window holds fingerprints from a checkpoint
        self._undo: Optional[Tuple[str, str, Optional[_Key], Optional[str]]] = None
        if checkpoint is not None:
            self._restore(checkpoint)

    # -- what the driver asks ------------------------------------------

    @property
    def wake_at(self) -> float:
        """The monotonic time by which the driver must wake and call :meth:`check_time`."""
        if self.deadline_at is not None and self.deadline_at < self._idle_at:
            return self.deadline_at
        return self._idle_at

    def check_time(self, now: float) -> Optional[str]:
        """Raise :class:`DeadlineExceeded` if the deadline has passed; return
        why the attempt must end if the stream has been idle too long, else None."""
        if self.deadline_at is not None and now >= self.deadline_at:
            raise DeadlineExceeded(
                f"the deadline of {self.deadline:g}s passed before the invocation finished",
                fix="raise {deadline}, or resume later from the {checkpoint}",
            )
        if now >= self._idle_at:
            return f"no event for {self.idle_timeout:g}s"
        return None

    def start_attempt(self, now: float) -> Optional[str]:
        """A request is about to be sent: return its ``since`` (None for none)."""
        self.check_time(now)
        self.attempt += 1
        self._progressed = False
        self._state_on_connection = False
        self._probed_on_connection = False
        self._idle_at = now + self.idle_timeout
        self._probe_at = now + _STATUS_PROBE_AFTER
        self._parser = SSEParser(self.max_event_bytes)
        self._skip = dict(self._window)
        self._restored = any(identity.startswith(_DIGEST) for identity in self._skip)
        since = self._resume_since()
        # Within the window the fingerprints decide; an event from before
        # ``since`` (a server that ignores it) was delivered before, or is too
        # late to tell.
        self._skip_before = None
        if since is not None and self._latest is not None:
            with contextlib.suppress(ValueError):
                self._skip_before = _time_key(parse_timestamp(since), since)
        return since

    def receive(self, data: bytes, now: float) -> Iterator[KernelEvent]:
        """Bytes arrived on the stream: the events to deliver, in order, each once.

        Lazy on purpose: an event counts as delivered (and enters the
        checkpoint) only when the iterator hands it over, so a consumer that
        stops half-way through a chunk loses nothing it did not see.
        """
        try:
            sses: List[Optional[ServerSentEvent]] = list(self._parser.feed(data))
        except EventTooLarge as exc:
            sses = list(exc.events)
            for position in reversed(exc.positions):
                sses.insert(position, None)  # where the skipped event stood
        if sses:
            self._idle_at = now + self.idle_timeout
        return self._deliver(sses, now)

    def _deliver(self, sses: List[Optional[ServerSentEvent]], now: float) -> Iterator[KernelEvent]:
        for sse in sses:
            event = self._admit(sse, now)
            if event is not None:
                yield event
                if self.finished:
                    return

    def status_probe_due(self, now: float) -> bool:
        """True when the driver should ask for the invocation's status now."""
        return not self.finished and self._probe_at is not None and now >= self._probe_at

    def receive_status(
        self, invocation: Optional[Invocation], now: float, raw_invocation: Optional[JSONObject] = None
    ) -> List[KernelEvent]:
        """The answer of ``GET /invocations/{id}`` (None if it failed; its JSON
        object as ``raw_invocation``): a terminal status ends the follow with
        an ``invocation_state`` event built from it."""
        self._probe_at = now + _STATUS_PROBE_EVERY
        self._probed_on_connection = True
        if invocation is None or not invocation.is_terminal:
            return []
        stamp = invocation.finished_at or invocation.started_at
        raw_time = invocation.finished_at_raw or invocation.started_at_raw or _format_since(stamp)
        raw: JSONObject = {
            "event": "invocation_state",
            "timestamp": raw_time,
            "invocation": raw_invocation if raw_invocation is not None else {},
        }
        event = InvocationStateEvent(stamp, invocation, raw_time, raw)
        return [event] if self._admit_state(event) else []

    def attempt_failed(self, reason: str, now: float, retry_after: Optional[float] = None) -> float:
        """The attempt ended without the terminal state: return the seconds to
        wait before the next one, or raise the error that ends the follow."""
        idle = self.check_time(now) is not None
        if not self._state_on_connection and not self.finished:
            self._probe_at = now  # the stream said nothing of the invocation: ask
        self._failures = 0 if self._progressed else self._failures + 1
        self._idle_failures = self._idle_failures + 1 if idle else 0
        if self._failures > self.max_retries:
            if self._idle_failures >= self._failures:
                raise StreamTimeout(
                    f"no event for {self.idle_timeout:g}s, {self._idle_failures} times in a row, although "
                    "the server sends heartbeats: the connection is stalled",
                    fix="check proxies and the network, or raise {idle_timeout}",
                )
            raise ConnectionFailed(
                f"gave up after {self._failures} failed attempts in a row (last: {reason})",
                fix="check the network and {base_url}, or raise {max_retries}",
            )
        self.reconnects += 1
        if retry_after is not None:
            # A server may ask for any wait (even years): never more than the cap.
            delay = min(max(0.0, retry_after), self.retry_after_cap)
        else:
            ceiling = min(self.backoff_cap, self.backoff_base * (2 ** min(self._failures, 30)))
            delay = self._random() * ceiling
        return delay

    @property
    def failures(self) -> int:
        """Failed attempts in a row (reset by an attempt that delivers something)."""
        return self._failures

    @property
    def checkpoint(self) -> Checkpoint:
        """Where the follow stands: resume from here with nothing lost or repeated."""
        self._prune()
        seen = tuple((raw, _as_fingerprint(identity)) for _time, raw, identity in self._window_order)
        return Checkpoint(self._latest_raw, seen, tuple(self._states), self._floor_raw)

    # -- once-only delivery ----------------------------------------------

    def _admit(self, sse: Optional[ServerSentEvent], now: float) -> Optional[KernelEvent]:
        """Type one event; None when it is a copy of one already delivered."""
        if sse is None:
            if not self._admit_untimed(_TOO_LARGE):
                return None
            return _client_error(
                "client_event_too_large", f"an event larger than {self.max_event_bytes} bytes was skipped", ""
            )
        try:
            event = parse_event(sse)
        except MalformedEvent as exc:
            if not self._admit_untimed(sse.data):
                return None
            return _client_error("client_malformed_event", exc.reason, exc.data)
        kind = type(event)
        if kind is LogEvent or kind is ErrorEvent:  # nearly every event: tested first
            timed = cast(Union[LogEvent, ErrorEvent], event)
            return event if self._admit_timed(timed.timestamp, timed.timestamp_raw, sse.data) else None
        if isinstance(event, HeartbeatEvent):
            if not self._state_on_connection and not self._probed_on_connection:
                # The server is past its replay and has said nothing of the
                # invocation: perhaps it finished before ``since``.
                self._probe_at = now
            return event
        if isinstance(event, InvocationStateEvent):
            self._state_on_connection = True
            self._probe_at = None
            return event if self._admit_state(event) else None
        return event if self._admit_untimed(sse.data) else None

    def _admit_state(self, event: InvocationStateEvent) -> bool:
        """A state is news unless one with the same content was delivered
        (whatever its timestamp); a terminal one ends the follow either way."""
        if event.invocation.is_terminal:
            self.finished = True
        print_ = _fingerprint(json.dumps(event.raw.get("invocation"), sort_keys=True, default=str))
        if print_ in self._states:
            return False
        self.invocation = event.invocation
        self._states = (self._states + [print_])[-64:]  # an invocation has a handful of states
        self._undo = ("state", print_, self._latest, self._latest_raw)
        self._progressed = True
        return True

    def _admit_timed(self, timestamp: datetime, raw: str, data: str) -> bool:
        key = raw if len(raw) == 30 and raw[29] == "Z" and raw[19] == "." and raw[10] == "T" else _time_key(timestamp, raw)
        print_ = data if len(data) <= _SHORT_DATA else _DIGEST + _fingerprint(data)  # _identity, inlined
        if self._skip and self._is_copy(print_, key, data):
            return False
        if self._skip_before is not None and key < self._skip_before:
            # Older than what was asked for (a server that ignores ``since``):
            # delivered before, or too late to tell.
            return False
        self._remember(key, raw, print_)
        if self._latest is None or key > self._latest:
            self._latest, self._latest_raw = key, raw
        return True

    def _admit_untimed(self, data: str) -> bool:
        """Events with no usable timestamp count as delivered at the newest one."""
        print_ = _identity(data)
        if self._skip and self._is_copy(print_, None, data):
            return False
        key = self._latest or _OLDEST
        self._remember(key, self._latest_raw or "", print_)
        return True

    def _is_copy(self, identity: str, key: Optional[_Key], data: str) -> bool:
        """True (and counted) for a replayed copy of an event delivered before."""
        skip = self._skip
        left = skip.get(identity, 0)
        if not left and self._restored and not identity.startswith(_DIGEST):
            # Delivered by an earlier run: its checkpoint holds fingerprints only.
            identity = _DIGEST + _fingerprint(data)
            left = skip.get(identity, 0)
        if left:
            skip[identity] = left - 1
            if left == 1:
                del skip[identity]  # an empty skip list keeps the hot path free
            return True
        return False

    def undeliver_last(self) -> None:
        """The last event handed over did not reach its consumer (a hook was
        interrupted): forget it, so a resume from :attr:`checkpoint` delivers
        it again rather than lose it."""
        undo, self._undo = self._undo, None
        if undo is None:
            return
        kind, print_, latest, latest_raw = undo
        if kind == "state":
            if print_ in self._states:
                self._states.remove(print_)
            return
        self._forget(print_)
        for index in range(len(self._window_order) - 1, -1, -1):
            if self._window_order[index][2] == print_:
                del self._window_order[index]
                break
        self._latest, self._latest_raw = latest, latest_raw

    def _remember(self, key: _Key, raw: str, print_: str) -> None:
        latest = self._latest
        self._undo = ("event", print_, latest, self._latest_raw)
        self._progressed = True
        window = self._window
        window[print_] = window.get(print_, 0) + 1
        order = self._window_order
        order.append((key, raw, print_))
        if len(order) & 31:
            return  # look for what to forget every 32 deliveries: memory stays bounded, the hot path light
        if latest is None or key > latest:
            latest = key
        # Forget, oldest first, what fell out of the window: a follow's memory
        # stays flat however long it runs (a late entry behind a newer one waits).
        start = self._window_start(latest)
        while order and order[0][0] < start:
            forgotten = order.popleft()[2]
            count = window[forgotten]
            if count > 1:
                window[forgotten] = count - 1
            else:
                del window[forgotten]
        if len(order) > 2 * _WINDOW_LIMIT:  # a burst: cut to the limit now and then, not per event
            self._prune()

    def _forget(self, print_: str) -> None:
        count = self._window.get(print_, 0)
        if count > 1:
            self._window[print_] = count - 1
        else:
            self._window.pop(print_, None)

    def _prune(self) -> None:
        """Forget deliveries older than the window, and the oldest past the limit."""
        start = None if self._latest is None else self._window_start(self._latest)
        kept = [item for item in self._window_order if start is None or item[0] >= start]
        kept.sort(key=lambda item: item[0])
        if len(kept) > _WINDOW_LIMIT:
            dropped = kept[-_WINDOW_LIMIT - 1]
            # Nothing at or before the newest forgotten event is asked for again.
            floor = _next_key(dropped[0])
            if self._floor is None or floor > self._floor:
                self._floor, self._floor_raw = floor, floor
            kept = kept[-_WINDOW_LIMIT:]
        self._window_order = collections.deque(kept)
        window: Dict[str, int] = {}
        for _key, _raw, print_ in kept:
            window[print_] = window.get(print_, 0) + 1
        self._window = window

    def _resume_since(self) -> Optional[str]:
        """The ``since`` of the next request: the reorder window before the
        newest log or error delivered, so that a server filtering by
        timestamp sends again whatever arrived late (the fingerprints drop
        what was delivered), never earlier than the caller's ``since``."""
        if self._latest is None:
            return self._floor_raw or self._user_since
        start = self._window_start(self._latest)
        candidates = [(start, start)]
        if self._floor is not None and self._floor_raw is not None:
            candidates.append((self._floor, self._floor_raw))
        user = self._user_since_time()
        if user is not None and self._user_since is not None:
            candidates.append((user, self._user_since))
        return max(candidates, key=lambda item: item[0])[1]

    def _window_start(self, latest: _Key) -> _Key:
        """The key ``reorder_window`` seconds before ``latest`` (computed once per second of it)."""
        if latest == _OLDEST:
            return _OLDEST
        if self._window_micros % 1_000_000:
            return _key_of(_micros_of(latest) - self._window_micros, int(latest[26:29]))
        second = latest[:19]
        start = self._starts.get(second)
        if start is None:
            if len(self._starts) > 64:
                self._starts.clear()
            start = self._starts[second] = _key_of(_micros_of(second + ".000000000Z") - self._window_micros)[:19]
        return start + latest[19:]

    def _user_since_time(self) -> Optional[_Key]:
        """The caller's ``since``, when it is a time (a duration is the server's to read)."""
        if self._user_since is None:
            return None
        try:
            return _time_key(parse_timestamp(self._user_since), self._user_since)
        except ValueError:
            return None

    def _restore(self, checkpoint: Checkpoint) -> None:
        if checkpoint.since is not None:
            self._latest = _time_key(parse_timestamp(checkpoint.since), checkpoint.since)
            self._latest_raw = checkpoint.since
        if checkpoint.floor is not None:
            self._floor = _time_key(parse_timestamp(checkpoint.floor), checkpoint.floor)
            self._floor_raw = checkpoint.floor
        self._states = list(checkpoint.states)
        for raw, print_ in checkpoint.seen:
            try:
                key = _time_key(parse_timestamp(raw), raw)
            except ValueError:  # an untimed event delivered before any timed one
                key = _OLDEST
            identity = _DIGEST + print_
            self._window[identity] = self._window.get(identity, 0) + 1
            self._window_order.append((key, raw, identity))
            self._restored = True


def _timedelta(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _check_number(name: str, value: float, *, minimum: float, inclusive: bool = True) -> None:
    """Refuse a setting that is not a finite number in range (nan and inf included)."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ConfigurationError(f"{{{name}}} must be a finite number {bound} (got {value!r})")


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


# ======================================================================
# Follow loop: the blocking driver (http.client)
# ======================================================================

_PYTHON_VERSION = "%d.%d.%d" % sys.version_info[:3]
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_READ_SIZE = 65536
_CONNECT_TIMEOUT = 30.0
_ERROR_BODY_LIMIT = 65536
_URL_SAFE = "/%:@!$&'()*+,;=-._~?"  # what a request target may carry unquoted


_STATUS_ERRORS: Dict[int, Type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
}


class _Secret:
    """Holds the API key so no repr, log or traceback can show it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"


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
        raise ConfigurationError(f"the {name} contains control characters", fix="check where it came from")


def _check_header(name: str, value: str) -> None:
    """Refuse what an HTTP header cannot carry, before any request."""
    _check_text(name, value)
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"the {name} has characters an HTTP header cannot carry", fix="check where it came from"
        ) from None


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header, or None when it is
    absent or unreadable (any value a server sends is survivable)."""
    import email.utils

    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true too
        return float(value) if len(value) < 12 else 1e11
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _describe(exc: BaseException) -> str:
    """A one-line description of an error."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


class _Endpoint:
    """Where and how to reach the API: base URL, key, TLS, proxy, headers.

    Everything is checked here, once, before the first request.
    """

    def __init__(
        self,
        api_key: Optional[str],
        base_url: Optional[str],
        project_id: Optional[str],
        allow_insecure_http: bool,
        ssl_context: Optional[ssl.SSLContext],
    ) -> None:
        import urllib.parse

        key = api_key if api_key is not None else os.environ.get("KERNEL_API_KEY", "")
        if not key:
            raise ConfigurationError("no API key", fix="set {api_key}")
        _check_header("API key", key)
        self._key = _Secret(key)
        _register_secret(key)
        url_setting = "{base_url}" if base_url is not None else "KERNEL_BASE_URL"
        self.base_url = (base_url or os.environ.get("KERNEL_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        _check_text(f"base URL ({url_setting})", self.base_url)
        try:
            parts = urllib.parse.urlsplit(self.base_url)
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"the base URL {self.base_url!r} ({url_setting}) is not valid: {exc}") from None
        if parts.username is not None or parts.password is not None:
            if parts.password:
                _register_secret(parts.password)
            raise ConfigurationError(
                f"the base URL ({url_setting}) must not carry credentials", fix="give the key in {api_key}"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"the base URL {self.base_url!r} ({url_setting}) is not an http(s) URL",
                fix="use a URL such as https://api.onkernel.com",
            )
        if parts.scheme == "http" and not _is_loopback(parts.hostname) and not allow_insecure_http:
            raise ConfigurationError(
                f"refusing to send the API key over plain HTTP to {parts.hostname}",
                fix="use https, or allow it explicitly with {allow_insecure_http}",
            )
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.path_prefix = parts.path.rstrip("/")
        self.project_id = project_id if project_id is not None else os.environ.get("KERNEL_PROJECT_ID")
        if self.project_id:
            _check_header("project id", self.project_id)
        self.ssl_context = ssl_context
        self.proxy = _proxy_for(self.host) if self.scheme == "https" else None

    def headers(self, accept: str) -> Dict[str, str]:
        """The request headers (the only place the key is used)."""
        headers = {
            "Authorization": f"Bearer {self._key.value}",
            "Accept": accept,
            "User-Agent": f"kernel-sse/{__version__} Python/{_PYTHON_VERSION}",
        }
        if accept == "text/event-stream":
            headers["Cache-Control"] = "no-cache"
        if self.project_id:
            headers["X-Kernel-Project-Id"] = self.project_id
        return headers

    def connection(self, origin: Tuple[str, str, int], timeout: float) -> http.client.HTTPConnection:
        """A new connection to ``origin`` (scheme, host, port), through the HTTPS proxy if set."""
        import http.client
        import ssl

        scheme, host, port = origin
        if scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=timeout)
        context = self.ssl_context or ssl.create_default_context()
        if self.proxy is None:
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        proxy_host, proxy_port, authorization = self.proxy
        connection = http.client.HTTPSConnection(proxy_host, proxy_port, timeout=timeout, context=context)
        connection.set_tunnel(host, port, headers={"Proxy-Authorization": authorization} if authorization else {})
        return connection

    def redirect(self, origin: Tuple[str, str, int], target: str, location: str, status: int) -> str:
        """The request target a same-origin redirect points to; _Ended or an
        error for a redirect that cannot be followed."""
        import urllib.parse

        scheme, host, port = origin
        try:
            parts = urllib.parse.urlsplit(urllib.parse.urljoin(f"{scheme}://{host}:{port}{target}", location))
            to_port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise _Ended(f"the server redirected to an invalid address {location[:200]!r}") from None
        if (parts.scheme, parts.hostname, to_port) != origin:
            raise APIStatusError(
                status,
                "redirect_refused",
                f"redirect to another origin ({parts.scheme}://{parts.hostname}:{to_port}) refused "
                f"so the API key stays with {host}",
                fix="set {base_url} to the new address if it is trusted",
            )
        path = parts.path or "/"
        return urllib.parse.quote(path + ("?" + parts.query if parts.query else ""), safe=_URL_SAFE)


def _proxy_for(host: str) -> Optional[Tuple[str, int, Optional[str]]]:
    """The HTTPS proxy the environment names for ``host``: (host, port,
    Proxy-Authorization value), checked; None for none."""
    import base64
    import urllib.parse
    import urllib.request

    # Public in CPython since 3.0 but missing from typeshed's stubs.
    bypass = cast(Callable[[str, Dict[str, str]], bool], getattr(urllib.request, "proxy_bypass_environment"))
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get("https")
    if not proxy or bypass(host, proxies):
        return None
    try:
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        port = parts.port or 8080
    except ValueError as exc:
        raise ConfigurationError(f"the HTTPS_PROXY setting is not a valid URL ({exc})",
                                 fix="fix HTTPS_PROXY (http://host:port) or unset it") from None
    if parts.password:
        _register_secret(parts.password)
        _register_secret(urllib.parse.unquote(parts.password))
    if not parts.hostname or parts.scheme not in ("http", "https"):
        raise ConfigurationError("the HTTPS_PROXY setting names no proxy host",
                                 fix="fix HTTPS_PROXY (http://host:port) or unset it")
    authorization = None
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        _register_secret(authorization)
    return parts.hostname, port, authorization


class _Watchdog:
    """The one place a blocking follow's time bounds are enforced.

    The follow state says by when the driver must be awake (``wake_at``:
    the idle limit or the deadline, whichever comes first).  One thread per
    follow waits for that moment and then shuts down the socket the driver
    is blocked on, so any read, however the server trickles its bytes (head,
    chunk sizes, trailers, error bodies), returns at once; the driver then
    asks the follow state what happened.  Sleeps between attempts wait on an
    event that :meth:`stop` sets.  It cannot interrupt a DNS lookup (bounded
    by the resolver's own timeouts) or code that runs outside the driver.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Condition()
        self._at: Optional[float] = None
        self._socket: Callable[[], Optional[socket.socket]] = lambda: None
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernel-sse-watchdog", daemon=True)
        self._thread.start()

    def watch(self, sock: Callable[[], Optional[socket.socket]], at: float) -> None:
        """Shut the socket ``sock()`` names down at monotonic time ``at``
        unless moved or released first (a callable: a connection's socket
        appears only as it connects)."""
        with self._lock:
            self._socket, self._at = sock, at
            self._lock.notify()

    def move(self, at: float) -> None:
        """The bound moved (an event arrived); later bounds need no wake-up."""
        earlier = self._at is None or at < self._at
        self._at = at
        if earlier:
            with self._lock:
                self._lock.notify()

    def release(self) -> None:
        """Nothing to watch until the next :meth:`watch`."""
        with self._lock:
            self._socket, self._at = (lambda: None), None

    def sleep(self, seconds: float) -> None:
        """Wait, unless stopped."""
        self.stopped.wait(max(0.0, seconds))

    def stop(self) -> None:
        """End the thread and wake any sleep; shut the watched socket down."""
        with self._lock:
            self.stopped.set()
            self._abort()
            self._lock.notify()

    def _run(self) -> None:
        with self._lock:
            while not self.stopped.is_set():
                at = self._at
                if at is None:
                    self._lock.wait()
                    continue
                left = at - time.monotonic()
                if left > 0:
                    self._lock.wait(left)
                    continue
                self._abort()
                self._at = None

    def _abort(self) -> None:
        import socket

        sock = self._socket()
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                # The plain socket's shutdown: for TLS it leaves the SSL
                # object alone, which the reading thread is still using.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _FollowerBase:
    """What both drivers share: the settings, checked once, the follow state,
    and the read-only view of where the follow stands."""

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
        retry_after_cap: Optional[float] = None,
        on_retry: Optional[Callable[[int, float, str], None]] = None,
    ) -> None:
        if not invocation_id:
            raise ConfigurationError("the invocation id is empty")
        _check_text("invocation id", invocation_id)
        self.invocation_id = invocation_id
        self._endpoint = _Endpoint(api_key, base_url, project_id, allow_insecure_http, ssl_context)
        self.base_url = self._endpoint.base_url
        self.state = FollowState(
            now=time.monotonic(),
            since=since,
            checkpoint=checkpoint,
            idle_timeout=idle_timeout,
            deadline=deadline,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            max_event_bytes=max_event_bytes,
        )
        self.idle_timeout = self.state.idle_timeout
        self.deadline = deadline
        self.max_retries = max_retries
        self.max_event_bytes = max_event_bytes
        self.on_retry = on_retry
        self._started = False
        self._setup(ssl_context)

    def _setup(self, ssl_context: Optional[ssl.SSLContext]) -> None:
        """The driver's own attributes."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.invocation_id!r} at {self.base_url} attempt={self.attempt}>"

    @property
    def attempt(self) -> int:
        """Requests made for the stream so far."""
        return self.state.attempt

    @property
    def reconnects(self) -> int:
        """Drops recovered from so far."""
        return self.state.reconnects

    @property
    def invocation(self) -> Optional[Invocation]:
        """The invocation as last reported (None before the first state)."""
        return self.state.invocation

    @property
    def finished(self) -> bool:
        """True once the terminal state has been delivered."""
        return self.state.finished

    @property
    def checkpoint(self) -> Checkpoint:
        """Where the follow stands: resume from here with no loss and no repeats."""
        return self.state.checkpoint

    def start_clock(self, at: Optional[float] = None) -> None:
        """Count the deadline from monotonic time ``at`` (default: now; the
        command line counts from its start); iterating starts it otherwise.

        Both drivers count on time.monotonic (asyncio's default loop clock)."""
        if not self._started:
            self._started = True
            if self.deadline is not None:
                self.state.deadline_at = (time.monotonic() if at is None else at) + self.deadline


class Follower(_FollowerBase):
    """Follows one invocation's event stream to its terminal state.

    Iterate over it (or use :func:`follow`) to get typed events.  It
    reconnects after drops, resumes with ``since`` and delivers each event
    once (see :class:`FollowState` for the rules), treats ``idle_timeout``
    seconds without a complete event as a drop, and stops after the
    terminal ``invocation_state`` or raises :class:`DeadlineExceeded` at
    ``deadline`` seconds, whatever the server does.  ``checkpoint`` tells
    where it stands, for a later resume; ``attempt`` counts requests,
    ``reconnects`` the drops recovered from, ``invocation`` is the last
    state delivered.  :meth:`close` (from any thread) stops it at once.
    """

    def _setup(self, ssl_context: Optional[ssl.SSLContext]) -> None:
        self._watchdog: Optional[_Watchdog] = None
        self._connection: Optional[http.client.HTTPConnection] = None
        self._response: Optional[http.client.HTTPResponse] = None

    # -- the loop ------------------------------------------------------

    def __iter__(self) -> Iterator[KernelEvent]:
        """Yield every event once, in order, up to the terminal state."""
        self.start_clock()
        state = self.state
        watchdog = self._watchdog = _Watchdog()
        try:
            while True:
                since = state.start_attempt(time.monotonic())
                try:
                    yield from self._stream(since, watchdog)
                    if state.finished:
                        return
                    raise _Ended("the server ended the stream before the terminal state")
                except _Ended as ended:
                    self._close_connection()
                    if state.status_probe_due(time.monotonic()):
                        yield from self._probe_status()
                        if self.finished:
                            return
                    delay = state.attempt_failed(ended.reason, time.monotonic(), ended.retry_after)
                    if self.on_retry is not None:
                        self.on_retry(state.attempt + 1, delay, ended.reason)
                    self._sleep(delay, watchdog)
        finally:
            watchdog.stop()
            self._close_connection()

    def close(self) -> None:
        """Stop the follow and close its connection (safe from another thread)."""
        if self._watchdog is not None:
            self._watchdog.stop()
        self._close_connection()

    def _close_connection(self) -> None:
        response, connection = self._response, self._connection
        self._response = self._connection = None
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _sleep(self, delay: float, watchdog: _Watchdog) -> None:
        """Wait ``delay`` seconds, but never past the deadline."""
        deadline_at = self.state.deadline_at
        if deadline_at is not None:
            delay = min(delay, deadline_at - time.monotonic())
        watchdog.sleep(delay)
        if watchdog.stopped.is_set():
            raise _Ended("the follow was closed")

    def _wake_reason(self, default: str) -> str:
        """Why a blocked read returned: the deadline (raised), idle, or ``default``."""
        return self.state.check_time(time.monotonic()) or default

    # -- one attempt ---------------------------------------------------

    def _events_path(self, since: Optional[str]) -> str:
        import urllib.parse

        path = f"{self._endpoint.path_prefix}/invocations/{urllib.parse.quote(self.invocation_id, safe='')}/events"
        if since:
            path += "?" + urllib.parse.urlencode({"since": since})
        return path

    def _request(
        self, method: str, target: str, accept: str, watchdog: _Watchdog
    ) -> Tuple[http.client.HTTPResponse, socket.socket]:
        """Send one request, following same-origin redirects; return the
        final response (any status) and its socket, read under the watchdog."""
        import http.client

        endpoint = self._endpoint
        origin = (endpoint.scheme, endpoint.host, endpoint.port)
        for _hop in range(_MAX_REDIRECTS + 1):
            self._close_connection()
            timeout = max(0.001, min(_CONNECT_TIMEOUT, self.state.wake_at - time.monotonic()))
            connection = self._connection = endpoint.connection(origin, timeout)
            watchdog.watch(lambda: connection.sock, self.state.wake_at)
            try:
                connection.connect()
                sock = connection.sock
                assert sock is not None
                # Reads wait as long as they must: the watchdog bounds them, not a per-read timeout.
                sock.settimeout(None)
                watchdog.watch(lambda: sock, self.state.wake_at)
                connection.request(method, target, headers=endpoint.headers(accept))
                response = self._response = connection.getresponse()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise _Ended(self._wake_reason(f"connection failed: {_describe(exc)}")) from None
            if response.status in _REDIRECT_STATUSES and method == "GET":
                target = endpoint.redirect(origin, target, response.getheader("Location", "") or "", response.status)
                continue
            return response, sock
        raise _Ended(f"more than {_MAX_REDIRECTS} redirects")

    def _read_error(self, response: http.client.HTTPResponse) -> bytes:
        """An error body, bounded; what arrived before a failure or the watchdog."""
        import http.client

        body = b""
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            while len(body) < _ERROR_BODY_LIMIT:
                piece = response.read1(_ERROR_BODY_LIMIT - len(body))
                if not piece:
                    break
                body += piece
        self.state.check_time(time.monotonic())
        return body

    def _refuse(self, status: int, body: bytes) -> NoReturn:
        _raise_refusal(status, body)

    def _stream(self, since: Optional[str], watchdog: _Watchdog) -> Iterator[KernelEvent]:
        """One connection: yield new events until the stream ends or stalls."""
        import http.client

        state = self.state
        response, sock = self._request("GET", self._events_path(since), "text/event-stream", watchdog)
        status = response.status
        if status != 200:
            body = self._read_error(response)
            if status in _RETRYABLE_STATUSES or status >= 500 or status in _REDIRECT_STATUSES:
                raise _Ended(f"the API answered {status}", _parse_retry_after(response.getheader("Retry-After")))
            self._refuse(status, body)
        content_type = response.getheader("Content-Type", "") or ""
        if not content_type.lower().startswith("text/event-stream"):
            raise _Ended(f"expected an event stream, got {content_type[:100] or 'no content type'}")
        while True:
            try:
                chunk = response.read1(_READ_SIZE)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise _Ended(self._wake_reason(f"the connection broke: {_describe(exc)}")) from None
            if not chunk:
                raise _Ended(self._wake_reason("the server ended the stream before the terminal state"))
            now = time.monotonic()
            events = state.receive(chunk, now)
            watchdog.move(state.wake_at)
            yield from events
            if state.finished:
                return
            if state.status_probe_due(now):
                yield from self._probe_status()
                if self.finished:  # the probe found the invocation finished
                    return

    def _probe_status(self) -> Iterator[KernelEvent]:
        """Ask ``GET /invocations/{id}`` and hand the answer to the follow state."""
        invocation: Optional[Invocation] = None
        raw: Optional[JSONObject] = None
        try:
            invocation, raw = _fetch_invocation(self._endpoint, self.invocation_id, self.state.wake_at)
        except (KernelSSEError, _Ended):
            self.state.check_time(time.monotonic())  # the deadline ends the follow; anything else waits
        yield from self.state.receive_status(invocation, time.monotonic(), raw)


def _raise_refusal(status: int, body: bytes, fix: Optional[str] = None) -> NoReturn:
    """Raise the error for an answer that retrying cannot fix."""
    code, message = _error_body(status, body)
    raise _STATUS_ERRORS.get(status, APIStatusError)(status, code, _redact(message), fix)


def _fetch_invocation(endpoint: _Endpoint, invocation_id: str, until: Optional[float]) -> Tuple[Invocation, JSONObject]:
    """``GET /invocations/{id}`` on a connection of its own, bounded by
    ``until`` (monotonic) or the connect timeout: the invocation and its JSON."""
    import urllib.parse

    target = f"{endpoint.path_prefix}/invocations/{urllib.parse.quote(invocation_id, safe='')}"
    status, _headers, body = _call(endpoint, "GET", target, None, until)
    if status != 200:
        _raise_refusal(status, body)
    obj = _json_object(body, "invocation")
    try:
        return _invocation(_Fields(obj, "invocation")), obj
    except _Invalid as exc:
        raise _Ended(f"the API sent an invocation that is not valid: {exc}") from None


def _json_object(body: bytes, what: str) -> JSONObject:
    """A response body that must be one JSON object; _Ended if it is not."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _Ended(f"the API sent a {what} that is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Ended(f"the API sent a {what} that is not a JSON object")
    return cast(JSONObject, obj)


class _Reply(NamedTuple):
    """One answered request: status, headers (lower-case names), body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class _NotSent(_Ended):
    """Internal: the request certainly did not reach the server (nothing was sent)."""


def _call(
    endpoint: _Endpoint, method: str, target: str, body: Optional[bytes], until: Optional[float] = None
) -> _Reply:
    """One JSON request on a fresh connection (body read up to 4 MiB), bounded
    as a whole by ``until`` (monotonic) or the connect timeout.  A failure
    before any byte of the request left is :class:`_NotSent`; after, :class:`_Ended`."""
    import http.client

    now = time.monotonic()
    limit = (until if until is not None else now + _CONNECT_TIMEOUT) - now
    if limit <= 0:
        raise _NotSent("no time left for the request")
    watchdog = _Watchdog()
    origin = (endpoint.scheme, endpoint.host, endpoint.port)
    connection = endpoint.connection(origin, limit)
    sent = False
    try:
        watchdog.watch(lambda: connection.sock, now + limit)
        connection.connect()  # DNS, TCP, proxy tunnel, TLS handshake: nothing of the request yet
        headers = endpoint.headers("application/json")
        if body is not None:
            headers["Content-Type"] = "application/json"
        sent = True
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read(4 * 1024 * 1024)
        return _Reply(response.status, {name.lower(): value for name, value in response.getheaders()}, data)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        failure = _Ended if sent else _NotSent
        raise failure(f"{method} {target.split('?')[0]} failed: {_describe(exc)}") from None
    finally:
        watchdog.stop()
        connection.close()


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
# Follow loop: the asyncio driver
# ======================================================================

# The same follow as Follower's, on asyncio streams and without a thread:
# FollowState decides, HTTPResponseReader reads, this driver moves bytes.
# Its one time bound is FollowState.wake_at (the idle limit or the deadline,
# whichever is first): every await on the network is an asyncio.wait_for
# that ends there (_until), and an await that ends there asks the state why.

if TYPE_CHECKING:  # pragma: no cover - names for annotations only
    import asyncio
    from typing import AsyncGenerator, AsyncIterator, Awaitable

_Result = TypeVar("_Result")
_PROBE_BODY_LIMIT = 4 * 1024 * 1024
_default_ssl_context: Optional[ssl.SSLContext] = None


def _shared_ssl_context() -> ssl.SSLContext:
    """One default TLS context for every asyncio follow in the process:
    building one reads and parses the system's CA certificates (well over
    a hundred milliseconds on a slow disk), too slow to do per connection
    or per follower.  A context is safe to share between connections."""
    global _default_ssl_context
    if _default_ssl_context is None:
        import ssl

        _default_ssl_context = ssl.create_default_context()
    return _default_ssl_context


def _network_errors() -> Tuple[Type[BaseException], ...]:
    """What a failed or timed-out await on the network raises (before
    Python 3.11, asyncio.TimeoutError is not an OSError)."""
    import asyncio

    return (OSError, ValueError, HTTPProtocolError, asyncio.TimeoutError)


async def _until(awaitable: Awaitable[_Result], wake_at: float) -> _Result:
    """The result of ``awaitable``, or asyncio.TimeoutError once the loop's
    clock reaches ``wake_at`` (the awaitable is then cancelled)."""
    import asyncio

    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(awaitable, max(0.0, wake_at - loop.time()))


def _authority(host: str, port: int, default_port: int = 0) -> str:
    """``host:port`` as a Host field or a CONNECT target writes it: the name
    in IDNA, an IPv6 address in brackets, no port when it is the default."""
    name = host.encode("idna").decode("ascii")
    if ":" in name:
        name = f"[{name}]"
    return name if port == default_port else f"{name}:{port}"


class _Response:
    """One HTTP/1.1 response read off an asyncio stream by HTTPResponseReader:
    its head, then its body bytes as they arrive (never held back)."""

    def __init__(
        self, stream: asyncio.StreamReader, method: str = "GET", transport: Optional[asyncio.WriteTransport] = None
    ) -> None:
        self._stream = stream
        self._reader = HTTPResponseReader(method)
        self._body: List[bytes] = []  # body bytes read but not yet taken
        self._transport = transport
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = 0.0
        self._expired = False

    @property
    def head(self) -> ResponseHead:
        """The response head, once :meth:`read_head` has returned."""
        head = self._reader.head
        assert head is not None, "read_head() first"
        return head

    @property
    def buffered(self) -> bool:
        """True when body bytes arrived that :meth:`read` has not returned yet."""
        return bool(self._body)

    async def read_head(self, until: float) -> ResponseHead:
        """Read up to the end of the final response's head, by ``until``."""
        while self._reader.head is None:
            await self._feed(until)
        return self.head

    async def read(self, until: float) -> bytes:
        """The body bytes that arrived next (waiting by ``until`` for some),
        or ``b""`` at the end of the body."""
        while not self._body and not self._reader.done:
            await self._feed(until)
        data = b"".join(self._body)
        self._body.clear()
        return data

    async def read_body(self, limit: int, until: float) -> bytes:
        """The body, or its first ``limit`` bytes."""
        body = b""
        while len(body) < limit:
            data = await self.read(until)
            if not data:
                break
            body += data
        return body[:limit]

    async def _feed(self, until: float) -> None:
        if self._transport is None:
            data = await _until(self._stream.read(_READ_SIZE), until)
        else:
            data = await self._read_by(until)
        for event in self._reader.feed(data) if data else self._reader.feed_eof():
            if isinstance(event, BodyData):
                self._body.append(event.data)


    async def _read_by(self, until: float) -> bytes:
        """A read bounded by ``until`` through one timer per bound, not a task
        per read: when the timer fires it aborts the connection, and the read
        raises asyncio.TimeoutError as a timed-out wait would (streams read
        many times between two bounds)."""
        import asyncio

        if self._timer is None or self._timer_at != until:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = until
            self._timer = asyncio.get_running_loop().call_at(until, self._expire)
        try:
            data = await self._stream.read(_READ_SIZE)
        except (OSError, ValueError):
            if self._expired:
                raise asyncio.TimeoutError() from None
            raise
        if self._expired:
            raise asyncio.TimeoutError()
        return data

    def _expire(self) -> None:
        self._expired = True
        assert self._transport is not None
        self._transport.abort()

    def close(self) -> None:
        """Stop the read timer (the connection is closed by its writer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Connector:
    """Opens the asyncio follow's connections and sends its requests, with
    the blocking driver's rules: TLS checked (``ssl_context`` or the default
    context, the host name verified), the ``HTTPS_PROXY`` CONNECT tunnel,
    the same headers."""

    def __init__(self, endpoint: _Endpoint, ssl_context: Optional[ssl.SSLContext]) -> None:
        self.endpoint = endpoint
        self.origin = (endpoint.scheme, endpoint.host, endpoint.port)
        # Here, not on the event loop: the default context is built from disk.
        if ssl_context is None and endpoint.scheme == "https":
            ssl_context = _shared_ssl_context()
        self._ssl_context = ssl_context

    async def exchange(
        self, origin: Tuple[str, str, int], target: str, accept: str, until: float
    ) -> Tuple[_Response, asyncio.StreamWriter]:
        """Connect to ``origin``, send ``GET target`` and read the response
        head, all by ``until`` (connecting within _CONNECT_TIMEOUT as well).
        The caller closes the returned writer."""
        import asyncio

        connect_by = min(until, asyncio.get_running_loop().time() + _CONNECT_TIMEOUT)
        stream, writer = await self.connect(origin, connect_by)
        try:
            writer.write(self._request(origin, target, accept))
            response = _Response(stream, transport=writer.transport)
            await response.read_head(until)
            return response, writer
        except BaseException:
            writer.transport.abort()
            raise

    async def connect(
        self, origin: Tuple[str, str, int], until: float
    ) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``origin`` (scheme, host, port), through the HTTPS proxy if set."""
        import asyncio

        scheme, host, port = origin
        if scheme == "http":
            return await _until(asyncio.open_connection(host, port), until)
        context = self._ssl_context
        assert context is not None, "set for https by __init__"
        if self.endpoint.proxy is None:
            return await _until(asyncio.open_connection(host, port, ssl=context, server_hostname=host), until)
        sock = await self._tunnel(self.endpoint.proxy, host, port, until)
        try:
            return await _until(asyncio.open_connection(sock=sock, ssl=context, server_hostname=host), until)
        except BaseException:
            sock.close()  # asyncio owns the socket only once the connection is made
            raise

    async def _tunnel(
        self, proxy: Tuple[str, int, Optional[str]], host: str, port: int, until: float
    ) -> socket.socket:
        """A socket tunnelled to ``host:port`` by the proxy (CONNECT), ready for TLS."""
        import asyncio

        proxy_host, proxy_port, authorization = proxy
        stream, writer = await _until(asyncio.open_connection(proxy_host, proxy_port), until)
        try:
            authority = _authority(host, port)
            lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
            if authorization:
                lines.append(f"Proxy-Authorization: {authorization}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            response = _Response(stream, "CONNECT")
            head = await response.read_head(until)
            if not 200 <= head.status < 300:
                raise OSError(f"the HTTPS proxy refused the tunnel: {head.status} {head.reason}")
            if response.buffered:  # the server speaks only after the TLS client's hello
                raise OSError("the HTTPS proxy sent bytes before the TLS handshake")
            # The tunnel is a plain socket from here: a duplicate of it goes to
            # a new TLS connection (old Pythons cannot start TLS on a stream).
            return cast("socket.socket", writer.get_extra_info("socket").dup())
        finally:
            writer.transport.abort()

    def _request(self, origin: Tuple[str, str, int], target: str, accept: str) -> bytes:
        """The bytes of the request ``GET target`` to ``origin``."""
        scheme, host, port = origin
        fields = {
            "Host": _authority(host, port, 443 if scheme == "https" else 80),
            "Accept-Encoding": "identity",
            "Connection": "close",  # never reused: the driver closes it once done
        }
        fields.update(self.endpoint.headers(accept))
        lines = [f"GET {target} HTTP/1.1"] + [f"{name}: {value}" for name, value in fields.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def fetch_invocation(self, invocation_id: str, until: float) -> Tuple[Invocation, JSONObject]:
        """``GET /invocations/{id}`` on a connection of its own, by ``until``:
        the invocation and its JSON (the asyncio twin of _fetch_invocation)."""
        import urllib.parse

        target = f"{self.endpoint.path_prefix}/invocations/{urllib.parse.quote(invocation_id, safe='')}"
        try:
            response, writer = await self.exchange(self.origin, target, "application/json", until)
            try:
                body = await response.read_body(_PROBE_BODY_LIMIT, until)
            finally:
                writer.transport.abort()
        except _network_errors() as exc:
            raise _Ended(f"GET {target} failed: {_describe(exc)}") from None
        status = response.head.status
        if status != 200:
            code, message = _error_body(status, body)
            raise _STATUS_ERRORS.get(status, APIStatusError)(status, code, _redact(message))
        obj = _json_object(body, "invocation")
        try:
            return _invocation(_Fields(obj, "invocation")), obj
        except _Invalid as exc:
            raise _Ended(f"the API sent an invocation that is not valid: {exc}") from None


class AsyncFollower(_FollowerBase):
    """Follows one invocation's event stream to its terminal state, on asyncio.

    ``async for event in AsyncFollower(invocation_id, ...)`` (or
    :func:`afollow`) yields what iterating a :class:`Follower` with the same
    arguments yields, with the same rules (see :class:`FollowState`):
    reconnects and resumes, each event once, idle limit, deadline, status
    probe, TLS checks, the HTTPS proxy, same-origin redirects, the same
    errors.  It needs no thread: every wait ends by the follow state's
    ``wake_at``.  ``checkpoint``, ``attempt``, ``reconnects``,
    ``invocation`` and ``finished`` are :class:`Follower`'s.

    Cancelling the task that iterates closes the connection at once and
    re-raises; ``checkpoint`` then covers exactly the events handed over,
    so a new follower given it resumes with nothing lost or repeated.
    :meth:`aclose` (or leaving ``async with``) stops the follow; leaving an
    ``async for`` early does not, so use one of them.  To stop a follow that
    another task is iterating, cancel that task.  Without ``ssl_context``,
    the first HTTPS follower of the process builds the default TLS context
    (reading the system's CA certificates) in its constructor.
    """

    def _setup(self, ssl_context: Optional[ssl.SSLContext]) -> None:
        self._connector = _Connector(self._endpoint, ssl_context)
        self._closed = False
        self._events: Optional[AsyncGenerator[KernelEvent, None]] = None
        self._writer: Optional[asyncio.StreamWriter] = None

    # -- the async iterator ----------------------------------------------

    def __aiter__(self) -> AsyncFollower:
        return self

    async def __anext__(self) -> KernelEvent:
        """The next event, once, in order; StopAsyncIteration after the terminal state."""
        if self._events is None:
            if self._closed:
                raise StopAsyncIteration
            self._events = self._follow()
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Stop the follow and close its connection (from the task that iterates)."""
        self._closed = True
        if self._events is not None:
            await self._events.aclose()
        self._close_connection()

    async def __aenter__(self) -> AsyncFollower:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the loop ------------------------------------------------------

    async def _follow(self) -> AsyncGenerator[KernelEvent, None]:
        """Yield every event once, in order, up to the terminal state."""
        import asyncio

        loop = asyncio.get_running_loop()
        self.start_clock()
        state = self.state
        try:
            while True:
                since = state.start_attempt(loop.time())
                try:
                    response = await self._open_stream(since)
                    while True:
                        data = await self._read(response)
                        now = loop.time()
                        # Lazy: an event enters the checkpoint only as it is handed over.
                        for event in state.receive(data, now):
                            yield event
                        if state.finished:
                            return
                        if state.status_probe_due(now):
                            for event in await self._probe_status():
                                yield event
                            if self.finished:  # the probe found the invocation finished
                                return
                except _Ended as ended:
                    self._close_connection()
                    if state.status_probe_due(loop.time()):
                        for event in await self._probe_status():
                            yield event
                        if state.finished:
                            return
                    delay = state.attempt_failed(ended.reason, loop.time(), ended.retry_after)
                    if self.on_retry is not None:
                        self.on_retry(state.attempt + 1, delay, ended.reason)
                    await self._sleep(delay)
        finally:
            # Also on cancellation and on aclose(): the connection goes at once.
            self._close_connection()

    def _close_connection(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            # abort(), not close(): nothing is left to send, and a TLS close
            # would wait for the server's close_notify.
            writer.transport.abort()

    async def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, but never past the deadline."""
        import asyncio

        deadline_at = self.state.deadline_at
        if deadline_at is not None:
            delay = min(delay, deadline_at - asyncio.get_running_loop().time())
        await asyncio.sleep(max(0.0, delay))

    def _wake_reason(self, default: str) -> str:
        """Why an await on the network ended: the deadline (raised), idle, or ``default``."""
        import asyncio

        return self.state.check_time(asyncio.get_running_loop().time()) or default

    # -- one attempt ---------------------------------------------------

    async def _open_stream(self, since: Optional[str]) -> _Response:
        """Request the event stream: the 200 response whose body is the stream."""
        import urllib.parse

        target = f"{self._endpoint.path_prefix}/invocations/{urllib.parse.quote(self.invocation_id, safe='')}/events"
        if since:
            target += "?" + urllib.parse.urlencode({"since": since})
        response = await self._request(target)
        status = response.head.status
        if status != 200:
            body = await self._read_error(response)
            if status in _RETRYABLE_STATUSES or status >= 500:
                raise _Ended(f"the API answered {status}", _parse_retry_after(response.head.header("Retry-After")))
            code, message = _error_body(status, body)
            raise _STATUS_ERRORS.get(status, APIStatusError)(status, code, _redact(message))
        content_type = response.head.header("Content-Type") or ""
        if not content_type.lower().startswith("text/event-stream"):
            raise _Ended(f"expected an event stream, got {content_type[:100] or 'no content type'}")
        return response

    async def _request(self, target: str) -> _Response:
        """Send ``GET target``, following same-origin redirects; the final
        response (any status), its head read, its connection kept to close."""
        connector = self._connector
        origin = connector.origin
        for _hop in range(_MAX_REDIRECTS + 1):
            self._close_connection()
            try:
                response, self._writer = await connector.exchange(
                    origin, target, "text/event-stream", self.state.wake_at
                )
            except _network_errors() as exc:
                raise _Ended(self._wake_reason(f"connection failed: {_describe(exc)}")) from None
            head = response.head
            if head.status not in _REDIRECT_STATUSES:
                return response
            target = self._endpoint.redirect(origin, target, head.header("Location") or "", head.status)
        raise _Ended(f"more than {_MAX_REDIRECTS} redirects")

    async def _read_error(self, response: _Response) -> bytes:
        """An error body, bounded; what arrived before a failure or the wake-up."""
        import asyncio

        body = b""
        with contextlib.suppress(*_network_errors()):
            body = await response.read_body(_ERROR_BODY_LIMIT, self.state.wake_at)
        self.state.check_time(asyncio.get_running_loop().time())
        return body

    async def _read(self, response: _Response) -> bytes:
        """The next bytes of the stream, by the follow state's ``wake_at``;
        _Ended when the stream ends, breaks or stays idle."""
        try:
            data = await response.read(self.state.wake_at)
        except _network_errors() as exc:
            raise _Ended(self._wake_reason(f"the connection broke: {_describe(exc)}")) from None
        if not data:
            raise _Ended(self._wake_reason("the server ended the stream before the terminal state"))
        return data

    async def _probe_status(self) -> List[KernelEvent]:
        """Ask ``GET /invocations/{id}`` and hand the answer to the follow state."""
        import asyncio

        loop = asyncio.get_running_loop()
        invocation: Optional[Invocation] = None
        raw: Optional[JSONObject] = None
        try:
            invocation, raw = await self._connector.fetch_invocation(self.invocation_id, self.state.wake_at)
        except (KernelSSEError, _Ended):
            self.state.check_time(loop.time())  # the deadline ends the follow; anything else waits
        return self.state.receive_status(invocation, loop.time(), raw)


def afollow(
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
) -> AsyncIterator[KernelEvent]:
    """Yield an invocation's events once each, in order, to its terminal
    state, on asyncio: ``async for event in afollow(invocation_id): ...``.

    The arguments are :func:`follow`'s; see :class:`AsyncFollower` for the
    behaviour, cancellation and checkpoints.
    """
    return AsyncFollower(
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


# ======================================================================
# Invocation endpoints: invoke, status, list, cancel
# ======================================================================

_INVOKE_MATCH_SKEW = 5.0  # seconds of clock difference allowed when looking for our own invocation
_INVOKE_SETTLE = 10.0  # seconds an ambiguous POST is given to show up in the list


class InvokeUncertain(KernelSSEError):
    """``POST /invocations`` may have started an invocation, and the list
    could not prove which one (or whether): it was not sent again, since a
    second POST would start a second run.  ``since`` is when the request
    was made; look for it with :func:`list_invocations`."""

    def __init__(self, message: str, app: str, action: str, version: str, since: str) -> None:
        import shlex

        command = " ".join(shlex.quote(word) for word in ("kernel-sse", "list", "--app", app, "--action", action,
                                                          "--version", version, "--since", since))
        super().__init__(message, fix=f"check whether it started: {command}, then follow it, or invoke again")
        self.app, self.action, self.version, self.since = app, action, version, since


@dataclass(frozen=True)
class InvocationsPage:
    """One page of ``GET /invocations``: the invocations and where the next page starts."""

    invocations: Tuple[Invocation, ...]
    raw: Tuple[JSONObject, ...]
    has_more: bool
    next_offset: Optional[int]


class _Api:
    """The invocation endpoints of one API: checked settings and bounded, retried requests."""

    def __init__(
        self,
        api_key: Optional[str],
        base_url: Optional[str],
        project_id: Optional[str],
        allow_insecure_http: bool,
        ssl_context: Optional[ssl.SSLContext],
        timeout: float,
        max_retries: int,
        deadline: Optional[float] = None,
    ) -> None:
        _check_number("timeout", timeout, minimum=0.0, inclusive=False)
        if deadline is not None:
            _check_number("deadline", deadline, minimum=0.0, inclusive=False)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"{{max_retries}} must be a whole number >= 0 (got {max_retries!r})")
        self.endpoint = _Endpoint(api_key, base_url, project_id, allow_insecure_http, ssl_context)
        self.timeout = timeout
        self.max_retries = max_retries
        self.deadline = deadline
        self.until = None if deadline is None else time.monotonic() + deadline  # monotonic end of everything

    def left(self) -> Optional[float]:
        """Seconds left before the deadline (None: no deadline)."""
        return None if self.until is None else self.until - time.monotonic()

    def out_of_time(self, doing: str) -> DeadlineExceeded:
        """The error for a deadline that passed while ``doing`` something."""
        return DeadlineExceeded(f"the deadline of {self.deadline:g}s passed while {doing}",
                                fix="raise {deadline}")

    def sleep(self, seconds: float, doing: str) -> None:
        """Sleep, or raise DeadlineExceeded if the deadline comes first."""
        left = self.left()
        if left is not None and left <= seconds:
            time.sleep(max(0.0, left))
            raise self.out_of_time(doing)
        time.sleep(seconds)

    def path(self, *parts: str, query: Optional[Mapping[str, object]] = None) -> str:
        """A request target: the base path, the quoted ``parts``, the query without None values."""
        import urllib.parse

        path = self.endpoint.path_prefix + "/" + "/".join(urllib.parse.quote(part, safe="") for part in parts)
        pairs = {name: str(value) for name, value in (query or {}).items() if value is not None}
        return path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")

    def request(self, method: str, target: str, body: Optional[JSONObject] = None, idempotent: bool = True) -> _Reply:
        """Send, retrying what is safe to retry: everything for an idempotent
        request; for one that is not, only what certainly did not reach the
        server (nothing sent, or 429/503 with ``Retry-After``).  Refusals raise."""
        import random

        data = None if body is None else json.dumps(body).encode("utf-8")
        doing = f"{method} {target.split('?')[0]}"
        failures = 0
        while True:
            retry_after: Optional[float] = None
            until = time.monotonic() + self.timeout
            if self.until is not None:
                if time.monotonic() >= self.until:
                    raise self.out_of_time(f"sending {doing}")
                until = min(until, self.until)
            try:
                reply = _call(self.endpoint, method, target, data, until)
            except _NotSent as exc:
                reason = exc.reason
            except _Ended as exc:
                if not idempotent:
                    raise
                reason = exc.reason
            else:
                if reply.status < 300:
                    return reply
                if reply.status in (429, 503) and "retry-after" in reply.headers:
                    retry_after = _parse_retry_after(reply.headers["retry-after"])
                    reason = f"the API answered {reply.status}"
                elif reply.status in _RETRYABLE_STATUSES or reply.status >= 500:
                    if not idempotent:
                        raise _Ended(f"the API answered {reply.status}")
                    reason = f"the API answered {reply.status}"
                else:
                    return reply  # a refusal: the caller names it in its terms
            failures += 1
            if failures > self.max_retries:
                raise ConnectionFailed(
                    f"{method} {target.split('?')[0]} failed {failures} times in a row (last: {reason})",
                    fix="check the network and {base_url}, or raise {max_retries}",
                )
            delay = min(retry_after, 30.0) if retry_after is not None else random.uniform(0, min(30.0, 0.5 * 2 ** failures))
            self.sleep(delay, f"retrying {doing} (last: {reason})")


def _api(
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    project_id: Optional[str] = None,
    allow_insecure_http: bool = False,
    ssl_context: Optional[ssl.SSLContext] = None,
    timeout: float = 30.0,
    max_retries: int = 3,
    deadline: Optional[float] = None,
) -> _Api:
    return _Api(api_key, base_url, project_id, allow_insecure_http, ssl_context, timeout, max_retries, deadline)


def _invocation_from(obj: JSONObject) -> Invocation:
    try:
        return _invocation(_Fields(obj, "invocation"))
    except _Invalid as exc:
        raise APIStatusError(200, "invalid_invocation", f"the API sent an invocation that is not valid: {exc}",
                             fix="report it; the API's answer does not match its specification") from None


def get_invocation(invocation_id: str, **settings: Any) -> Invocation:
    """``GET /invocations/{id}``: the invocation as it is now.

    ``settings``: ``api_key``, ``base_url``, ``project_id``,
    ``allow_insecure_http``, ``ssl_context``, ``timeout`` (seconds per
    request, default 30), ``max_retries`` (after a failed attempt, at most
    that many more; default 3), ``deadline`` (seconds for the whole call,
    retries and waits included: :class:`DeadlineExceeded` after that).
    """
    _check_text("invocation id", invocation_id)
    return _get(_api(**settings), invocation_id)


def _get(api: _Api, invocation_id: str) -> Invocation:
    reply = api.request("GET", api.path("invocations", invocation_id))
    if reply.status != 200:
        _raise_refusal(reply.status, reply.body)
    return _invocation_from(_api_object(reply.body, "invocation"))


def cancel_invocation(invocation_id: str, output: Optional[str] = None, **settings: Any) -> Invocation:
    """Cancel an invocation (``PATCH /invocations/{id}`` with status ``failed``);
    return it as it is then.  ``settings`` as for :func:`get_invocation`."""
    _check_text("invocation id", invocation_id)
    api = _api(**settings)
    body: JSONObject = {"status": "failed"}
    if output is not None:
        body["output"] = output
    reply = api.request("PATCH", api.path("invocations", invocation_id), body)
    if reply.status != 200:
        _raise_refusal(reply.status, reply.body)
    return _invocation_from(_api_object(reply.body, "invocation"))


def list_invocations(
    *,
    app: Optional[str] = None,
    action: Optional[str] = None,
    version: Optional[str] = None,
    status: Optional[str] = None,
    since: Optional[str] = None,
    query: Optional[str] = None,
    limit: Optional[int] = None,
    offset: int = 0,
    **settings: Any,
) -> Iterator[InvocationsPage]:
    """``GET /invocations``, page by page (offset pagination).

    It stops when ``X-Has-More`` is false, when the next offset is absent or
    0, or when the server repeats the offset it was asked for; a page saying
    it has more without saying where raises :class:`APIStatusError`.
    ``settings`` as for :func:`get_invocation`.
    """
    filters = {"app_name": app, "action_name": action, "version": version, "status": status,
               "since": since, "query": query, "limit": limit}
    return _list_pages(_api(**settings), filters, offset)


def _list_pages(api: _Api, filters: Mapping[str, object], offset: int) -> Iterator[InvocationsPage]:
    asked: Set[int] = set()  # offsets already asked for: a server that cycles cannot keep us here
    while True:
        asked.add(offset)
        reply = api.request("GET", api.path("invocations", query={**filters, "offset": offset or None}))
        if reply.status != 200:
            _raise_refusal(reply.status, reply.body, fix="check the filters ({since} and status)")
        try:
            items = json.loads(reply.body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise APIStatusError(200, "invalid_list", f"the API sent a list that is not JSON: {exc}") from None
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise APIStatusError(200, "invalid_list", "the API sent a list that is not a JSON array of objects")
        text = reply.headers.get("x-next-offset", "").strip()
        next_offset = int(text) if text.isascii() and text.isdigit() else None
        if "x-has-more" in reply.headers:
            has_more = reply.headers["x-has-more"].strip().lower() == "true"
        else:  # no X-Has-More at all: the offsets alone tell (0 or none: the last page)
            has_more = bool(next_offset)
        if has_more and next_offset is None:
            raise APIStatusError(200, "invalid_pagination",
                                 "the API said there are more invocations (X-Has-More: true) but not where they "
                                 "start (no X-Next-Offset)", fix="report it; narrow the list with filters meanwhile")
        yield InvocationsPage(tuple(_invocation_from(item) for item in items), tuple(items), has_more, next_offset)
        if not has_more or not next_offset or next_offset in asked:
            return
        offset = next_offset


def _api_object(body: bytes, what: str) -> JSONObject:
    try:
        return _json_object(body, what)
    except _Ended as exc:
        raise APIStatusError(200, "invalid_response", exc.reason) from None


def invoke(
    app: str,
    action: str,
    *,
    version: str,
    payload: object = None,
    payload_json: Optional[str] = None,
    async_timeout: Optional[int] = None,
    on_request: Optional[Callable[[str], None]] = None,
    **settings: Any,
) -> Invocation:
    """Start ``action`` of ``app`` at ``version`` (``POST /invocations``,
    asynchronously) and return the new invocation; follow it with
    :func:`follow` (its ``id``).

    ``payload`` is the action's input as a Python value (sent as the JSON
    string the API expects); ``payload_json`` gives that JSON text instead.
    Exactly once: the POST is never sent twice blindly.  It is retried only
    when it certainly did not reach the server (nothing sent, or 429/503 with
    ``Retry-After``); when it may have (a timeout or a broken connection after
    sending, a 5xx), the invocation it started is looked up in the list (same
    app, action, version and payload, started since just before the POST);
    if none or several match, :class:`InvokeUncertain` is raised.
    ``on_request`` is called with the RFC 3339 time just before the POST
    (a state file records it).  ``settings`` as for :func:`get_invocation`;
    ``deadline`` bounds the start (the POST, its retries and the look-up).
    """
    for name, value in (("app", app), ("action", action), ("version", version)):
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"the {name} is empty", fix="give it" if name != "version" else "give {version}")
        _check_text(name, value)
    if payload_json is not None and payload is not None:
        raise ConfigurationError("give the payload once: as payload or as payload_json, not both")
    if payload_json is not None:
        try:
            json.loads(payload_json)
        except (ValueError, RecursionError) as exc:
            raise ConfigurationError(f"the payload is not valid JSON: {exc}", fix="check {payload}") from None
        payload_text: Optional[str] = payload_json
    else:
        try:
            payload_text = None if payload is None else json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"the payload cannot be sent as JSON: {exc}", fix="check {payload}") from None
    if async_timeout is not None and (isinstance(async_timeout, bool) or not isinstance(async_timeout, int)
                                      or not 10 <= async_timeout <= 3600):
        raise ConfigurationError(f"async_timeout must be a whole number of seconds from 10 to 3600 "
                                 f"(got {async_timeout!r})")
    body: JSONObject = {"app_name": app, "action_name": action, "version": version, "async": True}
    if payload_text is not None:
        body["payload"] = payload_text
    if async_timeout is not None:
        body["async_timeout_seconds"] = async_timeout
    api = _api(**settings)
    requested_at = _format_since(datetime.now(timezone.utc) - _timedelta(_INVOKE_MATCH_SKEW))
    if on_request is not None:
        on_request(requested_at)
    try:
        reply = api.request("POST", api.path("invocations"), body, idempotent=False)
    except _Ended as exc:  # it may have reached the server: never send it again
        return _find_own_invocation(api, app, action, version, payload_text, requested_at, exc.reason)
    # (DeadlineExceeded from the POST passes through: it comes before an attempt or while waiting
    # to retry one that certainly started nothing; time running out mid-request is _Ended above.)
    if reply.status not in (200, 201, 202):
        _raise_refusal(reply.status, reply.body,
                       fix="check the app name, the action and {version} (kernel-sse list shows what ran before)")
    created = _api_object(reply.body, "invocation")
    new_id = created.get("id")
    if not isinstance(new_id, str) or not new_id:
        raise APIStatusError(reply.status, "invalid_response", "the API started an invocation but sent no id")
    try:
        return _get(api, new_id)
    except KernelSSEError:  # it exists; describe it from what we know
        return Invocation(new_id, app, version, action, datetime.now(timezone.utc),
                          str(created.get("status") or "queued"), payload_text)


def _same_payload(listed: Optional[str], sent: Optional[str]) -> bool:
    """Whether a listed invocation's payload is the one sent: the same text, or
    the same JSON document (a server may store it re-serialised)."""
    if listed == sent or listed is None or sent is None:
        return listed == sent
    try:
        return bool(json.loads(listed) == json.loads(sent))
    except (ValueError, RecursionError):
        return False


def _matching(api: _Api, app: str, action: str, version: str, payload: Optional[str], since: str) -> List[Invocation]:
    """The invocations of this action with this payload started since ``since``."""
    seen: Dict[str, Invocation] = {}  # by id: an invocation on two pages (the list moved) is one
    for page in _pages(api, app, action, version, since):
        for invocation in page.invocations:
            if _same_payload(invocation.payload, payload):
                seen.setdefault(invocation.id, invocation)
    return list(seen.values())


def _find_own_invocation(
    api: _Api, app: str, action: str, version: str, payload: Optional[str], since: str, reason: str
) -> Invocation:
    """After a POST that may have reached the server: the one invocation it
    started, proven by the list, or InvokeUncertain."""
    settle_until = time.monotonic() + _INVOKE_SETTLE
    while True:
        try:
            matches = _matching(api, app, action, version, payload, since)
        except (APIStatusError, ConnectionFailed, DeadlineExceeded) as exc:
            raise InvokeUncertain(
                f"the request to start {app} {action} v{version} may have reached the API ({reason}), and listing "
                f"the invocations to find it failed ({Exception.__str__(exc)}); it was not sent again, so as not "
                "to start it twice", app, action, version, since) from None
        if len(matches) == 1:
            return matches[0]
        left = api.left()
        if len(matches) > 1 or time.monotonic() >= settle_until or (left is not None and left <= 1.0):
            found = f"{len(matches)} invocations match" if matches else "none is listed"
            raise InvokeUncertain(
                f"the request to start {app} {action} v{version} may have reached the API ({reason}) and {found}; "
                "it was not sent again, so as not to start it twice", app, action, version, since)
        time.sleep(1.0)


def _pages(api: _Api, app: str, action: str, version: str, since: str) -> Iterator[InvocationsPage]:
    return _list_pages(api, {"app_name": app, "action_name": action, "version": version, "since": since}, 0)


# ======================================================================
# Output: events as text lines or JSON lines (plain functions)
# ======================================================================


def format_time(timestamp: datetime) -> str:
    """A timestamp as a short, sortable UTC string with milliseconds.

    A time so near year 1 or 9999 that UTC falls outside the calendar is
    shown in its own offset instead of failing.
    """
    try:
        moment = timestamp.astimezone(timezone.utc)
        zone = "Z"
    except (OverflowError, ValueError):
        moment = timestamp
        offset = timestamp.utcoffset()
        minutes = int(offset.total_seconds() // 60) if offset is not None else 0
        zone = "%s%02d:%02d" % ("-" if minutes < 0 else "+", abs(minutes) // 60, abs(minutes) % 60)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03d%s" % (
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second,
        moment.microsecond // 1000, zone,
    )


# Remote text that must not reach a terminal raw: C0 controls but tab (and
# newline, unless asked), DEL, C1 controls (an ESC sequence can rewrite the
# screen or the clipboard), and lone surrogates (legal in JSON, unprintable in UTF-8).
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_INVISIBLE_ONE_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(match: Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, one_line: bool = False) -> str:
    """``text`` with control characters (tab and newline aside; newline too
    with ``one_line``) and lone surrogates shown as escapes (ESC becomes the
    four characters ``\\x1b``), safe to print on a terminal."""
    pattern = _INVISIBLE_ONE_LINE if one_line else _INVISIBLE
    if pattern.search(text) is None:  # nearly every line: no copy
        return text
    return pattern.sub(_escape, text)


def format_text(event: KernelEvent) -> Optional[str]:
    """Render an event as one human-readable line (None for heartbeats).

    The line has no colour; plugins add it.  Remote text is passed through
    :func:`visible` (newlines included), so an event is always one line and
    no escape sequence from a log line reaches a terminal.
    """
    if isinstance(event, LogEvent):
        return f"{format_time(event.timestamp)} {visible(event.message, one_line=True)}"
    if isinstance(event, InvocationStateEvent):
        invocation = event.invocation
        reason = f": {invocation.status_reason}" if invocation.status_reason else ""
        return f"{format_time(event.timestamp)} " + visible(f"[{invocation.status}]{reason}", one_line=True)
    if isinstance(event, ErrorEvent):
        return f"{format_time(event.timestamp)} [error] " + visible(
            f"{event.error.code}: {event.error.message}", one_line=True
        )
    if isinstance(event, UnknownEvent):
        return visible(f"[{event.event}] {json_line(event.raw, sort_keys=True)}", one_line=True)
    return None


def format_json(event: KernelEvent) -> str:
    """Render an event as one JSON line: the object the API sent, values as sent."""
    return json_line(event.raw)


_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_ASCII = re.compile("[^\x00-\x7f]")


def json_line(value: object, sort_keys: bool = False) -> str:
    """``value`` as one line of compact JSON that is valid UTF-8 and means
    exactly ``value``: non-ASCII characters as they are, lone surrogates as
    ``\\ud800`` escapes, and nesting deeper than the JSON encoder's
    recursion allows (the parser accepts it) encoded without recursion."""
    try:
        line = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
    except RecursionError:
        line = _dumps_flat(value, sort_keys)
    # The structure of a JSON text is ASCII: a surrogate can only be inside a
    # string, where its \u escape denotes the very same character.
    return _SURROGATE.sub(_escape, line) if _SURROGATE.search(line) else line


def _ascii_json(line: str) -> str:
    """A JSON text with every non-ASCII character as a ``\\u`` escape (the same value)."""
    return _NON_ASCII.sub(_ascii_escape, line)


def _ascii_escape(match: Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON writes characters beyond the BMP
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _dumps_flat(value: object, sort_keys: bool) -> str:
    """json.dumps(value, ensure_ascii=False, separators=(",", ":")) with an
    explicit stack instead of recursion, for JSON nested too deep for it."""
    out: List[str] = []
    # (True, text) is output as is; (False, value) is a value still to encode.
    todo: List[Tuple[bool, object]] = [(False, value)]
    while todo:
        done, item = todo.pop()
        if done:
            out.append(str(item))
        elif isinstance(item, dict):
            keys = sorted(item) if sort_keys else list(item)
            pending: List[Tuple[bool, object]] = [(True, "{")]
            for index, key in enumerate(keys):
                pending.append((True, ("," if index else "") + json.dumps(str(key), ensure_ascii=False) + ":"))
                pending.append((False, item[key]))
            pending.append((True, "}"))
            todo.extend(reversed(pending))
        elif isinstance(item, (list, tuple)):
            pending = [(True, "[")]
            for index, element in enumerate(item):
                if index:
                    pending.append((True, ","))
                pending.append((False, element))
            pending.append((True, "]"))
            todo.extend(reversed(pending))
        else:  # str, int, float, bool, None: never recursive
            out.append(json.dumps(item, ensure_ascii=False))
    return "".join(out)


def format_result(invocation: Invocation, elapsed: Optional[float] = None) -> str:
    """Describe a finished invocation: status, reason, duration and output."""
    lines = [
        visible(
            f"invocation {invocation.id} ({invocation.app_name} {invocation.action_name} "
            f"v{invocation.version}) {invocation.status}"
            + (f": {invocation.status_reason}" if invocation.status_reason else ""),
            one_line=True,
        )
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
        lines.append("output: " + visible(output))
    return "\n".join(lines)


def tagged_text(line: str, invocation_id: str, width: int = 0) -> str:
    """A text line prefixed with its invocation id, padded to ``width`` (several follows in one output)."""
    return f"{visible(invocation_id, one_line=True).ljust(width)}  {line}"


def tagged_json(line: str, invocation_id: str) -> str:
    """A JSON-object line (as :func:`format_json` makes) with ``"invocation_id"`` added first."""
    return '{"invocation_id":' + json_line(invocation_id) + ("," + line[1:] if line != "{}" else "}")


def print_line(line: str, json_of: Optional[KernelEvent] = None) -> None:
    """Print ``line`` on standard output and flush; where stdout cannot
    encode it (a Latin-1 locale, say), lose nothing: a JSON line (give its
    event as ``json_of``) is written with ``\\u`` escapes, a text line with
    backslash escapes."""
    try:
        print(line, flush=True)
    except UnicodeEncodeError:
        if json_of is not None:
            print(_ascii_json(line), flush=True)
        else:
            encoding = getattr(sys.stdout, "encoding", None) or "ascii"
            print(line.encode(encoding, "backslashreplace").decode(encoding), flush=True)


# ======================================================================
# Hooks
# ======================================================================



EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_GAVE_UP = 4
EXIT_PLUGIN_ERROR = 5
EXIT_NOT_FINISHED = 6
EXIT_REMEMBERED_SUCCEEDED = 10
EXIT_REMEMBERED_FAILED = 11
EXIT_INTERNAL = 70
EXIT_LOCKED = 75
EXIT_SIGHUP = 129
EXIT_SIGINT = 130
EXIT_SIGPIPE = 141
EXIT_SIGTERM = 143

EXIT_CODES: Tuple[Tuple[int, str], ...] = (
    (EXIT_SUCCEEDED, "the invocation succeeded"),
    (EXIT_FAILED, "the invocation failed"),
    (EXIT_USAGE, "usage or configuration error (bad option, no API key, bad state file)"),
    (EXIT_REFUSED, "the API refused and retrying cannot help (400, 401, 403, 404)"),
    (EXIT_GAVE_UP, "gave up: retries exhausted, idle too often, or the deadline passed"),
    (EXIT_PLUGIN_ERROR, "a plugin failed (the invocation itself succeeded)"),
    (EXIT_NOT_FINISHED, "status: the invocation is queued or running"),
    (EXIT_REMEMBERED_SUCCEEDED, "the state file says it already succeeded (reported by an earlier run)"),
    (EXIT_REMEMBERED_FAILED, "the state file says it already failed (reported by an earlier run)"),
    (EXIT_INTERNAL, "internal error (a bug; state saved first)"),
    (EXIT_LOCKED, "another run holds the state file's lock"),
    (EXIT_SIGHUP, "hung up (SIGHUP; state saved first)"),
    (EXIT_SIGINT, "interrupted (SIGINT, Ctrl-C; state saved first)"),
    (EXIT_SIGPIPE, "the reader of standard output went away (state saved first)"),
    (EXIT_SIGTERM, "terminated (SIGTERM; state saved first)"),
)
"""Every exit status of the command line and its meaning (``--help`` and the README list these)."""


_SAVE_EVERY = 1.0  # seconds between checkpoint saves while following


def _exit_for_status(status: str) -> int:
    return EXIT_SUCCEEDED if status == "succeeded" else EXIT_FAILED


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

    def __init__(self, follower: Union[Follower, AsyncFollower], options: Mapping[str, object]) -> None:
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


HOOK_NAMES: Tuple[str, ...] = tuple(name for name in vars(HookSpecs) if name.startswith(("on_", "add_")))
"""Every hook a plugin can implement, in the order they first fire (from :class:`HookSpecs`)."""


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


class _Signalled(KeyboardInterrupt):
    """Internal: SIGTERM or SIGHUP arrived; unwinds the follow like Ctrl-C."""

    def __init__(self, exit_code: int, name: str) -> None:
        super().__init__(name)
        self.exit_code = exit_code
        self.name = name


class _OutOfTime(KeyboardInterrupt):
    """Internal: the deadline passed while a plugin hook ran (raised by the
    command line's alarm, only inside a hook call); ends the follow like Ctrl-C."""


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
        # What bounds each call in time (the command line's deadline); by default nothing.
        self.bound: Callable[[int], ContextManager[None]] = lambda calls_left: contextlib.nullcontext()
        # A count, not the exceptions: their tracebacks would keep every
        # failing call's events alive for the whole follow.
        self.failures = 0
        # By context, held weakly: keyed by id() instead, a context freed after its
        # follow (watch makes them for hours) could lend its address, and so its
        # failures, to a later follow's context.
        import weakref

        self._context_failures: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        self._reported: set[Tuple[str, str]] = set()

    def _call(self, hook: str, **kwargs: object) -> None:
        impls = self._impls.get(hook, ())
        for index, impl in enumerate(impls):
            if self.trace:
                print(f"kernel-sse trace: {impl.plugin}.{hook}({', '.join(impl.argnames)})", file=sys.stderr)
            try:
                with self.bound(len(impls) - index):
                    impl.function(*[kwargs[name] for name in impl.argnames])
            except _OutOfTime:
                if hook != "on_finish":
                    raise  # the deadline passed inside a plugin: the follow ends
                self._failed(kwargs.get("context"))
                print(f"kernel-sse: plugin '{impl.plugin}' did not finish {hook} in time; stopped it",
                      file=sys.stderr)
            except (BrokenPipeError, KeyboardInterrupt, UsageError):
                # The reader of standard output is gone (nobody to print for),
                # the user or a signal stops the run, or a plugin refuses its
                # options (exit 2, before the first request when raised in on_start).
                raise
            except BaseException as exc:  # noqa: B036 - sys.exit or CancelledError in a hook is a plugin error too
                self._failed(kwargs.get("context"))
                if self.strict:  # fatal: the caller reports it, once
                    raise PluginFailed(impl.plugin, hook, exc) from exc
                if (impl.plugin, hook) not in self._reported:
                    self._reported.add((impl.plugin, hook))
                    print(
                        _redact(f"kernel-sse: plugin '{impl.plugin}' failed in {hook}: {_describe(exc)}"),
                        file=sys.stderr,
                    )

    def _failed(self, context: object) -> None:
        self.failures += 1
        if context is not None:
            self._context_failures[context] = self._context_failures.get(context, 0) + 1

    def failures_in(self, context: FollowContext) -> int:
        """How many hook calls raised during one follow (several may share these hooks)."""
        return self._context_failures.get(context, 0)

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


def _follow_through_hooks(
    follower: Follower,
    hooks: Hooks,
    context: FollowContext,
    save: Optional[Callable[[Checkpoint, Optional[str]], None]] = None,
    describe: Callable[[BaseException], str] = str,
    finishing: Callable[[], None] = lambda: None,
) -> Tuple[Outcome, Optional[BaseException]]:
    """Follow to the end, hand every event to the hooks, and map how it ended
    to an :class:`Outcome` (and the error behind it).

    Every ending goes through the same tail (:func:`_finish_follow`): the
    checkpoint is saved (when ``save`` is given), then ``on_finish`` runs.
    A plugin's failure is isolated and counted; an event whose hooks were
    interrupted is not counted as delivered, so a resume hands it over again.
    """
    failure: Optional[BaseException] = None
    try:
        hooks.on_start(context)
        saved_at = time.monotonic()
        for event in follower:
            saved_at = _hand_over(event, follower.state, hooks, context, save, saved_at)
        outcome = _conclude(follower.state, hooks, context, save)
    except BaseException as exc:  # noqa: B036 - every ending is mapped, or raised again below
        failure = exc
        outcome = _outcome_of(exc, follower.state, follower.deadline, describe)
    finally:
        follower.close()
    outcome, stopped = _finish_follow(follower.state, hooks, context, outcome, save, describe, finishing)
    return outcome, stopped or failure


async def _afollow_through_hooks(
    follower: AsyncFollower,
    hooks: Hooks,
    context: FollowContext,
    save: Optional[Callable[[Checkpoint, Optional[str]], None]],
    describe: Callable[[BaseException], str],
    finishing: Callable[[], None],
    interrupted: Callable[[], Tuple[int, str]],
) -> Tuple[Outcome, Optional[BaseException]]:
    """:func:`_follow_through_hooks` on the asyncio driver; a cancelled
    follow ends ``interrupted`` with the exit status ``interrupted()`` names."""
    import asyncio

    failure: Optional[BaseException] = None
    try:
        hooks.on_start(context)
        saved_at = time.monotonic()
        async for event in follower:
            saved_at = _hand_over(event, follower.state, hooks, context, save, saved_at)
        outcome = _conclude(follower.state, hooks, context, save)
    except asyncio.CancelledError as exc:
        code, name = interrupted()
        failure, outcome = exc, Outcome("interrupted", code, follower.invocation, f"stopped by {name}")
    except BaseException as exc:  # noqa: B036 - every ending is mapped, or raised again below
        failure = exc
        outcome = _outcome_of(exc, follower.state, follower.deadline, describe)
    finally:
        await follower.aclose()
    outcome, stopped = _finish_follow(follower.state, hooks, context, outcome, save, describe, finishing)
    return outcome, stopped or failure


def _hand_over(
    event: KernelEvent,
    state: FollowState,
    hooks: Hooks,
    context: FollowContext,
    save: Optional[Callable[[Checkpoint, Optional[str]], None]],
    saved_at: float,
) -> float:
    """One event to the hooks (not counted as delivered if they are cut
    short); save the checkpoint about once a second; return when it was saved."""
    try:
        hooks.on_event(event, context)
    except BaseException:
        state.undeliver_last()
        raise
    if save is not None and time.monotonic() - saved_at >= _SAVE_EVERY:
        save(state.checkpoint, None)
        return time.monotonic()
    return saved_at


def _conclude(
    state: FollowState, hooks: Hooks, context: FollowContext, save: Optional[Callable[[Checkpoint, Optional[str]], None]]
) -> Outcome:
    """The terminal state was delivered: record it, tell the plugins."""
    invocation = state.invocation
    assert invocation is not None and invocation.is_terminal
    if save is not None:
        save(state.checkpoint, invocation.status)
    hooks.on_terminal(invocation, context)
    return Outcome(invocation.status, _exit_for_status(invocation.status), invocation)


def _outcome_of(
    error: BaseException, state: FollowState, deadline: Optional[float], describe: Callable[[BaseException], str]
) -> Outcome:
    """How a follow that raised ``error`` ended (the one mapping from errors
    to outcomes and exit codes); what is not an ending is raised again."""
    import traceback

    invocation = state.invocation
    if isinstance(error, APIStatusError):
        return Outcome("refused", EXIT_REFUSED, invocation, describe(error))
    if isinstance(error, _OutOfTime):
        error = DeadlineExceeded(f"the deadline of {deadline or 0:g}s passed (inside a plugin hook) before the "
                                 "invocation finished", fix="raise {deadline}, or resume later from the {checkpoint}")
    if isinstance(error, DeadlineExceeded):
        return Outcome("deadline", EXIT_GAVE_UP, invocation, describe(error))
    if isinstance(error, (ConnectionFailed, StreamTimeout)):
        return Outcome("gave_up", EXIT_GAVE_UP, invocation, describe(error))
    if isinstance(error, PluginFailed):
        return Outcome("plugin_error", EXIT_PLUGIN_ERROR, invocation, describe(error))
    if isinstance(error, UsageError):  # a plugin refused its options, or the state could not be saved
        return Outcome("usage_error", EXIT_USAGE, invocation, describe(error))
    if isinstance(error, BrokenPipeError):
        return Outcome("interrupted", EXIT_SIGPIPE, invocation, None)
    if isinstance(error, _Signalled):
        return Outcome("interrupted", error.exit_code, invocation, f"stopped by {error.name}")
    if isinstance(error, KeyboardInterrupt):
        return Outcome("interrupted", EXIT_SIGINT, invocation, "interrupted (SIGINT)")
    if isinstance(error, Exception):  # a bug: report it, but save the state and run on_finish first
        traceback.print_exception(type(error), error, error.__traceback__)
        return Outcome("internal_error", EXIT_INTERNAL, invocation,
                       f"internal error ({_describe(error)}); please report it with the traceback above")
    raise error  # SystemExit and the like: not a follow's ending


def _finish_follow(
    state: FollowState,
    hooks: Hooks,
    context: FollowContext,
    outcome: Outcome,
    save: Optional[Callable[[Checkpoint, Optional[str]], None]],
    describe: Callable[[BaseException], str],
    finishing: Callable[[], None],
) -> Tuple[Outcome, Optional[KeyboardInterrupt]]:
    """Every ending's tail: save the checkpoint, then run ``on_finish``.

    A signal or Ctrl-C that arrives in this tail (while saving, or in a
    plugin's ``on_finish``) cuts it short but is not lost: the ending
    becomes ``interrupted`` and the interrupt is returned, for the caller
    to raise again (``run_follow``) or to stop the other follows (``follow A B``).
    """
    stopped: Optional[KeyboardInterrupt] = None
    if save is not None and outcome.status not in TERMINAL_STATUSES:
        try:
            save(state.checkpoint, None)
        except UsageError as exc:
            outcome = Outcome("usage_error", EXIT_USAGE, state.invocation, describe(exc))
        except KeyboardInterrupt as exc:  # the previous file is still whole
            stopped = exc
    if stopped is not None and outcome.status != "interrupted":
        outcome = _outcome_of(stopped, state, None, describe)
    finishing()
    try:
        hooks.on_finish(outcome, context)
    except PluginFailed as exc:
        outcome = Outcome("plugin_error", EXIT_PLUGIN_ERROR, outcome.invocation,
                          (outcome.message + "; " if outcome.message else "") + describe(exc))
    except KeyboardInterrupt as exc:  # the user insists: the state is saved, stop here
        stopped = stopped or exc
        if outcome.status != "interrupted":
            outcome = _outcome_of(exc, state, None, describe)
    if stopped is not None:
        return outcome, stopped
    if outcome.exit_code == EXIT_SUCCEEDED and hooks.failures_in(context):
        outcome = Outcome("plugin_error", EXIT_PLUGIN_ERROR, outcome.invocation, outcome.message)
    return outcome, None


def run_follow(
    follower: Follower,
    plugins: Sequence[object] = (),
    *,
    options: Optional[Mapping[str, object]] = None,
    strict_plugins: bool = False,
    save: Optional[Callable[[Checkpoint, Optional[str]], None]] = None,
) -> Outcome:
    """Follow to the end through plugin hooks, as the command line does, and
    return how it ended.

    ``plugins`` are plugin objects: modules or instances whose methods are
    named after hooks (marked with ``kernel_sse.hookimpl`` or not), e.g. the
    bundled ``kernel_sse_plugins.console``.  Each one's failure is isolated
    and reported once; ``strict_plugins`` stops at the first.  ``options``
    are what hooks see as ``context.options`` (the bundled plugins read
    their command-line options there, e.g. ``{"jsonl_file": "out.jsonl"}``).
    ``save(checkpoint, finished_status)`` is called about once a second and
    at the end.  Exit codes and signals stay with the caller: Ctrl-C ends the
    follow with outcome ``interrupted`` (``on_finish`` runs), then is raised again.
    """
    hooks = _plugin_hooks(plugins, strict_plugins)
    context = FollowContext(follower, dict(options or {}))
    outcome, failure = _follow_through_hooks(follower, hooks, context, save)
    if isinstance(failure, KeyboardInterrupt) and not isinstance(failure, _OutOfTime):
        raise failure
    return outcome


def _plugin_hooks(plugins: Sequence[object], strict: bool) -> Hooks:
    """Hooks over plugin objects, with pluggy's validation where it is installed."""
    names = [getattr(plugin, "__name__", None) or type(plugin).__name__ for plugin in plugins]
    names = [name if names.count(name) == 1 else f"{name}-{index}" for index, name in enumerate(names)]
    try:
        plugin_set: Optional[PluginSet] = PluginSet()
    except PluginError:
        plugin_set = None
    # Plugins with hookimpl marks go through pluggy (its validation, and only the
    # marked functions count); plain objects without a single mark are called
    # by their hook-named methods, as without pluggy.  Hooks run in the order
    # the plugins are given.
    marked = [plugin_set is not None and _has_marks(plugin) for plugin in plugins]
    by_pluggy: Mapping[str, Sequence[_Impl]] = {}
    if plugin_set is not None:
        for plugin, name, is_marked in zip(plugins, names, marked):
            if is_marked:
                plugin_set.register(plugin, name, "api")
        by_pluggy = plugin_set.hooks(strict=strict)._impls
    impls: Dict[str, List[_Impl]] = {}
    for plugin, name, is_marked in zip(plugins, names, marked):
        found = {hook: [impl for impl in some if impl.plugin == name] for hook, some in by_pluggy.items()} \
            if is_marked else _impls_of(plugin, name)
        for hook, mine in found.items():
            impls.setdefault(hook, []).extend(mine)
    return Hooks(impls, strict=strict)


def _has_marks(plugin: object) -> bool:
    """Whether any attribute of ``plugin`` carries the ``kernel_sse.hookimpl`` mark."""
    return any(getattr(getattr(plugin, attribute, None), "kernel_sse_impl", None) is not None
               for attribute in dir(plugin))


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
        self.blocked: List[str] = []

    def register(self, plugin: object, name: str, source: str, version: Optional[str] = None) -> None:
        """Register one plugin object (usually a module) under ``name``."""
        if self._manager.is_blocked(name) or self._manager.has_plugin(name):
            return
        _check_hook_names(plugin, name, source)
        try:
            self._manager.register(plugin, name=name)
            self._manager.check_pending()
        except Exception as exc:  # pluggy's validation errors name the bad hook
            if self._manager.is_registered(plugin):
                self._manager.unregister(plugin)
            reason = re.sub(r" in (hook)?impl(ementation)? .*| in plugin <.*", "", str(exc))
            raise PluginError(f"plugin '{name}' ({source}) is not valid: {reason}") from None
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
        self.blocked.append(name)

    def unknown_blocked(self) -> List[str]:
        """Names blocked with ``no:`` that no plugin has (a typo, most likely)."""
        known = set(BUNDLED_PLUGINS) | {entry.name for entry in _entry_points("kernel_sse")} | set(self.sources)
        return [name for name in self.blocked if name not in known]

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


def _check_hook_names(plugin: object, name: str, source: str) -> None:
    """Refuse a hook implementation whose name is not a hook, naming the closest one."""
    import difflib

    for attribute in dir(plugin):
        function = getattr(plugin, attribute, None)
        if getattr(function, "kernel_sse_impl", None) is None or attribute in HOOK_NAMES:
            continue
        close = difflib.get_close_matches(attribute, HOOK_NAMES, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "the hooks are " + ", ".join(HOOK_NAMES)
        raise PluginError(f"plugin '{name}' ({source}) is not valid: '{attribute}' is not a kernel-sse hook; {hint}")


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


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h|d)")
_STATE_KIND = "kernel-sse-state"
_FINISH_GRACE = 0.8  # seconds the plugins' on_finish may take once the deadline has passed


def _on_signal(signum: int, frame: object) -> None:
    import signal

    # Unwinding from wherever the signal landed can leave objects half built
    # (an http.client response mid-read); their cleanup complaints are noise now.
    sys.unraisablehook = _quiet_unraisable
    if signum == getattr(signal, "SIGHUP", None):
        raise _Signalled(EXIT_SIGHUP, "SIGHUP")
    raise _Signalled(EXIT_SIGTERM, "SIGTERM")


def _quiet_unraisable(unraisable: Any) -> None:
    """Ignore errors raised while collecting objects after the run was interrupted."""


class _HookTimer:
    """The command line's hard stop at ``--deadline`` for what the follower
    cannot bound by itself: plugin hooks (a hook that sleeps or blocks).

    One SIGALRM timer, armed for the deadline; its handler raises only while
    a hook runs (:meth:`bound`), so the follow's own bookkeeping is never
    interrupted half-way (the follower's watchdog bounds the network).
    Outside a hook it just looks again a moment later.  Once the deadline
    has passed, ``on_finish`` gets :data:`_FINISH_GRACE` seconds in all,
    shared among the plugins still to run.  Works in the main thread only
    (elsewhere hooks are not bounded).
    """

    def __init__(self, deadline_at: Optional[float]) -> None:
        import signal
        import threading

        self.deadline_at = deadline_at
        self._until: Optional[float] = deadline_at
        self._inside = 0
        self._active = (
            deadline_at is not None
            and hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread()
        )
        self._previous: Any = None

    def __enter__(self) -> _HookTimer:
        import signal

        if self._active:
            self._previous = signal.signal(signal.SIGALRM, self._alarm)
            self._arm()
        return self

    def __exit__(self, *exc_info: object) -> None:
        import signal

        if self._active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)

    def finishing(self) -> None:
        """The follow is over: from now on hooks share the finishing grace."""
        if self.deadline_at is not None and time.monotonic() >= self.deadline_at:
            self._until = time.monotonic() + _FINISH_GRACE
        else:
            self._until = None if self.deadline_at is None else self.deadline_at + _FINISH_GRACE

    @contextlib.contextmanager
    def bound(self, calls_left: int) -> Iterator[None]:
        """Run one hook call, interrupted (:class:`_OutOfTime`) at its time limit."""
        if not self._active or self._until is None:
            yield
            return
        import signal

        now = time.monotonic()
        limit = self._until
        if self.deadline_at is not None and now >= self.deadline_at:
            limit = now + max(0.0, self._until - now) / max(1, calls_left)  # a fair share of the grace
        if now >= limit:
            raise _OutOfTime()
        self._inside += 1
        signal.setitimer(signal.ITIMER_REAL, max(0.001, limit - now))
        try:
            yield
        finally:
            self._inside -= 1
            self._arm()

    def _arm(self) -> None:
        import signal

        if self._until is not None:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, self._until - time.monotonic()))

    def _alarm(self, signum: int, frame: object) -> None:
        import signal

        if self._inside:
            raise _OutOfTime()
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # not in a hook: look again soon


class _BuiltinOutput:
    """Text or JSON lines on stdout with no plugin at all (a lone kernel_sse.py).

    The bundled ``console`` and ``jsonl`` plugins replace it when installed.
    """

    def __init__(self, output_format: str, quiet: bool) -> None:
        self.output_format = output_format
        self.quiet = quiet

    def _write(self, event: KernelEvent, context: FollowContext) -> None:
        if self.quiet:
            return
        line = format_json(event) if self.output_format == "jsonl" else format_text(event)
        if line is None:
            return
        width = context.options.get("tag_width")
        if isinstance(width, int):  # several follows share the output
            if self.output_format == "jsonl":
                line = tagged_json(line, context.invocation_id)
            else:
                line = tagged_text(line, context.invocation_id, width)
        print_line(line, event if self.output_format == "jsonl" else None)

    def on_log(self, event: LogEvent, context: FollowContext) -> None:
        """Print a log line."""
        self._write(event, context)

    def on_state(self, event: InvocationStateEvent, context: FollowContext) -> None:
        """Print a state change."""
        self._write(event, context)

    def on_error(self, event: ErrorEvent, context: FollowContext) -> None:
        """Print an error event."""
        self._write(event, context)

    def on_heartbeat(self, event: HeartbeatEvent, context: FollowContext) -> None:
        """Heartbeats appear in JSON lines only."""
        self._write(event, context)

    def on_unknown(self, event: UnknownEvent, context: FollowContext) -> None:
        """Print an event of an unknown kind."""
        self._write(event, context)

    def on_terminal(self, invocation: Invocation, context: FollowContext) -> None:
        """Print the result (text output only: JSON lines stay pure); each of
        its lines tagged when several follows share the output."""
        if self.output_format == "text":
            result = format_result(invocation, context.elapsed)
            width = context.options.get("tag_width")
            if isinstance(width, int):
                result = "\n".join(tagged_text(row, context.invocation_id, width) for row in result.split("\n"))
            print_line(result)


def _seconds(flag: str) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds > 0 (nan and inf refused)."""
    import argparse
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a number of seconds greater than 0 (e.g. 90)")
        return value

    return parse


def _count(flag: str) -> Callable[[str], int]:
    """An argparse type: a whole number, 0 or more."""
    import argparse

    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()):
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a whole number, 0 or more (e.g. 10)")
        return int(text)

    return parse


def _add_follow_options(parser: argparse.ArgumentParser) -> None:
    """The options every following command shares."""
    parser.add_argument("--format", choices=("text", "jsonl"), default="text",
                        help="text lines, or one JSON object per event (default: text)")
    parser.add_argument("--idle-timeout", type=_seconds("--idle-timeout"), default=90.0, metavar="SECONDS",
                        help="seconds without any event (heartbeats count) before reconnecting (default: 90)")
    parser.add_argument("--deadline", type=_seconds("--deadline"), default=None, metavar="SECONDS",
                        help="give up (exit 4) if the invocation has not finished after this many seconds, "
                        "whatever blocks (default: none)")
    parser.add_argument("--max-retries", type=_count("--max-retries"), default=10, metavar="N",
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


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    """Where the API is and how to authenticate."""
    parser.add_argument("--base-url", default=None,
                        help=f"API base URL (default: $KERNEL_BASE_URL or {DEFAULT_BASE_URL})")
    parser.add_argument("--api-key-file", metavar="PATH",
                        help="read the API key from PATH (default: $KERNEL_API_KEY)")
    parser.add_argument("--allow-insecure-http", action="store_true",
                        help="allow a plain http:// base URL that is not this machine (the key travels unencrypted: "
                        "only inside a trusted network)")


def _epilog() -> str:
    return "exit status:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)


def _build_parser() -> Tuple[argparse.ArgumentParser, List[argparse.ArgumentParser]]:
    """The command-line parser, and the subparsers plugins may extend."""
    import argparse

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="kernel-sse",
        description="Follow a Kernel invocation's live event stream.",
        epilog=_epilog(),
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"kernel-sse {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    follow_parser = commands.add_parser(
        "follow", help="follow an invocation until it finishes", epilog=_epilog(), formatter_class=formatter
    )
    follow_parser.add_argument("invocation_ids", nargs="+", metavar="INVOCATION_ID",
                               help="one or more invocations; several are followed at once, their lines tagged "
                               "with the id (--state-file then names a folder: one file per invocation)")
    _add_api_options(follow_parser)
    follow_parser.add_argument("--since", default=None,
                               help="start at this RFC 3339 time (with a zone: ...Z or +01:00) or this long ago "
                               "(5m, 1h30m, 2d)")
    _add_follow_options(follow_parser)
    invoke_parser = commands.add_parser(
        "invoke", help="start an action and follow it to its outcome", epilog=_epilog(), formatter_class=formatter
    )
    invoke_parser.add_argument("app", metavar="APP")
    invoke_parser.add_argument("action", metavar="ACTION")
    invoke_parser.add_argument("--version", dest="app_version", required=True, metavar="VERSION",
                               help="the app version to run (required)")
    payload = invoke_parser.add_mutually_exclusive_group()
    payload.add_argument("--payload", metavar="JSON", help="the action's input, a JSON document")
    payload.add_argument("--payload-file", metavar="PATH", help="read the JSON input from PATH (- for standard input)")
    invoke_parser.add_argument("--async-timeout", type=_count("--async-timeout"), metavar="SECONDS",
                               help="how long the invocation may run, 10 to 3600 (the API's default: 900)")
    invoke_parser.add_argument("--cancel-on-exit", action="store_true",
                               help="if this run ends before the invocation does (deadline, signal, gave up), cancel it")
    _add_api_options(invoke_parser)
    _add_follow_options(invoke_parser)
    watch_parser = commands.add_parser(
        "watch", help="follow every running and queued invocation, and each new one, until --deadline or Ctrl-C",
        epilog=_epilog(), formatter_class=formatter,
    )
    for flag, dest, what in (("--app", "app", "app name"), ("--action", "action", "action name"),
                             ("--version", "app_version", "app version")):
        watch_parser.add_argument(flag, dest=dest, metavar=dest.upper(), help=f"only this {what}")
    watch_parser.add_argument("--poll", type=_seconds("--poll"), default=2.0, metavar="SECONDS",
                              help="look for new invocations this often, slowing to every 30 s while none appear "
                              "(default: 2)")
    _add_api_options(watch_parser)
    _add_follow_options(watch_parser)
    status_parser = commands.add_parser(
        "status", help="show an invocation's status (exit 0 succeeded, 1 failed, 6 queued or running)"
    )
    status_parser.add_argument("invocation_id", metavar="INVOCATION_ID")
    status_parser.add_argument("--format", choices=("text", "jsonl"), default="text")
    _add_api_options(status_parser)
    list_parser = commands.add_parser("list", help="list invocations, newest first")
    for flag, dest, what in (("--app", "app", "app name"), ("--action", "action", "action name"),
                             ("--version", "app_version", "app version")):
        list_parser.add_argument(flag, dest=dest, metavar=dest.upper(), help=f"only this {what}")
    list_parser.add_argument("--status", choices=("queued", "running", "succeeded", "failed"))
    list_parser.add_argument("--since", help="started since this RFC 3339 time or this long ago (5m, 2h, 1d)")
    list_parser.add_argument("--limit", type=_count("--limit"), metavar="N", help="at most N invocations")
    list_parser.add_argument("--format", choices=("text", "jsonl"), default="text")
    _add_api_options(list_parser)
    demo_parser = commands.add_parser(
        "demo", help="follow a demo invocation on a local emulator (offline)", formatter_class=formatter
    )
    demo_parser.add_argument("--speed", type=_seconds("--speed"), default=1.0,
                             help="run the ~10 s demo this many times faster")
    _add_follow_options(demo_parser)
    plugins_parser = commands.add_parser("plugins", help="list the loaded plugins")
    plugins_parser.add_argument("--json", action="store_true", help="as a JSON list")
    plugins_parser.add_argument("-p", dest="plugins", action="append", default=[], metavar="PLUGIN",
                                help="also load this plugin; -p no:NAME blocks one")
    return parser, [follow_parser, invoke_parser, watch_parser, demo_parser]


def _parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse, so that a bad option after a command shows that command's usage."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = getattr(args, "command", None)
        choices = next(
            (action.choices for action in parser._actions if isinstance(action.choices, dict)), {}
        )  # the subparsers' map: argparse keeps no public handle on it
        (choices.get(command) or parser).error("unrecognized arguments: " + " ".join(extras))
    return args


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
    for name in plugins.unknown_blocked():
        _say(f"warning: -p no:{name} blocks no plugin (there is none by that name; see 'kernel-sse plugins')")
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


def _say(message: str) -> None:
    """One diagnostic line on stderr, secrets redacted."""
    print(f"kernel-sse: {visible(_redact(message), one_line=True)}", file=sys.stderr, flush=True)


def _cli_terms(args: argparse.Namespace) -> Dict[str, str]:
    """How errors name settings on the command line (see :func:`describe_error`)."""
    terms = dict(PYTHON_TERMS)
    terms.update({
        "api_key": "--api-key-file" if getattr(args, "api_key_file", None) else "KERNEL_API_KEY (or --api-key-file PATH)",
        "base_url": "--base-url" if getattr(args, "base_url", None) else "KERNEL_BASE_URL (or --base-url)",
        "allow_insecure_http": "--allow-insecure-http",
        "checkpoint": "state file (--state-file PATH)",
        "deadline": "--deadline",
        "idle_timeout": "--idle-timeout",
        "max_retries": "--max-retries",
        "since": "--since",
        "max_event_bytes": "max_event_bytes (Python API only)",
        "payload": "--payload",
        "version": "--version",
    })
    return terms


def _read_api_key(args: argparse.Namespace) -> str:
    """The API key from --api-key-file or KERNEL_API_KEY."""
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as handle:
                key = handle.read(65536).strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise UsageError(f"cannot read the API key file '{args.api_key_file}' (--api-key-file): {reason}") from None
        if not key:
            raise UsageError(f"the API key file '{args.api_key_file}' (--api-key-file) is empty; put the key in it")
        _register_secret(key)
        return key
    key = os.environ.get("KERNEL_API_KEY", "").strip()
    if not key:
        raise UsageError("no API key: set KERNEL_API_KEY, or pass --api-key-file PATH")
    _register_secret(key)
    return key


def _since(value: Optional[str]) -> Optional[str]:
    """A --since the API accepts (durations in its form), or a UsageError saying
    what is wrong, before any request."""
    if value is None:
        return None
    text = value.strip().replace(" ", "").lower()
    if text and _DURATION_PART.sub("", text) == "":
        # Days are ours: the API takes hours (Go durations), so 2d is sent as 48h.
        parts = _DURATION_PART.findall(text)
        return "".join(f"{float(number) * 24:g}h" if unit == "d" else number + unit for number, unit in parts)
    try:
        parse_timestamp(value)
        return value
    except ValueError:
        pass
    try:
        naive = datetime.fromisoformat(value.strip())
    except ValueError:
        naive = None
    if naive is not None and naive.tzinfo is None:
        raise UsageError(
            f"--since '{value}' has no time zone: add Z for UTC ({naive.isoformat()}Z) or an offset (+01:00)"
        )
    raise UsageError(
        f"--since '{value}' is neither an RFC 3339 time (2025-06-20T12:00:00Z) nor a duration "
        "(30s, 5m, 1h30m, 2d; units s, m, h, d)"
    )


class _StateFile:
    """The ``--state-file``: a locked, atomically written JSON checkpoint.

    No file is opened through a symbolic link, and only regular files are
    used (a FIFO or a device would block or lose the state): both are
    refused with a usage error before anything else happens.
    """

    def __init__(self, path: str, invocation_id: Optional[str], action: Optional[Dict[str, str]] = None) -> None:
        self.path = path
        self.invocation_id = invocation_id
        # For ``invoke``: the app, action and version this state file starts,
        # and when a request to start it was last about to be sent.
        self.action = action
        self.requested_at: Optional[str] = None
        self._lock_fd: Optional[int] = None
        self.finished_status: Optional[str] = None
        self.recorded_at: Optional[str] = None

    def _problem(self, path: str, exc: OSError, doing: str) -> UsageError:
        import errno

        folder = os.path.dirname(os.path.abspath(path))
        if exc.errno == errno.ENOENT and not os.path.isdir(folder):
            return UsageError(f"cannot {doing} the state file '{self.path}': the folder '{folder}' does not exist; "
                              "create it or choose another --state-file")
        if exc.errno == errno.ELOOP:
            return UsageError(f"cannot {doing} the state file '{self.path}': '{path}' is a symbolic link, which "
                              "kernel-sse does not follow; use the real path or remove the link")
        return UsageError(f"cannot {doing} the state file '{self.path}': {exc.strerror}; "
                          "choose another --state-file")

    def _open(self, path: str, flags: int, doing: str) -> int:
        """Open a regular file without following a link and without blocking."""
        import stat

        flags |= os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise self._problem(path, exc, doing) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise UsageError(f"the state file '{self.path}' is not a regular file ('{path}' is a "
                             f"{_file_kind(mode)}); choose a file path for --state-file")
        return fd

    def lock(self) -> None:
        """Take the exclusive lock, or raise _Locked."""
        import fcntl

        fd = self._open(self.path + ".lock", os.O_RDWR | os.O_CREAT, "lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise _Locked(f"another run holds the lock on the state file '{self.path}'; try again later") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> Optional[Checkpoint]:
        """The saved checkpoint, None for a new file; UsageError if corrupt or foreign."""
        import errno

        try:
            fd = self._open(self.path, os.O_RDONLY, "read")
        except UsageError:
            try:
                os.lstat(self.path)
            except FileNotFoundError:
                if os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
                    return None
            raise
        try:
            with os.fdopen(fd, "rb") as handle:
                data = handle.read(64 * 1024 * 1024)
        except OSError as exc:
            raise UsageError(f"cannot read the state file '{self.path}': {exc.strerror}") from None
        del errno
        try:
            obj = json.loads(data.decode("utf-8"))
            if not isinstance(obj, dict) or obj.get("kind") != _STATE_KIND:
                raise ValueError("not a kernel-sse state file")
            if self.action is not None:
                self._load_invoke(obj)
            elif obj.get("invocation_id") != self.invocation_id:
                raise UsageError(
                    f"the state file '{self.path}' belongs to invocation {obj.get('invocation_id')!r}, "
                    f"not '{self.invocation_id}': use another --state-file"
                )
            finished = obj.get("finished_status")
            if finished is not None and finished not in TERMINAL_STATUSES:
                raise ValueError("bad finished_status")
            recorded = obj.get("recorded_at")
            self.finished_status = finished
            self.recorded_at = recorded if isinstance(recorded, str) else None
            return Checkpoint.from_json(obj.get("checkpoint"))
        except (ValueError, RecursionError) as exc:
            raise UsageError(
                f"the state file '{self.path}' is corrupt or not kernel-sse's ({exc}); move it away to start over"
            ) from None

    def _load_invoke(self, obj: Dict[str, Any]) -> None:
        """An ``invoke`` state file: it must start the same action; it may hold the id."""
        assert self.action is not None
        recorded = obj.get("invoke")
        if not isinstance(recorded, dict):
            raise UsageError(f"the state file '{self.path}' was written by 'follow', not 'invoke': "
                             "use another --state-file")
        if any(recorded.get(name) != value for name, value in self.action.items()):
            mine = " ".join(self.action.values())
            theirs = " ".join(str(recorded.get(name)) for name in self.action)
            raise UsageError(f"the state file '{self.path}' starts {theirs}, not {mine}: use another --state-file")
        invocation_id, requested_at = obj.get("invocation_id"), recorded.get("requested_at")
        if invocation_id is not None and not isinstance(invocation_id, str):
            raise ValueError("bad invocation_id")
        if requested_at is not None:
            parse_timestamp(requested_at)
        self.invocation_id, self.requested_at = invocation_id, requested_at

    def save(self, checkpoint: Checkpoint, finished_status: Optional[str]) -> None:
        """Write atomically: a new temp file (never through a link), fsync, rename, fsync the folder."""
        import tempfile

        obj = {
            "kind": _STATE_KIND,
            "version": 2,
            "invocation_id": self.invocation_id,
            "invoke": None if self.action is None else {**self.action, "requested_at": self.requested_at},
            "checkpoint": checkpoint.to_json(),
            "finished_status": finished_status,
            "recorded_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if finished_status else None,
        }
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, temp = tempfile.mkstemp(prefix=".kernel-sse-", dir=directory)  # O_EXCL: no link is followed
        except OSError as exc:
            raise self._problem(self.path, exc, "write") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(obj, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
            with contextlib.suppress(OSError):
                folder = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise UsageError(f"cannot write the state file '{self.path}': {exc.strerror}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


def _file_kind(mode: int) -> str:
    import stat

    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "device"),
                       (stat.S_ISBLK, "device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


class _Locked(KernelSSEError):
    """Internal: the state file is locked by another run (exit 75)."""


class _Run:
    """One command-line run: its options, the clock its --deadline counts from, its messages."""

    def __init__(self, args: argparse.Namespace, started: float) -> None:
        self.args = args
        self.started = started
        self.terms = _cli_terms(args)
        self.outcome: Optional[Outcome] = None

    def deadline_left(self) -> Optional[float]:
        """Seconds of --deadline left (counted from the start of the program)."""
        if self.args.deadline is None:
            return None
        return max(0.001, float(self.args.deadline) - (time.monotonic() - self.started))

    def deadline_at(self) -> Optional[float]:
        """The monotonic time --deadline ends at, or None."""
        return None if self.args.deadline is None else self.started + float(self.args.deadline)

    def message(self, error: BaseException) -> str:
        """An error's message in command-line terms."""
        return describe_error(error, self.terms)


def _run_follow(run: _Run, hooks: Hooks, api_key: str, base_url: Optional[str]) -> int:
    """Follow one invocation through the hooks; return the exit status."""
    args = run.args
    state = _StateFile(args.state_file, args.invocation_id) if args.state_file else None
    if state is not None:
        state.lock()
    try:
        checkpoint = state.load() if state is not None else None
        if state is not None and state.finished_status is not None:
            return _remembered(args.invocation_id, state)
        return _follow_to_the_end(run, hooks, api_key, base_url, state, checkpoint, _since(getattr(args, "since", None)))
    finally:
        if state is not None:
            state.unlock()


def _remembered(invocation_id: Optional[str], state: _StateFile) -> int:
    """Reported by an earlier run: say so once, and do not alert again."""
    when = f" at {state.recorded_at}" if state.recorded_at else ""
    _say(f"invocation {invocation_id} already {state.finished_status} (recorded{when} in "
         f"'{state.path}'); nothing new to report")
    return EXIT_REMEMBERED_SUCCEEDED if state.finished_status == "succeeded" else EXIT_REMEMBERED_FAILED


def _follow_to_the_end(
    run: _Run, hooks: Hooks, api_key: str, base_url: Optional[str], state: Optional[_StateFile],
    checkpoint: Optional[Checkpoint], since: Optional[str],
) -> int:
    args = run.args
    follower = Follower(
        args.invocation_id,
        api_key=api_key,
        base_url=base_url,
        since=since,
        checkpoint=checkpoint,
        idle_timeout=args.idle_timeout,
        deadline=args.deadline,
        max_retries=args.max_retries,
        allow_insecure_http=bool(getattr(args, "allow_insecure_http", False)),
    )
    follower.start_clock(run.started)
    return _drive(run, follower, hooks, state)


def _payload(args: argparse.Namespace) -> Optional[str]:
    """The --payload or --payload-file text, checked to be JSON (before any request)."""
    if args.payload_file is not None:
        source = "--payload-file " + args.payload_file
        try:
            if args.payload_file == "-":
                text = sys.stdin.read()
            else:
                with open(args.payload_file, encoding="utf-8") as handle:
                    text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise UsageError(f"cannot read {source}: {reason}") from None
    elif args.payload is not None:
        source, text = "--payload", args.payload
    else:
        return None
    try:
        json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None
    return text


def _run_invoke(run: _Run, hooks: Hooks, api_key: str, base_url: Optional[str]) -> int:
    """``kernel-sse invoke``: start the action once, then follow it like ``follow``.

    With ``--state-file``, the run records "about to invoke" (with the time)
    before the request and the new id right after, so a rerun follows that
    invocation instead of starting another; a rerun that finds only "about
    to invoke" looks the invocation up in the list before starting one.
    """
    args = run.args
    payload = _payload(args)
    if args.async_timeout is not None and not 10 <= args.async_timeout <= 3600:
        raise UsageError(f"--async-timeout {args.async_timeout} is out of range: give 10 to 3600 seconds")
    action = {"app": args.app, "action": args.action, "version": args.app_version}
    for flag, value in (("APP", args.app), ("ACTION", args.action), ("--version", args.app_version)):
        if not value.strip():
            raise UsageError(f"{flag} is empty: name the app, the action and its version")
    state = _StateFile(args.state_file, None, action) if args.state_file else None
    if state is not None:
        state.lock()
    try:
        checkpoint = state.load() if state is not None else None
        if state is not None and state.finished_status is not None:
            return _remembered(state.invocation_id, state)
        settings: Dict[str, Any] = dict(api_key=api_key, base_url=base_url, max_retries=args.max_retries,
                                        allow_insecure_http=bool(args.allow_insecure_http))
        invocation_id = state.invocation_id if state is not None else None
        if invocation_id is None:
            invocation_id = _start_once(run, state, payload, settings)
        else:
            _say(f"following invocation {invocation_id}, started by an earlier run with this state file")
        args.invocation_id = invocation_id
        finished = False
        try:
            code = _follow_to_the_end(run, hooks, api_key, base_url, state, checkpoint, None)
            invocation = run.outcome.invocation if run.outcome is not None else None
            finished = invocation is not None and invocation.is_terminal
            return code
        finally:
            if args.cancel_on_exit and not finished:
                _cancel_on_exit(run, invocation_id, settings)
    finally:
        if state is not None:
            state.unlock()


def _cancel_on_exit(run: _Run, invocation_id: str, settings: Dict[str, Any]) -> None:
    """--cancel-on-exit: the run ends before the invocation does; cancel it (a few seconds at most)."""
    try:
        cancelled = cancel_invocation(invocation_id, **{**settings, "max_retries": 1, "timeout": 5.0, "deadline": 8.0})
    except KernelSSEError as exc:
        _say(f"could not cancel invocation {invocation_id} (--cancel-on-exit): {run.message(exc)}")
        return
    if cancelled.status == "failed" and cancelled.status_reason is not None:
        _say(f"cancelled invocation {invocation_id} (--cancel-on-exit): it is now failed ({cancelled.status_reason})")
    elif cancelled.status == "failed":
        _say(f"cancelled invocation {invocation_id} (--cancel-on-exit): it is now failed")
    else:  # it finished on its own just before
        _say(f"did not cancel invocation {invocation_id} (--cancel-on-exit): it had already {cancelled.status}")


def _start_once(run: _Run, state: Optional[_StateFile], payload: Optional[str], settings: Dict[str, Any]) -> str:
    """Start the invocation (or find the one an earlier run started); record its id; return it."""
    args = run.args
    settings = {**settings, "deadline": run.deadline_left()}
    api = _api(**settings)
    invocation: Optional[Invocation] = None
    if state is not None and state.requested_at is not None:
        # An earlier run was about to start it and stopped before it knew the id.
        # requested_at is already _INVOKE_MATCH_SKEW early: give the list the rest of the settling time.
        since = state.requested_at
        age = (datetime.now(timezone.utc) - parse_timestamp(since)).total_seconds()
        wait = _INVOKE_SETTLE - age
        if wait > 0:
            _say(f"an earlier run with this state file was starting {args.app} {args.action} "
                 f"v{args.app_version}; looking for it in the list in {wait:.0f}s")
            api.sleep(wait, "waiting for the list to show an invocation an earlier run may have started")
        matches = _matching(api, args.app, args.action, args.app_version, payload, since)
        if len(matches) > 1:
            raise InvokeUncertain(
                f"an earlier run with this state file may have started {args.app} {args.action} "
                f"v{args.app_version}, and {len(matches)} invocations match", args.app, args.action,
                args.app_version, since)
        if matches:
            invocation = matches[0]
            _say(f"found invocation {invocation.id}, started by an earlier run with this state file; following it")

    def record(requested_at: str) -> None:
        if state is not None:
            state.requested_at = requested_at
            state.save(Checkpoint(), None)

    if invocation is None:
        try:
            invocation = invoke(args.app, args.action, version=args.app_version, payload_json=payload,
                                async_timeout=args.async_timeout, on_request=record, **settings)
        except (APIStatusError, ConnectionFailed, DeadlineExceeded):
            # Refused, or never sent (every attempt failed before sending, or 429/503 with Retry-After):
            # nothing was started, so a rerun need not look for it.
            if state is not None and state.requested_at is not None:
                state.requested_at = None
                state.save(Checkpoint(), None)
            raise
        started = f"started invocation {invocation.id} ({args.app} {args.action} v{args.app_version})"
        if args.command == "demo":
            _say(f"{started} on a local emulator")
        else:
            _say(f"{started}; follow it with: kernel-sse follow {invocation.id}")
    if state is not None:
        state.invocation_id = invocation.id
        state.save(Checkpoint(), None)
    return invocation.id


def _run_status(run: _Run, api_key: str) -> int:
    """``kernel-sse status ID``: one request; the exit status says the invocation's."""
    args = run.args
    if not args.invocation_id.strip():
        raise UsageError("INVOCATION_ID is empty")
    api = _api(api_key=api_key, base_url=args.base_url, allow_insecure_http=bool(args.allow_insecure_http))
    reply = api.request("GET", api.path("invocations", args.invocation_id))
    if reply.status != 200:
        _raise_refusal(reply.status, reply.body)
    obj = _api_object(reply.body, "invocation")
    invocation = _invocation_from(obj)
    if args.format == "jsonl":
        print_line(json_line(obj))
    else:
        print_line(_invocation_row(invocation))
    if invocation.status in TERMINAL_STATUSES:
        return _exit_for_status(invocation.status)
    return EXIT_NOT_FINISHED


def _invocation_cells(invocation: Invocation) -> List[str]:
    """id, app, action and version, status, started, duration: each shown on one line."""
    if invocation.finished_at is not None:
        took = f"{(invocation.finished_at - invocation.started_at).total_seconds():.1f}s"
    else:
        took = "-"
    cells = [invocation.id, invocation.app_name, f"{invocation.action_name} v{invocation.version}",
             invocation.status, format_time(invocation.started_at), took]
    return [visible(cell, one_line=True) for cell in cells]


def _invocation_row(invocation: Invocation, widths: Sequence[int] = ()) -> str:
    """id, app, action, status, started, duration: one aligned text line."""
    cells = _invocation_cells(invocation)
    padded = [cell.ljust(width) for cell, width in zip(cells, list(widths) + [0] * len(cells))]
    return "  ".join(padded).rstrip()


def _run_list(run: _Run, api_key: str) -> int:
    """``kernel-sse list``: every page, as aligned text lines or JSON lines."""
    args = run.args
    since = _since(args.since)
    limit = args.limit
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: give 1 or more (leave it out for every invocation)")
    pages = list_invocations(app=args.app, action=args.action, version=args.app_version, status=args.status,
                             since=since, limit=None if limit is None else min(limit, 100), api_key=api_key,
                             base_url=args.base_url, allow_insecure_http=bool(args.allow_insecure_http))
    rows: List[Invocation] = []
    seen: Set[str] = set()  # an invocation that moved to the next page while paging is shown once
    for page in pages:
        for invocation, obj in zip(page.invocations, page.raw):
            if (limit is not None and len(rows) >= limit) or invocation.id in seen:
                continue
            seen.add(invocation.id)
            rows.append(invocation)
            if args.format == "jsonl":
                print_line(json_line(obj))
        if limit is not None and len(rows) >= limit:
            break
    if args.format == "text":
        cells = [_invocation_cells(invocation) for invocation in rows]
        widths = [max((len(row[index]) for row in cells), default=0) for index in range(6)]
        for invocation in rows:
            print_line(_invocation_row(invocation, widths))
        if not rows:
            _say("no invocation matches")
    return EXIT_SUCCEEDED


def _drive(run: _Run, follower: Follower, hooks: Hooks, state: Optional[_StateFile]) -> int:
    """Run the follow, call the hooks, save state, and decide the exit status.

    Every ending goes through the same tail: the state is saved, then
    ``on_finish`` runs, then the message is printed (after the plugins, so
    a live status line is cleared first).
    """
    import traceback

    args = run.args
    context = FollowContext(follower, vars(args))
    announced: List[bool] = []

    def on_retry(attempt: int, delay: float, reason: str) -> None:
        hooks.on_reconnect(attempt, delay, reason, context)  # first: the console clears its status line
        if args.verbose:
            _say(f"{reason}; attempt {attempt} in {delay:.2f}s")
        elif follower.state.failures and not announced:
            announced.append(True)
            until = (f"until the deadline ({args.deadline:g}s)" if args.deadline is not None
                     else f"up to {args.max_retries} times in a row")
            _say(f"{reason}; retrying {until} (-v shows each attempt)")

    follower.on_retry = on_retry
    with _HookTimer(run.deadline_at()) as timer:
        hooks.bound = timer.bound
        save = None if state is None else state.save
        outcome, failure = _follow_through_hooks(follower, hooks, context, save, run.message, timer.finishing)
    if outcome.exit_code == EXIT_SIGPIPE:
        # Like `yes | head`: stop quietly, and keep Python from complaining
        # about the closed pipe again at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    run.outcome = outcome
    if isinstance(failure, Exception) and args.verbose and outcome.exit_code != EXIT_INTERNAL:
        traceback.print_exception(type(failure), failure, failure.__traceback__)
    if outcome.message is not None:
        _say(outcome.message)
    return outcome.exit_code


_ID_WIDTH = 24  # the usual width of an invocation id (inv_ and 20 characters), for watch's tags


def _combined_exit(codes: Sequence[int], interrupted: Optional[int] = None) -> int:
    """One exit status for several follows: the signal if one stopped the run;
    else 1 if any invocation failed; else the worst of the others
    (70, 3, 4, 75, 2, 5, 141, 11, 10, 0, in that order)."""
    if interrupted is not None:
        return interrupted
    if EXIT_FAILED in codes:
        return EXIT_FAILED
    for code in (EXIT_INTERNAL, EXIT_REFUSED, EXIT_GAVE_UP, EXIT_LOCKED, EXIT_USAGE, EXIT_PLUGIN_ERROR,
                 EXIT_SIGPIPE, EXIT_REMEMBERED_FAILED, EXIT_REMEMBERED_SUCCEEDED):
        if code in codes:
            return code
    return EXIT_SUCCEEDED


class _Many:
    """Several follows at once, on the asyncio driver, in this (the main) thread.

    Plugins are called from the one event loop, never concurrently; each
    follow has its own context (and plugin state) and, with --state-file,
    its own state file in that folder.  A signal stops them all: each saves
    its state and runs ``on_finish``.
    """

    def __init__(self, run: _Run, hooks: Hooks, api_key: str, width: int) -> None:
        self.run = run
        self.hooks = hooks
        self.api_key = api_key
        self.codes: Dict[str, int] = {}
        self.outcomes: Dict[str, Outcome] = {}
        self.signal: Optional[Tuple[int, str]] = None
        self._finishing: Callable[[], None] = lambda: None
        run.args.tag_width = width
        folder = run.args.state_file
        if folder is not None and not os.path.isdir(folder):
            raise UsageError(f"--state-file '{folder}' must name a folder when several invocations are followed "
                             "(one state file each); create it")

    def interrupted(self) -> Tuple[int, str]:
        """The exit status and name of the signal that stopped the run (SIGINT if none was seen)."""
        return self.signal or (EXIT_SIGINT, "SIGINT")

    def on_signal(self, signum: int, frame: object) -> None:
        """The handler for SIGINT, SIGTERM and SIGHUP while several follows run."""
        import signal

        names: Dict[int, Tuple[int, str]] = {signal.SIGINT: (EXIT_SIGINT, "SIGINT")}
        if hasattr(signal, "SIGHUP"):
            names[signal.SIGHUP] = (EXIT_SIGHUP, "SIGHUP")
        self.signal = names.get(signum, (EXIT_SIGTERM, "SIGTERM"))
        sys.unraisablehook = _quiet_unraisable  # see _on_signal
        raise _Signalled(*self.signal)

    def run_all(self, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``main()`` to its end with every follow's ending handled."""
        import asyncio
        import signal

        handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        previous = {signum: signal.signal(signum, self.on_signal) for signum in handled}
        try:
            with _HookTimer(self.run.deadline_at()) as timer:
                self.hooks.bound = timer.bound
                self._finishing = timer.finishing
                try:
                    asyncio.run(main())
                except KeyboardInterrupt:
                    if self.signal is None:
                        self.signal = (EXIT_SIGINT, "SIGINT")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    async def follow(self, invocation_id: str, since: Optional[str]) -> None:
        """One follow to its end; its exit status goes to ``codes``."""
        args = self.run.args
        state = None
        if args.state_file is not None:
            name = "".join(char if char.isalnum() or char in "-_." else "_" for char in invocation_id)
            state = _StateFile(os.path.join(args.state_file, name + ".state"), invocation_id)
        try:
            if state is not None:
                state.lock()
            checkpoint = state.load() if state is not None else None
            if state is not None and state.finished_status is not None:
                self.codes[invocation_id] = _remembered(invocation_id, state)
                return
            follower = AsyncFollower(
                invocation_id, api_key=self.api_key, base_url=args.base_url, since=since, checkpoint=checkpoint,
                idle_timeout=args.idle_timeout, deadline=args.deadline, max_retries=args.max_retries,
                allow_insecure_http=bool(args.allow_insecure_http),
            )
            follower.start_clock(self.run.started)
            context = FollowContext(follower, vars(args))
            follower.on_retry = lambda attempt, delay, reason: self.hooks.on_reconnect(attempt, delay, reason, context)
            save = None if state is None else state.save
            outcome, failure = await _afollow_through_hooks(
                follower, self.hooks, context, save, self.run.message, self.finishing, self.interrupted
            )
            self.outcomes[invocation_id] = outcome
            self.codes[invocation_id] = outcome.exit_code
            if outcome.message is not None and outcome.status != "interrupted":
                _say(f"{invocation_id}: {outcome.message}")
            if isinstance(failure, KeyboardInterrupt) and not isinstance(failure, _OutOfTime):
                raise failure  # the user stopped the run: stop every follow
        except (_Locked, UsageError, ConfigurationError) as exc:
            self.codes[invocation_id] = EXIT_LOCKED if isinstance(exc, _Locked) else EXIT_USAGE
            _say(f"{invocation_id}: {self.run.message(exc)}")
        finally:
            if state is not None:
                state.unlock()

    def finishing(self) -> None:
        """A follow is over: the hook timer's grace applies from now on."""
        self._finishing()


def _run_many(run: _Run, hooks: Hooks, api_key: str, invocation_ids: List[str]) -> int:
    """``kernel-sse follow ID ID ...``: follow them all at once; one combined exit status."""
    import asyncio

    since = _since(run.args.since)
    many = _Many(run, hooks, api_key, max(len(visible(i, one_line=True)) for i in invocation_ids))

    async def main() -> None:
        await asyncio.gather(*(many.follow(invocation_id, since) for invocation_id in invocation_ids))

    many.run_all(main)
    if many.signal is not None:
        _say(f"stopped by {many.signal[1]}; the state of every follow is saved")
    return _combined_exit(list(many.codes.values()), None if many.signal is None else many.signal[0])


def _run_watch(run: _Run, hooks: Hooks, api_key: str) -> int:
    """``kernel-sse watch``: follow every running and queued invocation (and
    each new one, polling the list with backoff) until --deadline or a signal.

    Ending at --deadline is the normal end: follows it cuts short do not
    count against the exit status; an invocation that failed does (1).
    """
    import asyncio

    args = run.args
    many = _Many(run, hooks, api_key, _ID_WIDTH)
    # --deadline bounds the list requests (and their retries) too: they run in a thread the loop waits for.
    api = _api(api_key=api_key, base_url=args.base_url, allow_insecure_http=bool(args.allow_insecure_http),
               max_retries=args.max_retries, deadline=run.deadline_left())
    filters = {"app_name": args.app, "action_name": args.action, "version": args.app_version}
    problems: List[int] = []

    def active() -> List[str]:
        found: List[str] = []
        for status in ("running", "queued"):
            for page in _list_pages(api, {**filters, "status": status}, 0):
                found.extend(invocation.id for invocation in page.invocations)
        return found

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tasks: Dict[str, asyncio.Task[None]] = {}
        pause = args.poll
        listed = False
        try:
            while True:
                try:
                    found = await loop.run_in_executor(None, active)  # the list is blocking I/O: off the loop
                except DeadlineExceeded as exc:
                    if not listed:  # the API never answered: nothing was watched
                        problems.append(EXIT_GAVE_UP)
                        _say(run.message(exc))
                    break  # else the normal end
                except (APIStatusError, ConnectionFailed) as exc:
                    problems.append(EXIT_REFUSED if isinstance(exc, APIStatusError) else EXIT_GAVE_UP)
                    _say(run.message(exc))
                    break
                listed = True
                new = [invocation_id for invocation_id in found if invocation_id not in tasks]
                for invocation_id in new:
                    tasks[invocation_id] = asyncio.ensure_future(many.follow(invocation_id, None))
                pause = args.poll if new else min(pause * 2, max(args.poll, 30.0))
                left = run.deadline_left()
                if left is not None and left <= pause:
                    await asyncio.sleep(left)
                    break
                await asyncio.sleep(pause)
        finally:
            if tasks:
                await asyncio.gather(*tasks.values())

    many.run_all(main)
    if many.signal is not None:
        _say(f"stopped by {many.signal[1]}; the state of every follow is saved")
    cut = [invocation_id for invocation_id, outcome in many.outcomes.items() if outcome.status == "deadline"]
    if cut:
        _say(f"still running at the deadline: {', '.join(cut)}")
    codes = [code for invocation_id, code in many.codes.items() if invocation_id not in cut] + problems
    return _combined_exit(codes, None if many.signal is None else many.signal[0])


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


def _run_demo(run: _Run, hooks: Hooks) -> int:
    """``kernel-sse demo``: the path a user runs (invoke, then follow), offline,
    against a local emulator's demo action."""
    try:
        import kernel_sse_emulator as emulator_module
    except ImportError:
        raise UsageError("the demo needs kernel_sse_emulator.py next to kernel_sse.py (pip install kernel-sse)") from None
    api_key = os.urandom(16).hex()  # a throwaway key: the emulator is local
    args = run.args
    with emulator_module.running_emulator(
        api_key=api_key, heartbeat_interval=emulator_module.DEFAULT_HEARTBEAT_INTERVAL / args.speed
    ) as emulator:
        args.app, args.action, args.app_version = (
            emulator_module.DEMO_APP, emulator_module.DEMO_ACTION, emulator_module.DEMO_VERSION
        )
        args.payload, args.payload_file = json.dumps({"speed": args.speed}), None
        args.async_timeout, args.cancel_on_exit = None, False
        args.base_url, args.api_key_file, args.allow_insecure_http = emulator.url, None, False
        return _run_invoke(run, hooks, api_key, emulator.url)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``kernel-sse`` command line; return its exit status."""
    import signal
    import traceback

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(arg == "--verbose" or re.fullmatch(r"-[qv]*v[qv]*", arg) for arg in argv)  # -v, -qv
    # From the start: a SIGTERM or SIGHUP while plugins load is an exit status too, not death by the signal.
    handled = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {signum: signal.signal(signum, _on_signal) for signum in handled}
    unraisable = sys.unraisablehook
    args: Optional[argparse.Namespace] = None
    try:
        plugins = _load_plugins(argv)
        parser, extensible = _build_parser()
        if plugins is not None:
            for subparser in extensible:
                plugins.hooks(strict=True).add_arguments(subparser)
        try:
            args = _parse_args(parser, argv)
        except SystemExit as exc:
            return EXIT_SUCCEEDED if exc.code == 0 else EXIT_USAGE
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.command == "plugins":
            return _list_plugins(plugins, args.json)
        run = _Run(args, time.monotonic())  # --deadline counts from here, before any file is opened
        if args.command == "status":
            return _run_status(run, _read_api_key(args))
        if args.command == "list":
            return _run_list(run, _read_api_key(args))
        hooks = _hooks_for(plugins, args)
        if args.command == "demo":
            return _run_demo(run, hooks)
        if args.command == "invoke":
            return _run_invoke(run, hooks, _read_api_key(args), args.base_url)
        if args.command == "watch":
            return _run_watch(run, hooks, _read_api_key(args))
        _since(args.since)
        if len(args.invocation_ids) > 1:
            return _run_many(run, hooks, _read_api_key(args), list(dict.fromkeys(args.invocation_ids)))
        args.invocation_id = args.invocation_ids[0]
        return _run_follow(run, hooks, _read_api_key(args), args.base_url)
    except _Locked as exc:
        _say(str(exc))
        return EXIT_LOCKED
    except APIStatusError as exc:
        if verbose:
            traceback.print_exc()
        _say(describe_error(exc, _cli_terms(args) if args is not None else PYTHON_TERMS))
        return EXIT_REFUSED
    except (ConnectionFailed, InvokeUncertain, DeadlineExceeded, StreamTimeout) as exc:
        if verbose:
            traceback.print_exc()
        _say(describe_error(exc, _cli_terms(args) if args is not None else PYTHON_TERMS))
        return EXIT_GAVE_UP
    except (UsageError, ConfigurationError, PluginError, PluginFailed) as exc:
        if verbose:
            traceback.print_exc()
        _say(describe_error(exc, _cli_terms(args) if args is not None else PYTHON_TERMS))
        return EXIT_USAGE
    except _Signalled as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except Exception:  # a bug: say so, and never pass for "the invocation failed" (1)
        traceback.print_exc()
        _say(f"{__version__}: internal error; please report it with the traceback above")
        return EXIT_INTERNAL
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = unraisable


if __name__ == "__main__":
    # Plugins ``import kernel_sse``: give them this very module, not a second
    # copy whose classes would not match the events this one makes.
    sys.modules.setdefault("kernel_sse", sys.modules[__name__])
    sys.exit(main())
