"""prometheus: write a node_exporter textfile-collector file when the follow ends.

Active only with ``--prometheus-file PATH``.  When the follow ends, however it
ends, ``PATH`` is replaced atomically (a temporary file in the same folder,
fsync, rename; mode 0644 so node_exporter can read it) with::

    # HELP kernel_sse_invocation_status Outcome of the last follow: 1 for its status, 0 for the others.
    # TYPE kernel_sse_invocation_status gauge
    kernel_sse_invocation_status{app="my-app",action="run",invocation_id="inv_123",status="succeeded"} 1
    kernel_sse_invocation_status{app="my-app",action="run",invocation_id="inv_123",status="failed"} 0
    ...

Metrics, each labelled ``app``, ``action`` and ``invocation_id`` (``app`` and
``action`` are empty when no state was seen, e.g. for a 404):

- ``kernel_sse_invocation_status{status=...}``: 1 for the outcome, 0 for each
  other one (``succeeded``, ``failed``, ``refused``, ``gave_up``, ``deadline``,
  ``interrupted``, ``plugin_error``): alert on ``{status!="succeeded"} == 1``;
- ``kernel_sse_invocation_duration_seconds``: the invocation's run time
  (only once it has finished);
- ``kernel_sse_follow_duration_seconds``: how long this follow ran;
- ``kernel_sse_log_events_total``, ``kernel_sse_error_events_total``: events
  this follow delivered;
- ``kernel_sse_reconnects_total``: connection drops recovered from;
- ``kernel_sse_finish_timestamp_seconds``: when the follow ended (Unix time):
  alert when it grows stale;
- ``kernel_sse_exit_code``: the command's exit status.

Label values are escaped as the text format wants (``\\\\``, ``\\"``, ``\\n``);
other control characters and lone surrogates, which the format cannot carry
safely, appear as the visible text ``\\x1b`` / ``\\ud800`` (backslash escaped),
so the file is always valid UTF-8 that node_exporter parses.

Options:

``--prometheus-file PATH``
    The file to write, in node_exporter's ``--collector.textfile.directory``;
    its name must end in ``.prom``.  Use one file per cron job.  A path in a
    missing or unwritable folder, or not ending in ``.prom``, stops the run
    before the first request (exit 2).  Nothing is written when the run stops
    before its first request.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
import time
from typing import List, Optional, Sequence, Tuple, Union

import kernel_sse
from kernel_sse import ErrorEvent, FollowContext, LogEvent, Outcome

from kernel_sse import visible

OUTCOMES = ("succeeded", "failed", "refused", "gave_up", "deadline", "interrupted", "plugin_error")
"""The ``status`` label values ``kernel_sse_invocation_status`` always has."""


class _Follow:
    """One follow's counts and checked path (``context.state_for``)."""

    def __init__(self) -> None:
        self.path: Optional[str] = None  # set once on_start has checked it
        self.logs = 0
        self.errors = 0


