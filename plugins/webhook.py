"""webhook: POST a JSON summary of the follow to a URL when it is over.

Active only when a URL is set.  When the follow ends, however it ends
(succeeded, failed, gave up, deadline, refused, interrupted), it POSTs one JSON
object (``Content-Type: application/json``)::

    {"text": ":x: invocation inv_123 (my-app run) failed: boom after 3.2s (exit 1)\\n```\\n...```",
     "id": "inv_123", "app": "my-app", "action": "run", "version": "1.0.0",
     "status": "failed", "invocation_status": "failed", "reason": "boom",
     "duration": 3.2, "output": null, "exit_code": 1,
     "log_count": 57, "error_count": 1, "reconnects": 0,
     "logs": ["2025-06-20T12:00:00.123Z last lines", ...]}

``status`` is the outcome (``succeeded``, ``failed``, ``refused``, ``gave_up``,
``deadline``, ``interrupted``, ``plugin_error``); ``invocation_status`` the
invocation's last known status (null if none was seen); ``reason`` its
``status_reason``, or what went wrong for outcomes without a terminal state;
``duration`` the invocation's run time in seconds once finished, else how long
it was followed; ``output`` the invocation's output string as sent; ``logs`` the
last log lines.  ``text`` is one readable line plus the last lines in a code
block, so the URL can be a Slack or Mattermost incoming webhook as is.

Options:

``--webhook-url URL``
    Where to POST.  Defaults to the environment variable
    ``KERNEL_SSE_WEBHOOK_URL``; prefer it, so the URL's secret stays out of
    ``ps`` and shell history.  The secret (path, query, user info) is never
    printed: messages name ``scheme://host`` only.  A URL that is not
    ``http(s)://host...`` stops the run before the first request (exit 2).
``--webhook-timeout SECONDS``
    Timeout of each attempt (default 10; more than 0).
``--webhook-retries N``
    Retries after a connection error, a timeout, a 429 or a 5xx answer, with
    exponential backoff (0.5 s, 1 s, 2 s, ...; default 3).  Other answers
    (redirects included: they are not followed) are not retried.
``--webhook-lines N``
    How many of the last log lines to send (default 20; 0 for none).

A POST that fails after its retries is reported on stderr as a plugin error,
so the exit status becomes 5 where it would have been 0.  Nothing is posted
when the run stops before its first request (bad options: exit 2).  Any text
is sent: control characters and lone surrogates are JSON escapes in the body,
which is always valid UTF-8.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from typing import Deque, Dict, List, Optional, Union

import kernel_sse
from kernel_sse import ErrorEvent, FollowContext, LogEvent, Outcome

from kernel_sse import format_text as event_text, json_line

ENV_URL = "KERNEL_SSE_WEBHOOK_URL"
"""The environment variable that gives the default URL."""

_BACKOFF = 0.5  # seconds before the first retry; doubles each time
_MAX_LINE = 500  # characters of one log line in ``text``
_EMOJI = {"succeeded": ":white_check_mark:", "failed": ":x:"}

JSONValue = Union[None, bool, int, float, str, List[str]]


class WebhookError(Exception):
    """The POST failed; the message names the host only."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are failures: urllib would turn the POST into a body-less GET."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class _Follow:
    """One follow's summary (``context.state_for``)."""

    def __init__(self) -> None:
        self.url: Optional[str] = None  # set once on_start has checked it
        self.logs: Deque[str] = deque(maxlen=20)
        self.log_count = 0
        self.error_count = 0


@kernel_sse.hookimpl
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--webhook-*`` options."""
    group = parser.add_argument_group("webhook plugin")
    group.add_argument("--webhook-url", metavar="URL",
                       help=f"POST a JSON summary here when the follow ends (default: ${ENV_URL})")
    group.add_argument("--webhook-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="timeout of each POST attempt (default: 10)")
    group.add_argument("--webhook-retries", type=int, default=3, metavar="N",
                       help="retries after errors, 429 and 5xx answers (default: 3)")
    group.add_argument("--webhook-lines", type=int, default=20, metavar="N",
                       help="how many of the last log lines to send (default: 20)")


def redact(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what may be printed of it."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme or '?'}://{host}{port}"


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def check_url(url: str, where: str = "--webhook-url") -> None:
    """Raise :class:`kernel_sse.UsageError` unless ``url`` is ``http(s)://host...``;
    the message names ``where`` the URL came from and never its secret part."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise kernel_sse.UsageError(
            f"{where} ({redact(url)}) is not a valid URL; give the full http(s):// address of the webhook"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise kernel_sse.UsageError(
            f"{where} ({redact(url)}) is not an http(s) URL with a host; "
            "give the full address, e.g. https://hooks.example.com/..."
        )


@kernel_sse.hookimpl
def on_start(context: FollowContext) -> None:
    """Find the URL (option, then environment) and check it and the numbers, before the first request."""
    run = context.state_for(_Follow)
    options = context.options
    option = options.get("webhook_url")
    url = option or os.environ.get(ENV_URL) or None
    if not isinstance(url, str):
        return
    check_url(url, "--webhook-url" if option else ENV_URL)
    timeout = _number(options.get("webhook_timeout"), 10.0)
    if not timeout > 0:  # also NaN
        raise kernel_sse.UsageError(f"--webhook-timeout {timeout:g}: give a number of seconds above 0, e.g. 10")
    for name in ("webhook_retries", "webhook_lines"):
        if _number(options.get(name), 0) < 0:
            flag = "--" + name.replace("_", "-")
            raise kernel_sse.UsageError(f"{flag} {options.get(name)}: give 0 or more")
    run.logs = deque(maxlen=int(_number(options.get("webhook_lines"), 20)))
    run.url = url


