"""logging: forward events to Python ``logging``, logger ``kernel_sse.events``.

Off by default (the console already prints the events); ``--log-events`` turns
it on.  Each event becomes one record on the logger ``kernel_sse.events``, so
it reaches syslog, journald or a file through the usual ``logging`` handlers.
Levels by event kind:

- log line: INFO;
- state change: INFO (``failed``: ERROR);
- error event: WARNING;
- heartbeat: DEBUG;
- event of an unknown kind: WARNING;
- connection lost (a reconnect follows): WARNING;
- a follow that ends without a terminal state (gave up, deadline, refused,
  plugin error): ERROR; interrupted: WARNING.

The message is the event's text line (``kernel_sse.format_text``) after the
invocation id; each record also carries ``invocation_id``, ``event_kind`` and
``event_timestamp`` (the string the API sent) as attributes, for structured
handlers.  When neither the logger nor the root logger has a handler (the
command line), a standard-error handler is added for the follow:
``2025-06-20 12:00:00,123 INFO kernel_sse.events: [inv_123] ...`` (under
systemd, standard error goes to the journal).  Unless the logger's level was
set, ``--log-level`` sets it for the follow, so INFO records are not dropped by
the root logger's default WARNING.  Follows running at once in one process
share that handler and level (the lowest level any of them asked for) and
each filters its own records; the last one to finish undoes both.  Text from
events is logged with control characters (a line feed too: one event, one
line) and lone surrogates as visible escapes such as ``\\x1b``.  To send the records elsewhere from the
command line, load a small module with ``-p`` that adds a handler, e.g.
``logging.getLogger("kernel_sse.events").addHandler(logging.handlers.SysLogHandler("/dev/log"))``.

Options:

``--log-events``
    Forward events to ``logging``.
``--log-level LEVEL``
    The lowest level forwarded: ``DEBUG`` (heartbeats too), ``INFO``
    (default), ``WARNING`` or ``ERROR``.
"""

from __future__ import annotations

# Absolute imports (Python 3): this is the standard library's logging, not this module.
import argparse
import logging
import sys
import threading
from collections import Counter
from typing import Dict, Optional, TextIO

import kernel_sse
from kernel_sse import (
    ErrorEvent,
    FollowContext,
    HeartbeatEvent,
    InvocationStateEvent,
    LogEvent,
    Outcome,
    UnknownEvent,
)

from kernel_sse import format_text as event_text, visible

LOGGER_NAME = "kernel_sse.events"
"""The logger the records go to."""

logger = logging.getLogger(LOGGER_NAME)

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


class _Follow:
    """One follow's settings (``context.state_for``)."""

    def __init__(self) -> None:
        self.enabled = False
        self.level = logging.INFO
        self.invocation_id = ""
        self.joined = False  # counted in _shared: must leave it in on_finish


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in typeshed
    """Writes to ``sys.stderr`` as it is at each record, not as it was when
    created: output captured or wrapped later (a terminal's status line that
    must be cleared first) still sees the records."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # StreamHandler.__init__ sets it; the property decides


class _Shared:
    """What the follows of one process share on the logger: the stderr handler
    and the level, set by the first follow that needs them, undone by the last."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.levels: Counter[int] = Counter()  # --log-level of each follow in progress
        self.handler: Optional[logging.Handler] = None  # ours, removed after the last follow
        self.restore_level: Optional[int] = None  # the logger's level before we set it

    def join(self, level: int) -> None:
        with self.lock:
            self.levels[level] += 1
            if not self.handler and not logger.hasHandlers():
                handler = _StderrHandler()
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                logger.addHandler(handler)
                self.handler = handler
            if self.restore_level is None and logger.level == logging.NOTSET:
                if logger.getEffectiveLevel() > level:
                    # Nobody set this logger's level: let --log-level decide, not the root's WARNING.
                    self.restore_level = logger.level
            if self.restore_level is not None:
                logger.setLevel(min(self.levels))

    def leave(self, level: int) -> None:
        with self.lock:
            self.levels[level] -= 1
            if self.levels[level] <= 0:
                del self.levels[level]
            if self.levels:
                if self.restore_level is not None:
                    logger.setLevel(min(self.levels))
                return
            if self.handler is not None:
                logger.removeHandler(self.handler)
                self.handler.close()
                self.handler = None
            if self.restore_level is not None:
                logger.setLevel(self.restore_level)
                self.restore_level = None


