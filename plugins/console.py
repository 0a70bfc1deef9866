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
status at the bottom (state, elapsed time, log count, a reconnect in
progress), redrawn in place and cleared before each printed line.  Under cron, in a pipe or in a file the
output is plain, stable lines.  ``NO_COLOR`` (any non-empty value) turns colour
off; ``TERM=dumb`` turns off colour and the status line.

Block it with ``-p no:console`` (standard output then stays silent in text mode).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, TextIO

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


class _Run:
    """What one follow's output needs to know; replaced in ``on_start``."""

    def __init__(self, active: bool = True, quiet: bool = False, colour: bool = False, status: bool = False) -> None:
        self.active = active  # --format text
        self.quiet = quiet
        self.colour = colour
        self.status = status  # draw the live status line
        self.status_shown = False
        self.state = "connecting"  # the invocation's last status
        self.note = ""  # e.g. a reconnect in progress; cleared by the next event
        self.logs = 0


_run = _Run()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


@kernel_sse.hookimpl
def on_start(context: FollowContext) -> None:
    """Decide, once per follow, whether to print, and whether in colour."""
    global _run
    options = context.options
    tty = _is_terminal(sys.stdout) and os.environ.get("TERM", "") != "dumb"
    quiet = bool(options.get("quiet", False))
    _run = _Run(
        active=options.get("format", "text") == "text",
        quiet=quiet,
        colour=tty and not os.environ.get("NO_COLOR"),
        status=tty and not quiet,
    )
    if _run.active:
        _draw_status(context.elapsed)


def _paint(text: str, *codes: str) -> str:
    return "".join(codes) + text + _RESET if _run.colour and codes else text


def _clear_status() -> None:
    if _run.status_shown:
        sys.stdout.write(_CLEAR_LINE)
        _run.status_shown = False


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _draw_status(elapsed: float) -> None:
    if not _run.status:
        return
    text = f"[{_run.state}] {_duration(elapsed)}, {_run.logs} log line{'' if _run.logs == 1 else 's'}"
    if _run.note:
        text += f", {_run.note}"
    try:
        width = os.get_terminal_size(sys.stdout.fileno()).columns or 80  # 0: size unknown
    except (AttributeError, ValueError, OSError):
        width = 80
    text = text[: max(width - 1, 1)]  # a wrapped status line cannot be redrawn with \r
    sys.stdout.write(_CLEAR_LINE + _paint(text, _DIM))
    sys.stdout.flush()
    _run.status_shown = True


def _print(line: str, context: Optional[FollowContext] = None) -> None:
    """One line on stdout, the status line cleared before and redrawn after."""
    _clear_status()
    kernel_sse.print_line(line)  # escapes what stdout cannot show: no line is lost
    if context is not None:
        _draw_status(context.elapsed)


def _event_line(event: kernel_sse.KernelEvent, colour: str = "") -> Optional[str]:
    """``format_text``'s line, with the timestamp dimmed and the rest in ``colour``."""
    line = kernel_sse.format_text(event)
    if line is None or not _run.colour:
        return line
    timestamp = getattr(event, "timestamp", None)
    stamp = kernel_sse.format_time(timestamp) if timestamp is not None else ""
    if stamp and line.startswith(stamp + " "):
        rest = line[len(stamp) + 1 :]
        return _paint(stamp, _DIM) + " " + (_paint(rest, colour) if colour else rest)
    return _paint(line, colour) if colour else line


def _show(event: kernel_sse.KernelEvent, context: FollowContext, colour: str = "") -> None:
    if not _run.active:
        return
    _run.note = ""
    line = None if _run.quiet else _event_line(event, colour)
    if line is not None:
        _print(line, context)
    else:
        _draw_status(context.elapsed)


@kernel_sse.hookimpl
def on_log(event: LogEvent, context: FollowContext) -> None:
    """Print a log line."""
    _run.logs += 1
    _show(event, context)


@kernel_sse.hookimpl
def on_state(event: InvocationStateEvent, context: FollowContext) -> None:
    """Print a state change."""
    _run.state = event.invocation.status
    _show(event, context, _BOLD + _STATUS_COLOURS.get(event.invocation.status, ""))


@kernel_sse.hookimpl
def on_error(event: ErrorEvent, context: FollowContext) -> None:
    """Print an error event (not terminal)."""
    _show(event, context, _YELLOW)


@kernel_sse.hookimpl
def on_heartbeat(event: HeartbeatEvent, context: FollowContext) -> None:
    """Print nothing; refresh the status line's elapsed time."""
    if _run.active:
        _run.note = ""
        _draw_status(context.elapsed)


@kernel_sse.hookimpl
def on_unknown(event: UnknownEvent, context: FollowContext) -> None:
    """Print an event of a kind this version does not know."""
    _show(event, context, _MAGENTA)


@kernel_sse.hookimpl
def on_reconnect(attempt: int, context: FollowContext) -> None:
    """Show the retry in the status line; with ``-v`` clear it for the CLI's diagnostic."""
    if _run.active and _run.status:
        _run.note = f"reconnecting (attempt {attempt})"
        if context.options.get("verbose"):
            _clear_status()
        else:
            _draw_status(context.elapsed)


@kernel_sse.hookimpl
def on_terminal(invocation: Invocation, context: FollowContext) -> None:
    """Print the result: status, reason, duration, output pretty-printed."""
    if not _run.active:
        return
    _run.status = False  # nothing follows the result
    result = kernel_sse.format_result(invocation, context.elapsed)
    if _run.colour:
        first, _, rest = result.partition("\n")
        colour = _GREEN if invocation.status == "succeeded" else _RED
        result = _paint(first, _BOLD, colour) + ("\n" + rest if rest else "")
    _print(result)


@kernel_sse.hookimpl
def on_finish(outcome: Outcome) -> None:
    """Leave the terminal clean, however the follow ended."""
    if _run.active:
        _clear_status()
        sys.stdout.flush()
    _run.status = False