@kernel_sse.hookimpl
def on_log(event: LogEvent, context: FollowContext) -> None:
    """Keep the last lines."""
    run = context.state_for(_Follow)
    run.log_count += 1
    if run.url is not None and run.logs.maxlen:
        line = event_text(event)  # never raises; control characters shown as escapes
        if line is not None:
            run.logs.append(line)


@kernel_sse.hookimpl
def on_error(event: ErrorEvent, context: FollowContext) -> None:
    """Count error events."""
    context.state_for(_Follow).error_count += 1


def summary(outcome: Outcome, context: FollowContext) -> Dict[str, JSONValue]:
    """The JSON object to POST."""
    invocation = outcome.invocation
    reason = invocation.status_reason if invocation is not None else None
    if outcome.status not in kernel_sse.TERMINAL_STATUSES and outcome.message:
        reason = outcome.message
    duration = context.elapsed
    if invocation is not None and invocation.finished_at is not None:
        duration = (invocation.finished_at - invocation.started_at).total_seconds()
    name = f"invocation {invocation.id if invocation is not None else context.invocation_id}"
    if invocation is not None:
        name += f" ({invocation.app_name} {invocation.action_name})"
    text = (
        f"{_EMOJI.get(outcome.status, ':warning:')} {name} {outcome.status.replace('_', ' ')}"
        + (f": {reason}" if reason else "")
        + f" after {duration:.1f}s (exit {outcome.exit_code})"
    )
    run = context.state_for(_Follow)
    if run.logs:
        tail = "\n".join(line if len(line) <= _MAX_LINE else line[:_MAX_LINE] + "…" for line in run.logs)
        text += "\n```\n" + tail.replace("```", "``\u200b`") + "\n```"
    return {
        "text": text,
        "id": invocation.id if invocation is not None else context.invocation_id,
        "app": invocation.app_name if invocation is not None else None,
        "action": invocation.action_name if invocation is not None else None,
        "version": invocation.version if invocation is not None else None,
        "status": outcome.status,
        "invocation_status": invocation.status if invocation is not None else None,
        "reason": reason,
        "duration": round(duration, 3),
        "output": invocation.output if invocation is not None else None,
        "exit_code": outcome.exit_code,
        "log_count": run.log_count,
        "error_count": run.error_count,
        "reconnects": context.reconnects,
        "logs": list(run.logs),
    }


def _scrub(text: str, url: str) -> str:
    """``text`` (an exception's message) without the secret parts of ``url``:
    some errors quote the path or the user info alone (e.g. http.client's
    "URL can't contain control characters")."""
    text = text.replace(url, redact(url))
    try:
        parts = urllib.parse.urlsplit(url)
        pieces = [parts.path, parts.query, parts.fragment, parts.username, parts.password]
    except ValueError:
        return text
    for piece in sorted({piece for piece in pieces if piece and len(piece) > 1}, key=len, reverse=True):
        text = text.replace(piece, "…")
    return text


def post(url: str, body: bytes, timeout: float, retries: int) -> None:
    """POST ``body``, retrying transient failures; raise :class:`WebhookError`."""
    opener = urllib.request.build_opener(_NoRedirect())  # proxies from the environment, as usual
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"kernel-sse/{kernel_sse.__version__}"},
    )
    problem, tried = "", 0
    while tried <= max(retries, 0):
        if tried:
            time.sleep(_BACKOFF * 2 ** (tried - 1))
        tried += 1
        try:
            with opener.open(request, timeout=timeout) as response:
                response.read()
            return
        except urllib.error.HTTPError as exc:
            exc.close()
            problem = f"HTTP {exc.code}"
            if exc.code != 429 and exc.code < 500:
                break
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad URLs
            reason = getattr(exc, "reason", None) or exc
            problem = _scrub(f"{type(reason).__name__}: {reason}", url)
    raise WebhookError(f"POST to {redact(url)} failed after {tried} attempt{'s' if tried > 1 else ''}: {problem}")


@kernel_sse.hookimpl
def on_finish(outcome: Outcome, context: FollowContext) -> None:
    """POST the summary."""
    run = context.state_for(_Follow)
    if run.url is None:
        return
    url, run.url = run.url, None
    if outcome.status == "usage_error" and context.attempt == 0:
        return  # the run stopped before its first request (another plugin's options): no follow to report
    # json_line: lone surrogates as escapes, so the body is valid UTF-8; deep JSON cannot break it.
    body = json_line(summary(outcome, context)).encode("utf-8")
    options = context.options
    try:
        post(url, body, _number(options.get("webhook_timeout"), 10.0), int(_number(options.get("webhook_retries"), 3)))
    except WebhookError:
        raise
    except Exception as exc:  # anything unforeseen: still never show the URL
        raise WebhookError(f"POST to {redact(url)} failed: {type(exc).__name__}") from None
