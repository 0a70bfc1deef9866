"""Count the log lines that match a pattern, and say how many when the follow ends.

    kernel-sse follow INVOCATION_ID -p example_plugin.py --match 'timed out|retry'
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import List, Optional, Pattern

import kernel_sse
from kernel_sse import FollowContext, LogEvent, Outcome

__version__ = "1.0.0"


class Matches:
    """What this plugin knows about one follow (one process may run several)."""

    def __init__(self) -> None:
        self.pattern: Optional[Pattern[str]] = None
        self.lines: List[str] = []


@kernel_sse.hookimpl
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--match", metavar="REGEX", help="count log lines matching REGEX")


@kernel_sse.hookimpl
def on_start(context: FollowContext) -> None:  # a hook takes any subset of its arguments, by name
    value = context.options.get("match")  # options by dest name, ours included
    if not isinstance(value, str):
        return
    try:
        pattern = re.compile(value)
    except re.error as exc:
        # Bad options stop the run here, before the first request: exit 2 and this message.
        raise kernel_sse.UsageError(f"--match '{value}' is not a regular expression ({exc}); fix the pattern")
    context.state_for(Matches).pattern = pattern  # this follow's own Matches, made on first use


@kernel_sse.hookimpl
def on_log(event: LogEvent, context: FollowContext) -> None:
    matches = context.state_for(Matches)
    if matches.pattern is not None and matches.pattern.search(event.message):
        matches.lines.append(event.message)


@kernel_sse.hookimpl
def on_finish(outcome: Outcome, context: FollowContext) -> None:
    matches = context.state_for(Matches)
    if matches.pattern is not None:
        # Standard output carries the events: diagnostics go to standard error.
        print(
            f"{len(matches.lines)} log line(s) of {context.invocation_id} matched "
            f"{matches.pattern.pattern!r}; the follow ended: {outcome.status}",
            file=sys.stderr,
        )
