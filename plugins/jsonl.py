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

Options:

``--jsonl-file PATH``
    Also append the same lines to ``PATH`` (created if missing, flushed per
    line), whatever ``--format`` is: with ``--format text`` you get text on
    standard output and JSON lines in the file.  ``--format jsonl -q
    --jsonl-file PATH`` writes the file only.

``-q`` / ``--quiet``
    With ``--format jsonl``: nothing on standard output (the exit status tells
    the outcome).
"""

from __future__ import annotations

import argparse
from typing import Optional, TextIO

import kernel_sse
from kernel_sse import FollowContext, InvocationStateEvent, KernelEvent, Outcome


class _Run:
    """One follow's outputs; replaced in ``on_start``."""

    def __init__(self, stdout: bool = True, file: Optional[TextIO] = None) -> None:
        self.stdout = stdout
        self.file = file
        self.done = False  # the terminal state was written


_run = _Run()


@kernel_sse.hookimpl
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--jsonl-file``."""
    parser.add_argument(
        "--jsonl-file",
        metavar="PATH",
        help="also append every event as a JSON line to PATH (jsonl plugin)",
    )


def _close() -> None:
    if _run.file is not None:
        file, _run.file = _run.file, None
        file.close()


@kernel_sse.hookimpl
def on_start(context: FollowContext) -> None:
    """Open the ``--jsonl-file``, if any."""
    global _run
    _close()  # a previous follow that never finished
    options = context.options
    _run = _Run(stdout=options.get("format") == "jsonl" and not options.get("quiet"))
    path = options.get("jsonl_file")
    if isinstance(path, str) and path:
        _run.file = open(path, "a", encoding="utf-8", newline="\n")


def _write(event: KernelEvent) -> None:
    if _run.done:
        return
    if isinstance(event, InvocationStateEvent) and event.invocation.is_terminal:
        _run.done = True
    if not _run.stdout and _run.file is None:
        return
    line = kernel_sse.format_json(event)
    if _run.stdout:
        kernel_sse.print_line(line, event)  # \u escapes where stdout cannot encode
    if _run.file is not None:
        _run.file.write(line + "\n")
        _run.file.flush()


@kernel_sse.hookimpl
def on_log(event: KernelEvent) -> None:
    """Write a log event."""
    _write(event)


@kernel_sse.hookimpl
def on_state(event: KernelEvent) -> None:
    """Write a state event."""
    _write(event)


@kernel_sse.hookimpl
def on_error(event: KernelEvent) -> None:
    """Write an error event."""
    _write(event)


@kernel_sse.hookimpl
def on_heartbeat(event: KernelEvent) -> None:
    """Write a heartbeat."""
    _write(event)


@kernel_sse.hookimpl
def on_unknown(event: KernelEvent) -> None:
    """Write an event of an unknown kind, as received."""
    _write(event)


@kernel_sse.hookimpl
def on_finish(outcome: Outcome) -> None:
    """Close the file."""
    _close()
