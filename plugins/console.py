"""console: the default human output of ``kernel-sse follow`` (``--format text``).

Prints one line per event on standard output, flushed at once:

- log lines: ``2025-06-20T12:00:00.123Z message``;
- state changes: ``2025-06-20T12:00:01.000Z [running]`` (with the reason, if any);
- error events: ``2025-06-20T12:00:02.000Z [error] code: message``;
- events of an unknown kind: ``[kind] {...}``;
- once the invocation has finished, the result (``kernel_sse.format_result``):
  status, reason, duration, and ``output`` pretty-printed.

Heartbeats print nothing.  With ``--format jsonl`` this plugin is silent (the
``jsonl`` plugin writes standard output then).  Characters that standard
output cannot encode (a Latin-1 locale, say) are backslash-escaped: no line is
lost.

Options (kernel-sse's own):

``-q`` / ``--quiet``
    Print only the outcome: the result once the invocation has finished.  A
    follow that ends without a terminal state (gave up, deadline, refused,
    interrupted) prints nothing on standard output; the error is on standard
    error already.

Only when standard output is a terminal: colour (ANSI), and a live one-line
status at the bottom (the invocation's state, or ``connecting`` / ``streaming``
before one is known; elapsed time, log count, a reconnect in progress), redrawn
in place and cleared before each printed line and before anything is written on
standard error.  Under cron, in a pipe or in a file the output is plain, stable
lines.  ``NO_COLOR`` (any non-empty value) turns off colour only: the status
line still appears on a terminal (it is not colour).  ``TERM=dumb`` turns off
colour and the status line; so does ``-q``.

Text from events (messages, reasons, error messages, the output) is printed
with control characters other than tab escaped: ESC appears as the four
characters ``\\x1b``, so an event cannot move the cursor or recolour the
terminal.

Several follows may run in one process: each keeps its own settings and counts
(``FollowContext.state_for``); the terminal's bottom row is shared, so each
redraw shows the follow that drew last.

Block it with ``-p no:console`` (standard output then stays silent in text mode).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from datetime import datetime
from typing import Iterable, Optional, TextIO, cast

import kernel_sse
from kernel_sse import (
    ErrorEvent,
    FollowContext,
    HeartbeatEvent,
    Invocation,
    InvocationStateEvent,
    LogEvent,
    Outcome,
    UnknownEvent,
)

from kernel_sse import format_text as event_text, format_time, visible

__all__ = ["clear_status"]

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_RED = "\x1b[31m"
_GREEN = "\x1b[32m"
_YELLOW = "\x1b[33m"
_MAGENTA = "\x1b[35m"
_CYAN = "\x1b[36m"
_CLEAR_LINE = "\r\x1b[K"

_STATUS_COLOURS = {"succeeded": _GREEN, "failed": _RED, "running": _CYAN, "queued": _YELLOW}


class _Follow:
    """One follow's output settings and status-line content (``context.state_for``)."""

    def __init__(self) -> None:
        self.active = True  # --format text
        self.quiet = False
        self.colour = False
        self.status = False  # draw the live status line
        self.verbose = False
        self.wrapped = False  # this follow counts among the users of the stderr wrapper
        self.state: Optional[str] = None  # the invocation's last status, once an event said it
        self.streaming = False  # an event arrived on the current connection
        self.note = ""  # e.g. a reconnect in progress; cleared by the next event
        self.logs = 0

    @property
    def phase(self) -> str:
        """What the status line shows in brackets."""
        if self.state is not None:
            return visible(self.state, one_line=True)
        return "streaming" if self.streaming else "connecting"


