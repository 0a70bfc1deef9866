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
the root logger's default WARNING.  To send the records elsewhere from the
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
from typing import Dict, Optional

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

LOGGER_NAME = "kernel_sse.events"
"""The logger the records go to."""

logger = logging.getLogger(LOGGER_NAME)

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


class _Run:
    """One follow's settings; replaced in ``on_start``."""

    def __init__(self, enabled: bool = False, level: int = logging.INFO, invocation_id: str = "") -> None:
        self.enabled = enabled
        self.level = level
        self.invocation_id = invocation_id
        self.handler: Optional[logging.Handler] = None  # ours, removed after the follow
        self.restore_level: Optional[int] = None  # the logger's level before we set it


_run = _Run()


@kernel_sse.hookimpl
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-events`` and ``--log-level``."""
    group = parser.add_argument_group("logging plugin")
    group.add_argument("--log-events", action="store_true",
                       help=f"forward events to Python logging (logger {LOGGER_NAME})")
    group.add_argument("--log-level", choices=list(_LEVELS), default="INFO", type=str.upper,
                       help="the lowest level forwarded (default: INFO; DEBUG adds heartbeats)")


def _restore() -> None:
    """Undo what on_start changed on the logger."""
    if _run.handler is not None:
        logger.removeHandler(_run.handler)
        _run.handler.close()
        _run.handler = None
    if _run.restore_level is not None:
        logger.setLevel(_run.restore_level)
        _run.restore_level = None


@kernel_sse.hookimpl
def on_start(context: FollowContext) -> None:
    """Read the options; add a standard-error handler if logging is not configured."""
    global _run
    _restore()
    options = context.options
    level = options.get("log_level")
    _run = _Run(
        enabled=bool(options.get("log_events", False)),
        level=_LEVELS.get(level, logging.INFO) if isinstance(level, str) else logging.INFO,
        invocation_id=context.invocation_id,
    )
    if not _run.enabled:
        return
    if logger.level == logging.NOTSET and logger.getEffectiveLevel() > _run.level:
        # Nobody set this logger's level: let --log-level decide, not the root's WARNING.
        _run.restore_level = logger.level
        logger.setLevel(_run.level)
    if not logger.hasHandlers():
        handler = logging.StreamHandler()  # sys.stderr at the time of the call
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        _run.handler = handler


def _emit(level: int, kind: str, text: str, timestamp: Optional[str] = None) -> None:
    if not _run.enabled or level < _run.level:
        return
    extra: Dict[str, object] = {
        "invocation_id": _run.invocation_id,
        "event_kind": kind,
        "event_timestamp": timestamp,
    }
    logger.log(level, "[%s] %s", _run.invocation_id, text, extra=extra)


@kernel_sse.hookimpl
def on_log(event: LogEvent) -> None:
    """A log line: INFO."""
    _emit(logging.INFO, event.event, kernel_sse.format_text(event) or event.message, event.timestamp_raw)


@kernel_sse.hookimpl
def on_state(event: InvocationStateEvent) -> None:
    """A state change: INFO, or ERROR when the invocation failed."""
    level = logging.ERROR if event.invocation.status == "failed" else logging.INFO
    _emit(level, event.event, kernel_sse.format_text(event) or event.invocation.status, event.timestamp_raw)


@kernel_sse.hookimpl
def on_error(event: ErrorEvent) -> None:
    """An error event: WARNING."""
    _emit(logging.WARNING, event.event, kernel_sse.format_text(event) or event.error.message, event.timestamp_raw)


@kernel_sse.hookimpl
def on_heartbeat(event: HeartbeatEvent) -> None:
    """A heartbeat: DEBUG."""
    _emit(logging.DEBUG, event.event, f"heartbeat {event.timestamp_raw}", event.timestamp_raw)


@kernel_sse.hookimpl
def on_unknown(event: UnknownEvent) -> None:
    """An event of an unknown kind: WARNING."""
    _emit(logging.WARNING, event.event, kernel_sse.format_text(event) or event.event)


@kernel_sse.hookimpl
def on_reconnect(attempt: int, delay: float, reason: str) -> None:
    """The connection was lost: WARNING."""
    _emit(logging.WARNING, "reconnect", f"connection lost ({reason}); attempt {attempt} in {delay:.2f}s")


@kernel_sse.hookimpl
def on_finish(outcome: Outcome) -> None:
    """A follow that ended without a terminal state: ERROR (interrupted: WARNING)."""
    try:
        if outcome.status not in kernel_sse.TERMINAL_STATUSES:
            level = logging.WARNING if outcome.status == "interrupted" else logging.ERROR
            _emit(level, "finish", f"follow ended: {outcome.status}: {outcome.message or ''}".rstrip(": "))
    finally:
        _restore()
