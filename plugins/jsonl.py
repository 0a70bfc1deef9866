"""jsonl: every event as one JSON object per line (``--format jsonl``), and to a file.

With ``--format jsonl`` each event received (heartbeats and events of unknown
kinds included) is written to standard output as the JSON object the API sent
(``kernel_sse.format_json``: the ``data`` payload with its ``event`` field, every
value as sent, timestamps with their original strings), one per line, flushed
at once.  Nothing is written after the terminal state.  The result summary of
the text output is not written: the last line is the terminal
``invocation_state`` event.  With ``--format text`` it prints nothing on
standard output (the ``console`` plugin does).  Where standard output cannot
encode a character (a Latin-1 locale, say), that line is written with ``\\uXXXX``
escapes instead: the same JSON value.

Lines are valid UTF-8 and mean exactly what the API sent: a lone surrogate
(``"\\ud800"`` is valid JSON) is written as that ``\\u`` escape, and JSON nested
deeper than Python's encoder can recurse is encoded without recursion.

Options:

``--jsonl-file PATH``
    Also append the same lines to ``PATH`` (created if missing, flushed per
    line), whatever ``--format`` is: with ``--format text`` you get text on
    standard output and JSON lines in the file.  ``--format jsonl -q
    --jsonl-file PATH`` writes the file only.  A path that cannot be written
    (a missing folder, no permission, a folder) stops the run before the
    first request, with exit status 2.

``-q`` / ``--quiet``
    With ``--format jsonl``: nothing on standard output (the exit status tells
    the outcome).
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, TextIO

import kernel_sse
from kernel_sse import FollowContext, InvocationStateEvent, KernelEvent, Outcome



class _Follow:
    """One follow's outputs (``context.state_for``)."""

    def __init__(self) -> None:
        self.stdout = False
        self.file: Optional[TextIO] = None
        self.done = False  # the terminal state was written


@kernel_sse.hookimpl
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--jsonl-file``."""
    parser.add_argument(
        "--jsonl-file",
        metavar="PATH",
        help="also append every event as a JSON line to PATH (jsonl plugin)",
    )


def open_file(path: str) -> TextIO:
    """Open ``--jsonl-file PATH`` for appending; :class:`kernel_sse.UsageError`
    saying what is wrong and what to do if it cannot be written."""
    flag = f"--jsonl-file '{path}'"
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise kernel_sse.UsageError(f"{flag}: that is a folder; give the path of a file in it")
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise kernel_sse.UsageError(f"{flag}: the folder '{folder}' {what}; create it or choose another path")
    try:
        return open(path, "a", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise kernel_sse.UsageError(
            f"{flag}: cannot write it ({exc.strerror or type(exc).__name__}); "
            "choose a path you may write, or fix its permissions"
        ) from None


@kernel_sse.hookimpl
def on_start(context: FollowContext) -> None:
    """Open the ``--jsonl-file``, if any: before the first request, so a bad path stops the run at once."""
    run = context.state_for(_Follow)
    options = context.options
    run.stdout = options.get("format") == "jsonl" and not options.get("quiet")
    path = options.get("jsonl_file")
    if isinstance(path, str) and path:
        run.file = open_file(path)


def _write(event: KernelEvent, context: FollowContext) -> None:
    run = context.state_for(_Follow)
    if run.done:
        return
    if isinstance(event, InvocationStateEvent) and event.invocation.is_terminal:
        run.done = True
    if not run.stdout and run.file is None:
        return
    line = kernel_sse.format_json(event)  # valid UTF-8 whatever the values, never loses the line
    if isinstance(context.options.get("tag_width"), int):  # several follows share the output
        line = kernel_sse.tagged_json(line, context.invocation_id)
    if run.stdout:
        kernel_sse.print_line(line, event)  # \u escapes where stdout cannot encode
    if run.file is not None:
        run.file.write(line + "\n")
        run.file.flush()


@kernel_sse.hookimpl
def on_log(event: KernelEvent, context: FollowContext) -> None:
    """Write a log event."""
    _write(event, context)


@kernel_sse.hookimpl
def on_state(event: KernelEvent, context: FollowContext) -> None:
    """Write a state event."""
    _write(event, context)


@kernel_sse.hookimpl
def on_error(event: KernelEvent, context: FollowContext) -> None:
    """Write an error event."""
    _write(event, context)


@kernel_sse.hookimpl
def on_heartbeat(event: KernelEvent, context: FollowContext) -> None:
    """Write a heartbeat."""
    _write(event, context)


@kernel_sse.hookimpl
def on_unknown(event: KernelEvent, context: FollowContext) -> None:
    """Write an event of an unknown kind, as received."""
    _write(event, context)


@kernel_sse.hookimpl
def on_finish(outcome: Outcome, context: FollowContext) -> None:
    """Close the file."""
    run = context.state_for(_Follow)
    if run.file is not None:
        file, run.file = run.file, None
        file.close()