@kernel_sse.hookimpl
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--prometheus-file``."""
    parser.add_argument(
        "--prometheus-file",
        metavar="PATH",
        help="write node_exporter textfile-collector metrics to PATH (*.prom) when the follow ends",
    )


def check_path(path: str) -> None:
    """Raise :class:`kernel_sse.UsageError` unless ``path`` ends in ``.prom`` and
    its folder exists and takes new files (tried, as the final write will)."""
    flag = f"--prometheus-file '{path}'"
    if not path.endswith(".prom"):
        raise kernel_sse.UsageError(
            f"{flag}: the name must end in .prom (node_exporter reads only *.prom files), e.g. '{path}.prom'"
        )
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise kernel_sse.UsageError(f"{flag}: that is a folder; give the path of a .prom file in it")
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise kernel_sse.UsageError(
            f"{flag}: the folder '{folder}' {what}; create it or use node_exporter's textfile directory"
        )
    try:  # the final write is a new file in the folder, then a rename: try the first part now
        fd, probe = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise kernel_sse.UsageError(
            f"{flag}: cannot create files in the folder '{folder}' ({exc.strerror or type(exc).__name__}); "
            "fix its permissions or choose another folder"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


@kernel_sse.hookimpl
def on_start(context: FollowContext) -> None:
    """Check ``--prometheus-file`` before the first request."""
    run = context.state_for(_Follow)
    path = context.options.get("prometheus_file")
    if isinstance(path, str) and path:
        check_path(path)
        run.path = path


@kernel_sse.hookimpl
def on_log(event: LogEvent, context: FollowContext) -> None:
    """Count a log event."""
    context.state_for(_Follow).logs += 1


@kernel_sse.hookimpl
def on_error(event: ErrorEvent, context: FollowContext) -> None:
    """Count an error event."""
    context.state_for(_Follow).errors += 1


def escape_label(value: str) -> str:
    """A label value escaped as the text exposition format wants it.

    The format knows three escapes (backslash, double quote, line feed); any
    other control character or a lone surrogate first becomes visible text
    (``\\x1b``, ``\\ud800``), so the value stays one line of valid UTF-8.
    """
    value = "\n".join(visible(piece) for piece in value.split("\n"))
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[Tuple[str, str]]) -> str:
    return "{" + ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs) + "}"


def _number(value: Union[int, float]) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"  # the format's spelling, not Python's
        return repr(value)
    return str(value)


def render(outcome: Outcome, context: FollowContext, now: Optional[float] = None) -> str:
    """The file's text for this outcome."""
    run = context.state_for(_Follow)
    invocation = outcome.invocation
    base = [
        ("app", invocation.app_name if invocation is not None else ""),
        ("action", invocation.action_name if invocation is not None else ""),
        ("invocation_id", invocation.id if invocation is not None else context.invocation_id),
    ]
    lines: List[str] = []

    def metric(name: str, kind: str, text: str, samples: Sequence[Tuple[Sequence[Tuple[str, str]], float]]) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples)

    statuses = OUTCOMES if outcome.status in OUTCOMES else OUTCOMES + (outcome.status,)
    metric("kernel_sse_invocation_status", "gauge",
           "Outcome of the last follow: 1 for its status, 0 for the others.",
           [(base + [("status", status)], int(status == outcome.status)) for status in statuses])
    if invocation is not None and invocation.finished_at is not None:
        took = (invocation.finished_at - invocation.started_at).total_seconds()
        metric("kernel_sse_invocation_duration_seconds", "gauge",
               "How long the invocation ran, from started_at to finished_at.", [(base, took)])
    metric("kernel_sse_follow_duration_seconds", "gauge", "How long the follow ran.", [(base, context.elapsed)])
    metric("kernel_sse_log_events_total", "counter", "Log events the follow delivered.", [(base, run.logs)])
    metric("kernel_sse_error_events_total", "counter", "Error events the follow delivered.", [(base, run.errors)])
    metric("kernel_sse_reconnects_total", "counter", "Connection drops the follow recovered from.",
           [(base, context.reconnects)])
    metric("kernel_sse_finish_timestamp_seconds", "gauge", "When the follow ended, in Unix time.",
           [(base, time.time() if now is None else now)])
    metric("kernel_sse_exit_code", "gauge", "The exit status of kernel-sse.", [(base, outcome.exit_code)])
    return "\n".join(lines) + "\n"


def write_atomically(path: str, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text``: temp file in the same folder, fsync, rename."""
    directory = os.path.dirname(os.path.abspath(path))
    # The temporary name does not end in .prom, so the collector never reads it half-written.
    fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable, where the OS allows
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@kernel_sse.hookimpl
def on_finish(outcome: Outcome, context: FollowContext) -> None:
    """Write the metrics file."""
    run = context.state_for(_Follow)
    if run.path is None:
        return
    if outcome.status == "usage_error" and context.attempt == 0:
        return  # the run stopped before its first request (another plugin's options): no follow to report
    write_atomically(run.path, render(outcome, context))