class _Screen:
    """The terminal's bottom row: one per process, since all follows share stdout."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # follows in several threads draw and print
        self.shown = False  # a status line is on the row now
        self.stderr_users = 0  # follows that need standard error wrapped
        self.stderr: Optional[TextIO] = None  # the stream the wrapper replaced


_screen = _Screen()


def _clear() -> None:
    """Clear the status line without flushing (a line follows at once); lock held."""
    if _screen.shown:
        _screen.shown = False
        sys.stdout.write(_CLEAR_LINE)


def clear_status() -> None:
    """Clear the live status line, if one is shown; from any thread, at any time.

    Call it before writing anything else to the terminal (kernel-sse's own
    messages on standard error included): the status line is drawn without a
    line end, so other text would land on its row.  It is drawn again at the
    next event.  Never raises.
    """
    with _screen.lock:
        if _screen.shown:
            try:
                _clear()
                sys.stdout.flush()
            except (OSError, ValueError):  # stdout closed or gone: nothing to clean
                pass


class _ClearingStderr:
    """Standard error while a status line may be shown: clears it before each write.

    The core writes its messages (the outcome, -v diagnostics, plugin failures)
    on standard error without telling plugins first; on a terminal they would
    be appended to the status line's row.  Installed only while a follow draws
    a status line, removed in ``on_finish``.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        """Clear the status line, then write."""
        clear_status()
        return self.stream.write(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Clear the status line, then write."""
        clear_status()
        self.stream.writelines(lines)

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def _wrap_stderr(run: _Follow) -> None:
    with _screen.lock:
        run.wrapped = True
        _screen.stderr_users += 1
        if _screen.stderr_users == 1:
            _screen.stderr = sys.stderr
            sys.stderr = cast(TextIO, _ClearingStderr(sys.stderr))


def _unwrap_stderr(run: _Follow) -> None:
    with _screen.lock:
        if not run.wrapped:
            return
        run.wrapped = False
        _screen.stderr_users -= 1
        if _screen.stderr_users == 0:
            if isinstance(sys.stderr, _ClearingStderr) and _screen.stderr is not None:
                sys.stderr = _screen.stderr  # unless someone replaced it since: theirs stays
            _screen.stderr = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


@kernel_sse.hookimpl
def on_start(context: FollowContext) -> None:
    """Decide, once per follow, whether to print, in colour, with a status line."""
    run = context.state_for(_Follow)
    options = context.options
    terminal = _is_terminal(sys.stdout) and os.environ.get("TERM", "") != "dumb"
    run.active = options.get("format", "text") == "text"
    run.quiet = bool(options.get("quiet", False))
    run.verbose = bool(options.get("verbose", False))
    # NO_COLOR is about colour only: the status line is not colour, it stays.
    run.colour = terminal and not os.environ.get("NO_COLOR")
    run.status = run.active and terminal and not run.quiet
    if run.status:
        _wrap_stderr(run)
        _draw_status(run, context.elapsed)


def _paint(run: _Follow, text: str, *codes: str) -> str:
    return "".join(codes) + text + _RESET if run.colour and codes else text


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _draw_status(run: _Follow, elapsed: float) -> None:
    if not run.status:
        return
    text = f"[{run.phase}] {_duration(elapsed)}, {run.logs} log line{'' if run.logs == 1 else 's'}"
    if run.note:
        text += f", {run.note}"
    try:
        width = os.get_terminal_size(sys.stdout.fileno()).columns or 80  # 0: size unknown
    except (AttributeError, ValueError, OSError):
        width = 80
    text = text[: max(width - 1, 1)]  # a wrapped status line cannot be redrawn with \r
    with _screen.lock:
        sys.stdout.write(_CLEAR_LINE + _paint(run, text, _DIM))
        sys.stdout.flush()
        _screen.shown = True


def _print(run: _Follow, line: str, context: Optional[FollowContext] = None) -> None:
    """One line on stdout, the status line cleared before and redrawn after."""
    with _screen.lock:
        _clear()
        kernel_sse.print_line(line)  # escapes what stdout cannot show: no line is lost
        if context is not None:
            _draw_status(run, context.elapsed)


_ID_COLOURS = (_CYAN, _MAGENTA, _YELLOW, _GREEN, "\x1b[34m", "\x1b[91m", "\x1b[96m", "\x1b[95m")


def _event_line(
    run: _Follow, event: kernel_sse.KernelEvent, colour: str = "", context: Optional[FollowContext] = None
) -> Optional[str]:
    """The event's text line, with the timestamp dimmed and the rest in
    ``colour``; prefixed with the invocation id when several follows share
    the output (``tag_width`` option), in a colour of its own on a terminal."""
    line = event_text(event)
    if line is None:
        return None
    width = context.options.get("tag_width") if context is not None else None
    if run.colour:
        timestamp = getattr(event, "timestamp", None)
        stamp = format_time(timestamp) if isinstance(timestamp, datetime) else ""
        if stamp and line.startswith(stamp + " "):
            rest = line[len(stamp) + 1 :]
            line = _paint(run, stamp, _DIM) + " " + (_paint(run, rest, colour) if colour else rest)
        elif colour:
            line = _paint(run, line, colour)
    if context is not None:
        line = _tagged(run, line, context)
    return line


def _tagged(run: _Follow, line: str, context: FollowContext) -> str:
    """``line`` prefixed with the invocation id when several follows share the
    output (``tag_width`` option), the id in a colour of its own on a terminal."""
    width = context.options.get("tag_width")
    if not isinstance(width, int):
        return line
    tag = kernel_sse.tagged_text("", context.invocation_id, width)[:-2].rstrip(" ")
    padding = " " * (max(width, len(tag)) - len(tag) + 2)
    id_colour = _ID_COLOURS[sum(context.invocation_id.encode("utf-8", "surrogatepass")) % len(_ID_COLOURS)]
    return _paint(run, tag, id_colour) + padding + line


def _show(event: kernel_sse.KernelEvent, context: FollowContext, colour: str = "") -> None:
    run = context.state_for(_Follow)
    if not run.active:
        return
    run.note = ""
    run.streaming = True
    line = None if run.quiet else _event_line(run, event, colour, context)
    if line is not None:
        _print(run, line, context)
    else:
        _draw_status(run, context.elapsed)


@kernel_sse.hookimpl
def on_log(event: LogEvent, context: FollowContext) -> None:
    """Print a log line."""
    context.state_for(_Follow).logs += 1
    _show(event, context)


@kernel_sse.hookimpl
def on_state(event: InvocationStateEvent, context: FollowContext) -> None:
    """Print a state change."""
    context.state_for(_Follow).state = event.invocation.status
    _show(event, context, _BOLD + _STATUS_COLOURS.get(event.invocation.status, ""))


@kernel_sse.hookimpl
def on_error(event: ErrorEvent, context: FollowContext) -> None:
    """Print an error event (not terminal)."""
    _show(event, context, _YELLOW)


@kernel_sse.hookimpl
def on_heartbeat(event: HeartbeatEvent, context: FollowContext) -> None:
    """Print nothing; refresh the status line's elapsed time."""
    run = context.state_for(_Follow)
    if run.active:
        run.note = ""
        run.streaming = True
        _draw_status(run, context.elapsed)


@kernel_sse.hookimpl
def on_unknown(event: UnknownEvent, context: FollowContext) -> None:
    """Print an event of a kind this version does not know."""
    _show(event, context, _MAGENTA)


@kernel_sse.hookimpl
def on_reconnect(attempt: int, context: FollowContext) -> None:
    """Clear the status line (a diagnostic may follow); show the retry in it unless ``-v``."""
    run = context.state_for(_Follow)
    run.streaming = False  # until the next connection delivers
    if run.active and run.status:
        run.note = f"reconnecting (attempt {attempt})"
        with _screen.lock:
            clear_status()
            if not run.verbose:  # with -v the core prints the reason on stderr next
                _draw_status(run, context.elapsed)


@kernel_sse.hookimpl
def on_terminal(invocation: Invocation, context: FollowContext) -> None:
    """Print the result: status, reason, duration, output pretty-printed."""
    run = context.state_for(_Follow)
    if not run.active:
        return
    run.status = False  # nothing follows the result
    # The summary line's fields escaped before, so a line feed in them cannot break it;
    # then each row: the output's own line breaks stay line breaks.
    reason = invocation.status_reason
    shown = dataclasses.replace(
        invocation, id=visible(invocation.id), app_name=visible(invocation.app_name),
        action_name=visible(invocation.action_name), version=visible(invocation.version),
        status=visible(invocation.status), status_reason=None if reason is None else visible(reason),
    )
    rows = [visible(row) for row in kernel_sse.format_result(shown, context.elapsed).split("\n")]
    if run.colour:
        rows[0] = _paint(run, rows[0], _BOLD, _GREEN if invocation.status == "succeeded" else _RED)
    _print(run, "\n".join(_tagged(run, row, context) for row in rows))


@kernel_sse.hookimpl
def on_finish(outcome: Outcome, context: FollowContext) -> None:
    """Leave the terminal clean, however the follow ended."""
    run = context.state_for(_Follow)
    run.status = False
    if run.active:
        clear_status()
    _unwrap_stderr(run)
