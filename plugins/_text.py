"""Text and JSON helpers the bundled plugins share (not a plugin: nothing to register).

Every value the event model accepts must reach the output without losing the
line: control characters, lone surrogates (``"\\ud800"`` is valid JSON), JSON
nested about a thousand levels deep, timestamps whose UTC instant falls outside
years 1 to 9999 (``0001-01-01T00:00:00+01:00``).  The core's ``format_text``,
``format_time`` and ``format_json`` do not cover all of these yet; these
wrappers call them and fill the gaps, so they can move into the core as they are.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import List, Optional, Tuple

import kernel_sse
from kernel_sse import KernelEvent, UnknownEvent

# C0 controls but tab, DEL, C1 controls, and lone surrogates: a terminal acts
# on the controls (ESC starts a sequence that can rewrite the screen), and a
# surrogate cannot be encoded in UTF-8 at all.
_INVISIBLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_ASCII = re.compile("[^\x00-\x7f]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with control characters (tab excepted) and lone surrogates as
    visible escapes: ESC becomes the four characters ``\\x1b``, a newline
    ``\\x0a``, U+D800 ``\\ud800``.  Other text is returned unchanged."""
    if _INVISIBLE.search(text) is None:  # nearly every line: no copy
        return text
    return _INVISIBLE.sub(_escape, text)


def format_time(timestamp: datetime) -> str:
    """``kernel_sse.format_time``, or, when the UTC instant is outside years 1
    to 9999 (``astimezone`` overflows), the time as sent with its offset,
    e.g. ``0001-01-01T00:00:00.000+01:00``."""
    try:
        return kernel_sse.format_time(timestamp)
    except (OverflowError, ValueError):
        return timestamp.isoformat(timespec="milliseconds")


def event_text(event: KernelEvent) -> Optional[str]:
    """``kernel_sse.format_text``'s line for ``event`` (None for heartbeats),
    made safe to print: never raises for a value the parser accepted, and
    shows control characters and lone surrogates as escapes."""
    try:
        line = kernel_sse.format_text(event)
    except (OverflowError, ValueError, RecursionError):
        line = _fallback_text(event)
    return None if line is None else visible(line)


def _fallback_text(event: KernelEvent) -> Optional[str]:
    """format_text's line, built with the helpers here (odd timestamps, deep JSON)."""
    if isinstance(event, UnknownEvent):
        return f"[{event.event}] {json_line(event.raw, sort_keys=True)}"
    if isinstance(event, kernel_sse.LogEvent):
        return f"{format_time(event.timestamp)} {event.message}"
    if isinstance(event, kernel_sse.InvocationStateEvent):
        invocation = event.invocation
        reason = f": {invocation.status_reason}" if invocation.status_reason else ""
        return f"{format_time(event.timestamp)} [{invocation.status}]{reason}"
    if isinstance(event, kernel_sse.ErrorEvent):
        return f"{format_time(event.timestamp)} [error] {event.error.code}: {event.error.message}"
    return None


def json_line(value: object, sort_keys: bool = False) -> str:
    """``value`` as one line of compact JSON that is valid UTF-8 and means
    exactly ``value``: non-ASCII characters as they are, lone surrogates as
    ``\\ud800`` escapes, and nesting deeper than the JSON encoder's recursion
    allows encoded without recursion."""
    try:
        line = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
    except RecursionError:
        line = _dumps_flat(value, sort_keys)
    # The structure of a JSON text is ASCII: a surrogate can only be inside a
    # string, where its \u escape denotes the very same character.
    return _SURROGATE.sub(_escape, line) if _SURROGATE.search(line) else line


def ascii_json(line: str) -> str:
    """A JSON text with every non-ASCII character as a ``\\u`` escape (the same value)."""
    return _NON_ASCII.sub(_ascii_escape, line)


def _ascii_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON writes characters beyond the BMP
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _dumps_flat(value: object, sort_keys: bool) -> str:
    """json.dumps(value, ensure_ascii=False, separators=(",", ":")) with an
    explicit stack instead of recursion, for JSON nested too deep for it."""
    out: List[str] = []
    # (True, text) is output as is; (False, value) is a value still to encode.
    todo: List[Tuple[bool, object]] = [(False, value)]
    while todo:
        done, item = todo.pop()
        if done:
            out.append(str(item))
        elif isinstance(item, dict):
            keys = sorted(item) if sort_keys else list(item)
            pending: List[Tuple[bool, object]] = [(True, "{")]
            for index, key in enumerate(keys):
                pending.append((True, ("," if index else "") + json.dumps(str(key), ensure_ascii=False) + ":"))
                pending.append((False, item[key]))
            pending.append((True, "}"))
            todo.extend(reversed(pending))
        elif isinstance(item, (list, tuple)):
            pending = [(True, "[")]
            for index, element in enumerate(item):
                if index:
                    pending.append((True, ","))
                pending.append((False, element))
            pending.append((True, "]"))
            todo.extend(reversed(pending))
        else:  # str, int, float, bool, None: never recursive
            out.append(json.dumps(item, ensure_ascii=False))
    return "".join(out)