_shared = _Shared()


@kernel_sse.hookimpl
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-events`` and ``--log-level``."""
    group = parser.add_argument_group("logging plugin")
    group.add_argument("--log-events", action="store_true",
                       help=f"forward events to Python logging (logger {LOGGER_NAME})")
    group.add_argument("--log-level", choices=list(_LEVELS), default="INFO", type=str.upper,
                       help="the lowest level forwarded (default: INFO; DEBUG adds heartbeats)")


@kernel_sse.hookimpl
def on_start(context: FollowContext) -> None:
    """Read the options; add a standard-error handler if logging is not configured."""
    run = context.state_for(_Follow)
    options = context.options
    level = options.get("log_level")
    run.enabled = bool(options.get("log_events", False))
    run.level = _LEVELS.get(level.upper(), logging.INFO) if isinstance(level, str) else logging.INFO
    run.invocation_id = context.invocation_id
    if run.enabled:
        _shared.join(run.level)
        run.joined = True


def _emit(run: _Follow, level: int, kind: str, text: str, timestamp: Optional[str] = None) -> None:
    if not run.enabled or level < run.level:
        return
    extra: Dict[str, object] = {
        "invocation_id": run.invocation_id,
        "event_kind": kind,
        "event_timestamp": timestamp,
    }
    logger.log(level, "[%s] %s", visible(run.invocation_id), visible(text), extra=extra)


def _text(event: kernel_sse.KernelEvent, default: str) -> str:
    line = event_text(event)  # never raises; control characters shown as escapes
    return default if line is None else line


@kernel_sse.hookimpl
def on_log(event: LogEvent, context: FollowContext) -> None:
    """A log line: INFO."""
    _emit(context.state_for(_Follow), logging.INFO, event.event, _text(event, event.message), event.timestamp_raw)


@kernel_sse.hookimpl
def on_state(event: InvocationStateEvent, context: FollowContext) -> None:
    """A state change: INFO, or ERROR when the invocation failed."""
    level = logging.ERROR if event.invocation.status == "failed" else logging.INFO
    text = _text(event, event.invocation.status)
    _emit(context.state_for(_Follow), level, event.event, text, event.timestamp_raw)


@kernel_sse.hookimpl
def on_error(event: ErrorEvent, context: FollowContext) -> None:
    """An error event: WARNING."""
    text = _text(event, event.error.message)
    _emit(context.state_for(_Follow), logging.WARNING, event.event, text, event.timestamp_raw)


@kernel_sse.hookimpl
def on_heartbeat(event: HeartbeatEvent, context: FollowContext) -> None:
    """A heartbeat: DEBUG."""
    run = context.state_for(_Follow)
    _emit(run, logging.DEBUG, event.event, f"heartbeat {event.timestamp_raw}", event.timestamp_raw)


@kernel_sse.hookimpl
def on_unknown(event: UnknownEvent, context: FollowContext) -> None:
    """An event of an unknown kind: WARNING."""
    _emit(context.state_for(_Follow), logging.WARNING, event.event, _text(event, event.event))


@kernel_sse.hookimpl
def on_reconnect(attempt: int, delay: float, reason: str, context: FollowContext) -> None:
    """The connection was lost: WARNING."""
    run = context.state_for(_Follow)
    _emit(run, logging.WARNING, "reconnect", f"connection lost ({reason}); attempt {attempt} in {delay:.2f}s")


@kernel_sse.hookimpl
def on_finish(outcome: Outcome, context: FollowContext) -> None:
    """A follow that ended without a terminal state: ERROR (interrupted: WARNING)."""
    run = context.state_for(_Follow)
    try:
        if outcome.status not in kernel_sse.TERMINAL_STATUSES:
            level = logging.WARNING if outcome.status == "interrupted" else logging.ERROR
            _emit(run, level, "finish", f"follow ended: {outcome.status}: {outcome.message or ''}".rstrip(": "))
    finally:
        if run.joined:
            run.joined = False
            _shared.leave(run.level)
