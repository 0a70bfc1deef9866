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

# Module state, reset in on_start: one process may run many follows.
_pattern: Optional[Pattern[str]] = None
_matches: List[str] = []


@kernel_sse.hookimpl
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--match", metavar="REGEX", help="count log lines matching REGEX")


@kernel_sse.hookimpl
def on_start(context: FollowContext) -> None:
    global _pattern
    value = context.options.get("match")  # options by dest name, ours included
    _pattern = re.compile(value) if isinstance(value, str) else None
    _matches.clear()


@kernel_sse.hookimpl
def on_log(event: LogEvent) -> None:  # a hook may take any subset of its arguments
    if _pattern is not None and _pattern.search(event.message):
        _matches.append(event.message)


@kernel_sse.hookimpl
def on_finish(outcome: Outcome, context: FollowContext) -> None:
    if _pattern is not None:
        # Standard output carries the events: diagnostics go to standard error.
        print(
            f"{len(_matches)} log line(s) of {context.invocation_id} matched "
            f"{_pattern.pattern!r}; the follow ended: {outcome.status}",
            file=sys.stderr,
        )
