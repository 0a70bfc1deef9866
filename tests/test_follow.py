"""Tests of the follow loop (``kernel_sse.follow`` / ``Follower``, DESIGN 3.3 and 4, issue 4).

Everything goes over real sockets on 127.0.0.1, against the emulator
(``kernel_sse_emulator``) or, where the emulator cannot misbehave in the way a
test needs (trickled response heads, TLS, a CONNECT proxy), against small
servers written below. ``http.client`` is never mocked.

The resume rule under test (DESIGN 3.3): a reconnect sends ``since`` = the
timestamp string of the last log, state or error event delivered, and drops
from the replay exactly as many copies of each boundary event as were already
delivered, so every event arrives once, in order, whatever the fault.

``Follower`` is used directly where a test needs ``backoff_base`` (kept small,
so retries cost milliseconds) or ``on_retry`` (to see which ``since`` each
resume should carry); ``follow`` where the plain function is what is tested.

Tests of a follow over the network take a ``driver`` ("blocking" for
``Follower``, "asyncio" for ``AsyncFollower``) and run once with each: both
drivers must behave alike. ``events_of`` iterates either one from plain code.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import itertools
import json
import os
import logging
import platform
import queue
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from pathlib import Path
from typing import Callable, Dict, Generator, Iterator, List, Optional, Sequence, Tuple, Type, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernel_sse
from kernel_sse import (
    REORDER_WINDOW,
    parse_timestamp,
    APIStatusError,
    AsyncFollower,
    AuthenticationError,
    BadRequestError,
    Checkpoint,
    ConfigurationError,
    ConnectionFailed,
    DeadlineExceeded,
    ErrorEvent,
    Follower,
    HeartbeatEvent,
    InvocationStateEvent,
    KernelEvent,
    KernelSSEError,
    LogEvent,
    NotFoundError,
    PermissionDeniedError,
    StreamTimeout,
    UnknownEvent,
    follow,
)
from kernel_sse_emulator import (
    EmittedEvent,
    Emulator,
    Error,
    Fault,
    Gate,
    Log,
    Malformed,
    Pause,
    Raw,
    RequestRecord,
    Script,
    State,
    Step,
    Unknown,
    format_timestamp,
    running_emulator,
)

START = "2025-06-20T12:00:00Z"
START_NS = 1750420800 * 10**9
MS = 10**6
CANARY_KEY = "sk-kernel-CANARY-9f8e7d6c5b4a3210-do-not-leak"
"""A key distinctive enough to grep for in anything the client shows."""

BUG = "bug reported to the lead: "
"""Prefix of the reason of tests marked xfail(strict=True) for a known bug in kernel_sse.py."""

_ids = itertools.count()


def new_id(prefix: str = "inv") -> str:
    """A fresh invocation id, so many scripts can share one emulator."""
    return "%s-%d" % (prefix, next(_ids))


def at(offset_ns: int) -> str:
    """The RFC 3339 string of ``START`` plus ``offset_ns``."""
    return format_timestamp(START_NS + offset_ns)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key, base URL, project or proxy from the machine running the tests."""
    for name in (
        "KERNEL_API_KEY",
        "KERNEL_BASE_URL",
        "KERNEL_PROJECT_ID",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[Emulator]:
    """One emulator for the many small scripts of the sweeps (each with its own id)."""
    with running_emulator(api_key="test-key-shared-0123", heartbeat_interval=0.25) as emu:
        yield emu


# ---------------------------------------------------------------- helpers


DRIVERS = ("blocking", "asyncio")

AnyFollower = Union[Follower, AsyncFollower]


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    """Which follow driver a test runs: "blocking" (Follower) or "asyncio" (AsyncFollower)."""
    return str(request.param)


def new_follower(driver: str, invocation_id: str, **options: object) -> AnyFollower:
    """A Follower or an AsyncFollower, by ``driver``, with exactly ``options``."""
    cls: Type[AnyFollower] = AsyncFollower if driver == "asyncio" else Follower
    return cls(invocation_id, **options)  # type: ignore[arg-type]


def events_of(follower: AnyFollower) -> Generator[KernelEvent, None, None]:
    """Iterate either driver from plain code: an AsyncFollower on an event loop of its own.

    Closing this iterator closes the follower, as closing a Follower's generator does.
    """
    if isinstance(follower, Follower):
        yield from follower
        return
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(follower.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(follower.aclose())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def make_follower(driver: str, emu: Emulator, invocation_id: str, **options: object) -> AnyFollower:
    """A follower for ``emu`` with test-friendly defaults (tiny backoff, short idle limit)."""
    settings_: Dict[str, object] = {
        "api_key": emu.api_key,
        "base_url": emu.url,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "idle_timeout": 5.0,
        "max_retries": 6,
    }
    settings_.update(options)
    return new_follower(driver, invocation_id, **settings_)


def simple(invocation_id: str, **options: object) -> Script:
    """A script with one log ("x") and the terminal state; ``options`` go to Script."""
    return Script(invocation_id, [Log("x"), State("succeeded")], start=START, **options)  # type: ignore[arg-type]


def local(port: int) -> str:
    return "http://127.0.0.1:%d" % port


def is_client_error(event: KernelEvent) -> bool:
    return isinstance(event, ErrorEvent) and event.error.code.startswith("client_")


def is_server_event(event: KernelEvent) -> bool:
    """A log, state or error event the server sent: what moves the resume point."""
    return isinstance(event, (LogEvent, InvocationStateEvent, ErrorEvent)) and not is_client_error(event)


@dataclass
class Run:
    """One follow, run to its end: what it yielded and what it did."""

    follower: AnyFollower
    events: List[KernelEvent] = field(default_factory=list)
    retry_since: List[Optional[str]] = field(default_factory=list)
    """At each retry: the timestamp of the last server event delivered so far (None if none yet)."""
    retry_delays: List[float] = field(default_factory=list)
    error: Optional[BaseException] = None
    elapsed: float = 0.0

    @property
    def logs(self) -> List[str]:
        return [e.message for e in self.events if isinstance(e, LogEvent)]

    @property
    def content(self) -> List[KernelEvent]:
        """Everything but heartbeats."""
        return [e for e in self.events if not isinstance(e, HeartbeatEvent)]


def run_follow(driver: str, emu: Emulator, invocation_id: str, **options: object) -> Run:
    """Follow to the end with ``driver`` (or to an error, kept on the result)."""
    holder: List[Run] = []
    delivered: List[str] = []

    def on_retry(attempt: int, delay: float, reason: str) -> None:
        holder[0].retry_since.append(resume_since(delivered))
        holder[0].retry_delays.append(delay)

    follower = make_follower(driver, emu, invocation_id, on_retry=on_retry, **options)
    result = Run(follower)
    holder.append(result)
    started = time.monotonic()
    try:
        for event in events_of(follower):
            result.events.append(event)
            if isinstance(event, LogEvent) or (
                isinstance(event, ErrorEvent) and not event.error.code.startswith("client_")
            ):
                delivered.append(event.timestamp_raw)
    except KernelSSEError as exc:
        result.error = exc
    result.elapsed = time.monotonic() - started
    return result


def resume_since(delivered: Sequence[str]) -> Optional[str]:
    """The ``since`` a resume must carry: the reorder window before the
    newest log or error timestamp delivered (states do not move it), in UTC
    with nanoseconds; None before any."""
    if not delivered:
        return None
    newest_raw = max(delivered, key=lambda raw: (parse_timestamp(raw), raw))
    start = (parse_timestamp(newest_raw) - timedelta(seconds=REORDER_WINDOW)).astimezone(timezone.utc)
    dot = newest_raw.find(".")
    nanos = (newest_raw[dot + 7:dot + 10] if dot >= 0 else "").rstrip("Z").ljust(3, "0")[:3]
    return start.strftime("%Y-%m-%dT%H:%M:%S.%f") + nanos + "Z"


def event_requests(emu: Emulator, invocation_id: str) -> List[RequestRecord]:
    """The ``GET .../events`` requests for one invocation, oldest first."""
    return [
        r for r in emu.requests if r.invocation_id == invocation_id and r.path.split("?")[0].endswith("/events")
    ]


def since_of(record: RequestRecord) -> Optional[str]:
    values = record.query.get("since")
    return values[0] if values else None


def until_terminal(emitted: Sequence[EmittedEvent]) -> List[EmittedEvent]:
    out: List[EmittedEvent] = []
    for event in emitted:
        out.append(event)
        if event.terminal:
            break
    return out


Shape = Tuple[str, object]


def expected_shapes(emitted: Sequence[EmittedEvent]) -> List[Shape]:
    """What a follow must yield (heartbeats aside) for what the script emitted."""
    shapes: List[Shape] = []
    for event in until_terminal(emitted):
        if event.kind in ("log", "state", "error"):
            shapes.append(("event", event.json()))
        elif event.kind == "unknown":
            shapes.append(("unknown", event.json()))
        elif event.kind == "malformed":
            shapes.append(("malformed", event.data.decode("utf-8", "replace")))
        else:  # pragma: no cover - raw steps are not used with this helper
            raise AssertionError(event.kind)
    return shapes


def delivered_shapes(events: Sequence[KernelEvent]) -> List[Shape]:
    shapes: List[Shape] = []
    for event in events:
        if isinstance(event, HeartbeatEvent):
            continue
        if isinstance(event, UnknownEvent):
            shapes.append(("unknown", event.raw))
        elif isinstance(event, ErrorEvent) and event.error.code == "client_malformed_event":
            raw = [d.message for d in event.error.details if d.code == "raw_data"]
            shapes.append(("malformed", raw[0] if raw else None))
        elif isinstance(event, ErrorEvent) and event.error.code == "client_event_too_large":
            shapes.append(("too_large", None))
        else:
            assert isinstance(event, (LogEvent, InvocationStateEvent, ErrorEvent))
            shapes.append(("event", event.raw))
    return shapes


def expected_logs(emitted: Sequence[EmittedEvent]) -> List[str]:
    return [str(e.json()["message"]) for e in until_terminal(emitted) if e.kind == "log"]


def assert_resumes_carry_since(emu: Emulator, invocation_id: str, run: Run, first: Optional[str] = None) -> None:
    """Request 0 carries ``first``; each later one the last timestamp delivered before it (``first`` if none)."""
    # A request answered with a redirect is a hop of the same attempt, not an attempt.
    requests = [r for r in event_requests(emu, invocation_id) if r.status not in (301, 302, 303, 307, 308)]
    assert len(requests) == 1 + len(run.retry_since), [r.path for r in requests]
    assert since_of(requests[0]) == first
    assert [since_of(r) for r in requests[1:]] == [first if s is None else s for s in run.retry_since]


def assert_exactly_once(emu: Emulator, invocation_id: str, run: Run) -> None:
    """Every script event once, in order, ending with the terminal state, nothing after it."""
    assert run.error is None, run.error
    emitted = emu.invocation(invocation_id).emitted()
    assert run.logs == expected_logs(emitted)
    assert delivered_shapes(run.events) == expected_shapes(emitted)
    last = run.content[-1]
    assert isinstance(last, InvocationStateEvent) and last.invocation.status in ("succeeded", "failed")


def established_to(port: int) -> Optional[int]:
    """How many client sockets of this process are ESTABLISHED to ``port`` (None without /proc).

    Only this process's own sockets count: another server's accepted socket
    whose client happened to get ``port`` as its ephemeral port looks the same."""
    count, found = 0, False
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    mine = set()
    for fd in fds:
        try:
            mine.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and f"socket:[{fields[9]}]" in mine:
                count += 1
    return count if found else None


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def follow_in_thread(
    follower: AnyFollower,
) -> Tuple["queue.Queue[Tuple[str, object]]", threading.Thread]:
    """Iterate ``follower`` in a thread; items ("event", e), then ("done", None) or ("error", exc)."""
    items: queue.Queue[Tuple[str, object]] = queue.Queue()

    def target() -> None:
        try:
            for event in events_of(follower):
                items.put(("event", event))
            items.put(("done", None))
        except BaseException as exc:  # handed to the test thread
            items.put(("error", exc))

    thread = threading.Thread(target=target, name="test-follow", daemon=True)
    thread.start()
    return items, thread


def base_steps() -> List[Step]:
    """A small invocation: states, logs (two identical at one timestamp), an error, non-ASCII."""
    return [
        State("queued"),
        State("running"),
        Log("alpha"),
        Log("same line", at=at(10 * MS)),
        Log("same line", at=at(10 * MS)),
        Error("selector_timeout", "timed out; retrying"),
        Log("caf\u00e9 \u2713 \u6f22\u5b57 \U0001f600"),
        Log("omega"),
        State("succeeded", output={"ok": True}),
    ]


BASE_EVENTS = len(base_steps())


# ---------------------------------------------------------------- the request


def test_public_names_are_exported() -> None:
    """DESIGN 6: public names are in ``__all__`` (``from kernel_sse import *`` gets the follow API)."""
    names = [
        "follow",
        "Follower",
        "Checkpoint",
        "ConfigurationError",
        "APIStatusError",
        "BadRequestError",
        "AuthenticationError",
        "PermissionDeniedError",
        "NotFoundError",
        "StreamTimeout",
        "DeadlineExceeded",
        "ConnectionFailed",
    ]
    assert [name for name in names if name not in kernel_sse.__all__] == []
    for name in names[3:]:
        assert issubclass(getattr(kernel_sse, name), KernelSSEError)
    for name in names[4:8]:
        assert issubclass(getattr(kernel_sse, name), APIStatusError)


@pytest.mark.parametrize(
    "invocation_id",
    ["../x", "../../admin", "a?b", "a/b", "a#b", "a b", "%2e%2e", "a;b=c", "caf\u00e9/\u6f22\u5b57"],
)
def test_id_is_one_percent_encoded_segment(driver: str, emulator: Emulator, invocation_id: str) -> None:
    emulator.add(Script(invocation_id, [Log("for " + invocation_id), State("succeeded")], start=START))
    run = run_follow(driver, emulator, invocation_id)
    assert run.logs == ["for " + invocation_id]
    (request,) = emulator.requests
    assert request.path == "/invocations/%s/events" % urllib.parse.quote(invocation_id, safe="")
    assert request.invocation_id == invocation_id and request.status == 200


def test_request_headers(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(simple(inv))
    run_follow(driver, emulator, inv)
    (request,) = emulator.requests
    assert request.method == "GET"
    assert request.header("Authorization") == "Bearer %s" % emulator.api_key
    assert request.header("Accept") == "text/event-stream"
    assert request.header("Cache-Control") == "no-cache"
    assert request.header("User-Agent") == "kernel-sse/%s Python/%s" % (
        kernel_sse.__version__,
        platform.python_version(),
    )
    assert request.header("X-Kernel-Project-Id") is None
    assert since_of(request) is None


def test_project_id_header(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(simple(inv))
    run = run_follow(driver, emulator, inv, project_id="proj_4x9k2")
    assert run.logs == ["x"]
    (request,) = emulator.requests
    assert request.header("X-Kernel-Project-Id") == "proj_4x9k2"


def test_since_is_passed_through_on_the_first_request_and_kept_until_something_arrives(
    driver: str,
    emulator: Emulator,
) -> None:
    inv = new_id()
    steps: List[Step] = [Log("old", at=at(0)), Log("boundary", at=at(5 * MS)), Log("new"), State("succeeded")]
    emulator.add(Script(inv, steps, start=START, attempts=[Fault(drop_after=0)]))
    since = "2025-06-20T12:00:00.005Z"
    run = run_follow(driver, emulator, inv, since=since)
    assert run.logs == ["boundary", "new"]
    assert run.retry_since == [None]  # the drop came before any event ...
    assert_resumes_carry_since(emulator, inv, run, first=since)  # ... so the resume sends the given since


def test_follow_function_reads_the_environment(emulator_env: Emulator) -> None:
    inv = new_id()
    emulator_env.add(Script(inv, [Log("from env"), State("succeeded")], start=START))
    events = list(follow(inv, idle_timeout=5))
    assert [e.message for e in events if isinstance(e, LogEvent)] == ["from env"]
    (request,) = emulator_env.requests
    assert request.header("Authorization") == "Bearer %s" % emulator_env.api_key


def test_arguments_win_over_the_environment(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_API_KEY", "wrong-key-from-env")
    monkeypatch.setenv("KERNEL_BASE_URL", local(closed_port()))
    inv = new_id()
    emulator.add(Script(inv, [Log("args"), State("succeeded")], start=START))
    events = list(follow(inv, api_key=emulator.api_key, base_url=emulator.url, idle_timeout=5))
    assert [e.message for e in events if isinstance(e, LogEvent)] == ["args"]


def test_default_base_url() -> None:
    assert Follower("inv", api_key="k").base_url == "https://api.onkernel.com"


def test_missing_key_names_the_variable() -> None:
    for api_key in (None, ""):
        with pytest.raises(ConfigurationError, match="KERNEL_API_KEY"):
            Follower("inv", api_key=api_key, base_url="http://127.0.0.1:1")
        with pytest.raises(ConfigurationError, match="KERNEL_API_KEY"):
            follow("inv", api_key=api_key, base_url="http://127.0.0.1:1")


@pytest.mark.parametrize(
    "invocation_id, api_key",
    [
        ("a\nb", "key"),
        ("a\r\nHost: evil", "key"),
        ("a\x00b", "key"),
        ("a\x7fb", "key"),
        ("a\tb", "key"),
        ("inv", "key\r\nX-Injected: 1"),
        ("inv", "key\n"),
        ("inv", "k\x00ey"),
        ("inv", "k\x1bey"),
    ],
)
def test_control_characters_are_refused_before_any_request(
    emulator: Emulator, invocation_id: str, api_key: str
) -> None:
    emulator.add(Script(invocation_id, [Log("x"), State("succeeded")], start=START))
    with pytest.raises(ConfigurationError):
        list(follow(invocation_id, api_key=api_key, base_url=emulator.url, idle_timeout=5))
    with pytest.raises(ConfigurationError):
        Follower(invocation_id, api_key=api_key, base_url=emulator.url)
    assert emulator.requests == []


def test_key_that_cannot_be_a_header_is_refused_before_any_request(driver: str, emulator: Emulator) -> None:
    """HTTP header values are Latin-1: a key with other characters can never be sent."""
    inv = new_id()
    emulator.add(simple(inv))
    with pytest.raises(ConfigurationError) as caught:
        list(events_of(make_follower(driver, emulator, inv, api_key=CANARY_KEY + "\u20ac", max_retries=0)))
    assert emulator.requests == []
    assert CANARY_KEY not in exception_text(caught.value)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://api.onkernel.com",
        "http://10.0.0.1:8080",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
    ],
)
def test_plain_http_to_a_remote_host_is_refused(base_url: str) -> None:
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        Follower("inv", api_key=CANARY_KEY, base_url=base_url)
    with pytest.raises(ConfigurationError):
        follow("inv", api_key=CANARY_KEY, base_url=base_url)
    # Allowed explicitly: built without complaint (nothing is sent until iterated).
    assert Follower("inv", api_key=CANARY_KEY, base_url=base_url, allow_insecure_http=True).base_url == base_url


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:1", "http://127.3.4.5:1", "http://localhost:1", "http://[::1]:1", "http://x.localhost"],
)
def test_plain_http_to_loopback_is_allowed(base_url: str) -> None:
    Follower("inv", api_key="k", base_url=base_url)


@pytest.mark.parametrize(
    "base_url", ["ftp://127.0.0.1", "127.0.0.1:8080", "https://", "http://user:pw@127.0.0.1:1"]
)
def test_bad_base_url_is_refused(base_url: str) -> None:
    with pytest.raises(ConfigurationError):
        Follower("inv", api_key=CANARY_KEY, base_url=base_url)


# ---------------------------------------------------------------- latency


def test_an_event_reaches_the_caller_while_the_server_waits(driver: str, emulator: Emulator) -> None:
    """The emulator writes one event and blocks; follow() must yield it before the gate opens.

    A client that waits for a buffer to fill would never get "first" here (no
    heartbeats, nothing else is sent): the queue times out and the test fails
    instead of hanging.
    """
    emulator.heartbeat_interval = None
    gates = [Gate(), Gate()]
    inv = new_id()
    emulator.add(
        Script(inv, [Log("first"), gates[0], Log("second"), gates[1], State("succeeded")], start=START)
    )
    items, thread = follow_in_thread(make_follower(driver, emulator, inv, idle_timeout=30))
    try:
        for expected, gate in zip(["first", "second"], gates):
            kind, item = items.get(timeout=5)
            assert kind == "event" and isinstance(item, LogEvent) and item.message == expected, (kind, item)
            assert gate.reached.is_set() and not gate.opened.is_set()
            assert items.empty()
            gate.release()
        kind, item = items.get(timeout=5)
        assert kind == "event" and isinstance(item, InvocationStateEvent)
        assert items.get(timeout=5) == ("done", None)
    finally:
        for gate in gates:
            gate.release()
        thread.join(10)
    assert not thread.is_alive()


# ---------------------------------------------------------------- the terminal state


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_terminal_state_ends_the_follow_even_if_the_server_keeps_sending(driver: str, emulator: Emulator, status: str) -> None:
    inv = new_id()
    emulator.add(
        Script(
            inv,
            [Log("before"), State(status), Log("after the end"), Error("late", "after"), State("running")],
            start=START,
            fault=Fault(keep_open=True),
        )
    )
    run = run_follow(driver, emulator, inv, idle_timeout=10)
    assert run.error is None
    assert run.logs == ["before"]
    last = run.content[-1]
    assert isinstance(last, InvocationStateEvent) and last.invocation.status == status
    assert len(run.content) == 2
    assert run.elapsed < 3.0  # did not wait for more bytes, heartbeats or the idle limit
    assert len(emulator.requests) == 1
    assert run.follower.finished
    open_connections = established_to(emulator.port)
    if open_connections is not None:
        assert open_connections == 0  # the client closed its socket


def test_stopping_early_closes_the_connection(driver: str, emulator: Emulator) -> None:
    gate = Gate()
    inv = new_id()
    emulator.add(Script(inv, [Log("a"), gate, State("succeeded")], start=START))
    try:
        events = events_of(make_follower(driver, emulator, inv))
        first = next(events)
        assert isinstance(first, LogEvent) and first.message == "a"
        assert established_to(emulator.port) in (1, None)
        events.close()  # closing the generator is how a caller stops early
        assert established_to(emulator.port) in (0, None)
    finally:
        gate.release()


def test_terminal_state_stops_after_a_resume_too(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(
        Script(
            inv,
            [Log("a"), Log("b"), State("succeeded"), Log("after")],
            start=START,
            fault=Fault(keep_open=True),
            attempts=[Fault(drop_after=2, keep_open=True)],
        )
    )
    run = run_follow(driver, emulator, inv)
    assert run.logs == ["a", "b"] and isinstance(run.content[-1], InvocationStateEvent)
    assert len(event_requests(emulator, inv)) == 2


def test_errors_are_not_terminal(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(
        Script(
            inv,
            [Error("boom", "it broke"), State("running"), Log("still going"), State("failed")],
            start=START,
        )
    )
    run = run_follow(driver, emulator, inv)
    assert [type(e).__name__ for e in run.content] == [
        "ErrorEvent",
        "InvocationStateEvent",
        "LogEvent",
        "InvocationStateEvent",
    ]
    assert run.follower.invocation is not None and run.follower.invocation.status == "failed"


# ---------------------------------------------------------------- drops: every emulator fault

FAULT_CASES: Dict[str, Tuple[Sequence[Step], Sequence[Fault], Fault, Dict[str, object]]] = {
    # name: (extra steps inserted before the terminal state, attempts, default fault, follower options)
    "drop-FIN-between-identical-lines": ((), [Fault(drop_after=4)], Fault(), {}),
    "drop-RST-between-identical-lines": ((), [Fault(drop_after=4, reset=True)], Fault(), {}),
    "drop-FIN-after-both-identical-lines": ((), [Fault(drop_after=5)], Fault(), {}),
    "drop-RST-after-both-identical-lines": ((), [Fault(drop_after=5, reset=True)], Fault(), {}),
    "drops-twice": ((), [Fault(drop_after=3), Fault(drop_after=4, reset=True)], Fault(), {}),
    "clean-end-before-terminal": ((), [Fault(end_after=4), Fault(end_after=3)], Fault(), {}),
    "silence-past-idle-timeout": ((), [Fault(silence_after=4, silence=30)], Fault(), {"idle_timeout": 0.4}),
    "status-500": ((), [Fault(drop_after=4), Fault(status=500)], Fault(), {}),
    "status-502": ((), [Fault(drop_after=4), Fault(status=502)], Fault(), {}),
    "status-503-retry-after": ((), [Fault(drop_after=4), Fault(status=503, retry_after="0")], Fault(), {}),
    "status-429-retry-after": ((), [Fault(drop_after=5), Fault(status=429, retry_after="0")], Fault(), {}),
    "byte-by-byte": ((), [Fault(byte_by_byte=True, drop_after=4)], Fault(byte_by_byte=True), {}),
    "CRLF": ((), [Fault(line_ending="\r\n", drop_after=4)], Fault(line_ending="\r\n"), {}),
    "CR": ((), [Fault(line_ending="\r", drop_after=4)], Fault(line_ending="\r"), {}),
    "BOM": ((), [Fault(bom=True, drop_after=4)], Fault(bom=True), {}),
    "CR-byte-by-byte-BOM": (
        (),
        [Fault(line_ending="\r", byte_by_byte=True, bom=True, drop_after=4)],
        Fault(line_ending="\r", byte_by_byte=True, bom=True),
        {},
    ),
    "invalid-UTF-8": ((Log(b"bad \xff\xfe \xc3( bytes \xe2\x82"),), [Fault(drop_after=9)], Fault(), {}),
    "malformed-JSON": ((Malformed(), Log("after malformed")), [Fault(drop_after=9)], Fault(), {}),
    "unknown-kind": (
        (Unknown("browser_ready", {"session": "s1"}), Log("after unknown")),
        [Fault(drop_after=9)],
        Fault(),
        {},
    ),
    "very-large-line": ((Log("L" * 1_500_000), Log("after large")), [Fault(drop_after=8)], Fault(), {}),
    "keep-open": ((), [Fault(drop_after=4, keep_open=True)], Fault(keep_open=True), {}),
    "redirect-then-drop": ((), [Fault(redirect_to=""), Fault(drop_after=4)], Fault(), {}),
}


@pytest.mark.parametrize("name", sorted(FAULT_CASES))
def test_every_fault_delivers_every_log_exactly_once(driver: str, shared_emulator: Emulator, name: str) -> None:
    extra, attempts, fault, options = FAULT_CASES[name]
    steps = base_steps()
    steps[-1:-1] = list(extra)
    steps.append(Log("after the terminal state"))
    inv = new_id(name)
    shared_emulator.add(Script(inv, steps, start=START, attempts=attempts, fault=fault))
    run = run_follow(driver, shared_emulator, inv, **options)
    assert run.error is None, run.error
    emitted = shared_emulator.invocation(inv).emitted()
    # The log messages, exactly once each, in order.
    assert run.logs == expected_logs(emitted)
    # Every server event (logs, states, errors), whole, exactly once each, in order.
    assert [e.raw for e in run.events if is_server_event(e)] == [
        e.json() for e in until_terminal(emitted) if e.kind in ("log", "state", "error")
    ]
    last = run.content[-1]
    assert isinstance(last, InvocationStateEvent) and last.invocation.status == "succeeded"
    # It did resume, each time from the last delivered log/state/error timestamp.
    assert len(event_requests(shared_emulator, inv)) >= 2
    assert_resumes_carry_since(shared_emulator, inv, run)
    assert all(since is not None for since in run.retry_since)


def test_invalid_utf8_is_replaced_not_fatal(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(Script(inv, [Log(b"ok \xff end"), Log("fine"), State("succeeded")], start=START))
    assert run_follow(driver, emulator, inv).logs == ["ok \ufffd end", "fine"]


@pytest.mark.parametrize("reset", [False, True], ids=["FIN", "RST"])
@pytest.mark.parametrize("drop_after", range(BASE_EVENTS))
def test_drop_after_every_event_index(driver: str, shared_emulator: Emulator, drop_after: int, reset: bool) -> None:
    inv = new_id("sweep")
    attempts = [Fault(drop_after=drop_after, reset=reset)]
    shared_emulator.add(Script(inv, base_steps(), start=START, attempts=attempts))
    run = run_follow(driver, shared_emulator, inv)
    assert_exactly_once(shared_emulator, inv, run)
    assert len(event_requests(shared_emulator, inv)) == 2
    assert_resumes_carry_since(shared_emulator, inv, run)
    timed = [t for t, kind in zip(base_timestamps(), BASE_KINDS) if kind in ("log", "error")][: max(0, drop_after - 2)]
    assert run.retry_since == [resume_since(timed)]


BASE_KINDS = ("state", "state", "log", "log", "log", "error", "log", "log", "state")


def base_timestamps() -> List[str]:
    """The timestamp strings the emulator gives ``base_steps()`` from ``START`` (tick 1 ms)."""
    return [at(n * MS) for n in (0, 1, 2, 10, 10, 11, 12, 13, 14)]


def test_duplicates_by_position_at_one_timestamp(driver: str, emulator: Emulator) -> None:
    """Three identical lines and a different one at one timestamp, drops between each."""
    inv = new_id()
    same = at(5 * MS)
    steps: List[Step] = [
        Log("x", at=same),
        Log("x", at=same),
        Log("y", at=same),
        Log("x", at=same),
        Log("z", at=at(6 * MS)),
        State("succeeded", at=at(7 * MS)),
    ]
    attempts = [Fault(drop_after=1), Fault(drop_after=2), Fault(drop_after=3, reset=True), Fault(drop_after=4)]
    emulator.add(Script(inv, steps, start=START, attempts=attempts))
    run = run_follow(driver, emulator, inv)
    assert run.logs == ["x", "x", "y", "x", "z"]
    assert_exactly_once(emulator, inv, run)
    assert_resumes_carry_since(emulator, inv, run)
    assert run.retry_since == [resume_since([same])] * 4


def test_equal_microseconds_different_nanoseconds(driver: str, emulator: Emulator) -> None:
    """Timestamps that differ only past the microseconds a datetime holds are still ordered."""
    inv = new_id()
    steps: List[Step] = [
        Log("one", at="2025-06-20T12:00:00.000001001Z"),
        Log("two", at="2025-06-20T12:00:00.000001002Z"),
        Log("two", at="2025-06-20T12:00:00.000001003Z"),
        Log("three", at="2025-06-20T12:00:00.000001003Z"),
        State("succeeded", at="2025-06-20T12:00:00.000001004Z"),
    ]
    emulator.add(Script(inv, steps, start=START, attempts=[Fault(drop_after=2)] * 3))
    run = run_follow(driver, emulator, inv)
    assert run.logs == ["one", "two", "two", "three"]
    assert_resumes_carry_since(emulator, inv, run)


def test_bad_data_is_not_repeated_after_a_resume(driver: str, emulator: Emulator) -> None:
    """A malformed or unknown event already passed on must not be passed on again by a replay."""
    inv = new_id()
    steps: List[Step] = [
        Log("one"),
        Malformed(),
        Unknown("browser_ready", {"n": 1}),
        Log("two"),
        State("succeeded"),
    ]
    emulator.add(Script(inv, steps, start=START, attempts=[Fault(drop_after=3)]))
    run = run_follow(driver, emulator, inv)
    assert run.logs == ["one", "two"]
    assert delivered_shapes(run.events) == expected_shapes(emulator.invocation(inv).emitted())


# ---------------------------------------------------------------- checkpoints


def take(follower: AnyFollower, count: int) -> List[KernelEvent]:
    """The first ``count`` non-heartbeat events, then stop following."""
    events: List[KernelEvent] = []
    iterator = events_of(follower)
    try:
        for event in iterator:
            if isinstance(event, HeartbeatEvent):
                continue
            events.append(event)
            if len(events) == count:
                break
    finally:
        iterator.close()
        if isinstance(follower, Follower):
            follower.close()
    return events


def round_trip(checkpoint: Checkpoint) -> Checkpoint:
    return Checkpoint.from_json(json.loads(json.dumps(checkpoint.to_json())))


def checkpoint_steps() -> List[Step]:
    same = at(20 * MS)
    return [
        State("running", at=at(0)),
        Log("start", at=at(MS)),
        Log("dup", at=same),
        Log("dup", at=same),
        Log("dup", at=same),
        Log("other", at=same),
        Log("next", at=at(21 * MS)),
        State("succeeded", at=at(22 * MS)),
    ]


@pytest.mark.parametrize("stop_after", range(1, len(checkpoint_steps())))
def test_checkpoint_round_trip_delivers_only_the_rest(driver: str, shared_emulator: Emulator, stop_after: int) -> None:
    inv = new_id("ckpt")
    # The second follower's first connection drops too, inside the replay of the boundary.
    shared_emulator.add(
        Script(inv, checkpoint_steps(), start=START, attempts=[Fault(), Fault(drop_after=stop_after % 3 + 1)])
    )
    first = make_follower(driver, shared_emulator, inv)
    head = take(first, stop_after)
    saved = round_trip(first.checkpoint)
    assert saved == first.checkpoint
    second = make_follower(driver, shared_emulator, inv, checkpoint=saved)
    rest: List[KernelEvent] = [e for e in events_of(second) if not isinstance(e, HeartbeatEvent)]
    emitted = shared_emulator.invocation(inv).emitted()
    assert delivered_shapes(head + rest) == expected_shapes(emitted)
    requests = event_requests(shared_emulator, inv)
    timed = [e.timestamp_raw for e in head if isinstance(e, (LogEvent, ErrorEvent))]
    assert saved.since == (timed[-1] if timed else None)
    assert since_of(requests[1]) == resume_since(timed)


def test_checkpoint_records_the_boundary(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(Script(inv, checkpoint_steps(), start=START))
    follower = make_follower(driver, emulator, inv)
    assert follower.checkpoint == Checkpoint()
    head = take(follower, 4)
    assert follower.checkpoint.since == at(20 * MS)
    assert len(head) == 4
    emitted = emulator.invocation(inv).emitted()
    # Every log delivered within the reorder window is remembered, by fingerprint.
    assert [stamp for stamp, _print in follower.checkpoint.seen] == [e.json()["timestamp"] for e in emitted[1:4]]
    assert len({fingerprint for _stamp, fingerprint in follower.checkpoint.seen}) == 2  # "dup" twice


def test_resume_from_a_finished_checkpoint_does_not_fail(driver: str, emulator: Emulator) -> None:
    """Resuming after the terminal state was delivered (a cron run after the end) must not spin into an error."""
    inv = new_id()
    emulator.add(Script(inv, [Log("a"), State("succeeded")], start=START))
    first = run_follow(driver, emulator, inv)
    assert first.error is None
    second = run_follow(driver, emulator, inv, checkpoint=round_trip(first.follower.checkpoint), max_retries=2)
    assert second.error is None, second.error
    assert second.logs == []


@st.composite
def scripts_and_faults(draw: st.DrawFn) -> Tuple[List[Step], List[Fault]]:
    count = draw(st.integers(1, 8))
    steps: List[Step] = []
    offset = 0
    for _ in range(count):
        offset += draw(st.sampled_from([0, 0, 1, 1000, MS]))
        stamp = at(offset)
        if draw(st.integers(0, 9)) == 0:
            steps.append(Error(draw(st.sampled_from(["e1", "e2"])), "msg", at=stamp))
        else:
            steps.append(Log(draw(st.sampled_from(["a", "b", "dup"])), at=stamp))
    steps.append(State("succeeded", at=at(offset + draw(st.sampled_from([0, 1, MS])))))
    total = len(steps)
    fault = st.one_of(
        st.builds(Fault, drop_after=st.integers(0, total), reset=st.booleans()),
        st.builds(Fault, end_after=st.integers(0, total)),
        st.just(Fault(status=503, retry_after="0")),
        st.builds(Fault, drop_after=st.integers(0, total), byte_by_byte=st.just(True)),
        st.builds(
            Fault,
            drop_after=st.integers(0, total),
            line_ending=st.sampled_from(["\n", "\r\n", "\r"]),
            bom=st.booleans(),
        ),
    )
    return steps, draw(st.lists(fault, max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=scripts_and_faults())
def test_any_script_under_any_faults_is_delivered_exactly_once(
    driver: str,
    shared_emulator: Emulator, case: Tuple[List[Step], List[Fault]]
) -> None:
    steps, attempts = case
    inv = new_id("hyp")
    shared_emulator.add(Script(inv, steps, start=START, attempts=attempts))
    run = run_follow(driver, shared_emulator, inv, max_retries=len(attempts) + 1)
    assert_exactly_once(shared_emulator, inv, run)
    assert_resumes_carry_since(shared_emulator, inv, run)


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize(
    "status, error_class, setup",
    [
        (400, BadRequestError, "since"),
        (400, BadRequestError, "fault"),
        (401, AuthenticationError, "key"),
        (401, AuthenticationError, "fault"),
        (403, PermissionDeniedError, "fault"),
        (404, NotFoundError, "id"),
        (404, NotFoundError, "fault"),
    ],
)
def test_client_errors_are_never_retried(
    driver: str,
    emulator: Emulator, status: int, error_class: Type[APIStatusError], setup: str
) -> None:
    inv = new_id()
    emulator.add(simple(inv, fault=Fault(status=status) if setup == "fault" else Fault()))
    options: Dict[str, object] = {}
    target = inv
    code, message = "internal_error", "Injected fault: status %d." % status
    if setup == "since":
        options["since"] = "yesterday-ish"
        code, message = "bad_request", "Invalid since: use an RFC 3339 timestamp or a duration like 5m."
    elif setup == "key":
        options["api_key"] = "not-the-key"
        code, message = "unauthorized", "Missing or invalid API key."
    elif setup == "id":
        target = "no-such-invocation"
        code, message = "not_found", "Invocation not found."
    run = run_follow(driver, emulator, target, **options)
    assert type(run.error) is error_class
    assert isinstance(run.error, APIStatusError)
    assert (run.error.status, run.error.code, run.error.message) == (status, code, message)
    assert message in str(run.error)
    assert len(emulator.requests) == 1
    assert run.retry_since == [] and run.events == []


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_exhaust_into_connection_failed(driver: str, emulator: Emulator, status: int) -> None:
    inv = new_id()
    emulator.add(Script(inv, [Log("x"), State("succeeded")], start=START, fault=Fault(status=status)))
    run = run_follow(driver, emulator, inv, max_retries=2)
    assert isinstance(run.error, ConnectionFailed), run.error
    assert len(emulator.requests) == 3
    assert str(status) in str(run.error)


def test_max_retries_zero_is_one_request(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(Script(inv, [Log("x"), State("succeeded")], start=START, fault=Fault(status=503)))
    run = run_follow(driver, emulator, inv, max_retries=0)
    assert isinstance(run.error, ConnectionFailed)
    assert len(emulator.requests) == 1


def test_progress_resets_the_failure_count(driver: str, emulator: Emulator) -> None:
    """max_retries counts failures in a row: attempts that deliver something new do not add up."""
    inv = new_id()
    steps: List[Step] = [Log("l%d" % n) for n in range(6)]
    steps.append(State("succeeded"))
    # The first attempt delivers l0; each later one replays the reorder window (every log
    # so far: they share a second), delivers one new log, and drops.
    attempts = [Fault(drop_after=1)] + [Fault(drop_after=n + 2, reset=n % 2 == 0) for n in range(5)]
    emulator.add(Script(inv, steps, start=START, attempts=attempts))
    run = run_follow(driver, emulator, inv, max_retries=0)
    assert_exactly_once(emulator, inv, run)
    assert len(event_requests(emulator, inv)) == 7
    assert_resumes_carry_since(emulator, inv, run)


def test_a_stall_after_progress_is_a_stream_timeout(driver: str, emulator: Emulator) -> None:
    """Events, then silence on every attempt: the idle limit was hit too often, not the network."""
    emulator.heartbeat_interval = None
    inv = new_id()
    emulator.add(Script(inv, [Log("a"), Log("b")], start=START))  # then nothing, ever
    run = run_follow(driver, emulator, inv, idle_timeout=0.2, max_retries=1)
    assert run.logs == ["a", "b"]
    assert isinstance(run.error, StreamTimeout), run.error


def test_retry_after_seconds_is_honoured(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(simple(inv, attempts=[Fault(status=503, retry_after="1")]))
    run = run_follow(driver, emulator, inv, retry_after_cap=5)
    assert run.error is None and run.logs == ["x"]
    assert run.retry_delays == [1.0]
    assert run.elapsed >= 0.9
    assert len(emulator.requests) == 2


def test_retry_after_http_date_is_honoured(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    emulator.add(simple(inv, attempts=[Fault(status=429, retry_after=when)]))
    run = run_follow(driver, emulator, inv, deadline=0.5, retry_after_cap=60)  # the deadline keeps the test short
    assert isinstance(run.error, DeadlineExceeded)
    assert len(run.retry_delays) == 1 and 28 <= run.retry_delays[0] <= 30
    assert len(emulator.requests) == 1


def test_backoff_is_capped_full_jitter(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(Script(inv, [Log("x"), State("succeeded")], start=START, fault=Fault(status=500)))
    run = run_follow(driver, emulator, inv, max_retries=8, backoff_base=0.001, backoff_cap=0.004)
    assert isinstance(run.error, ConnectionFailed)
    assert len(run.retry_delays) == 8
    assert all(0 <= delay <= 0.004 for delay in run.retry_delays)


def test_idle_limit_exhausted_is_stream_timeout(driver: str, emulator: Emulator) -> None:
    emulator.heartbeat_interval = None
    inv = new_id()
    emulator.add(Script(inv, [], start=START))  # a stream with no event and no heartbeat
    run = run_follow(driver, emulator, inv, idle_timeout=0.2, max_retries=2)
    assert isinstance(run.error, StreamTimeout), run.error
    assert len(emulator.requests) == 3
    assert 0.55 <= run.elapsed < 3


def test_heartbeats_keep_a_quiet_stream_alive(driver: str, emulator: Emulator) -> None:
    emulator.heartbeat_interval = 0.1
    inv = new_id()
    emulator.add(Script(inv, [Log("a"), Pause(1.0), Log("b"), State("succeeded")], start=START))
    run = run_follow(driver, emulator, inv, idle_timeout=0.4, max_retries=0)
    assert run.error is None and run.logs == ["a", "b"]
    assert any(isinstance(e, HeartbeatEvent) for e in run.events)
    assert len(event_requests(emulator, inv)) == 1


def test_connection_refused_is_connection_failed(driver: str) -> None:
    port = closed_port()
    started = time.monotonic()
    follower = new_follower(driver, "inv", api_key="k", base_url=local(port), max_retries=2, backoff_base=0.01)
    with pytest.raises(ConnectionFailed):
        list(events_of(follower))
    assert time.monotonic() - started < 5
    assert follower.attempt == 3


# ---------------------------------------------------------------- deadline


def test_deadline_bounds_a_stream_that_never_ends(driver: str, emulator: Emulator) -> None:
    gate = Gate()
    inv = new_id()
    emulator.add(Script(inv, [Log("a"), gate, State("succeeded")], start=START))
    try:
        run = run_follow(driver, emulator, inv, deadline=0.6, idle_timeout=30)
    finally:
        gate.release()
    assert isinstance(run.error, DeadlineExceeded), run.error
    assert run.logs == ["a"]
    assert 0.55 <= run.elapsed < 2.5


def test_deadline_bounds_a_slow_trickle(driver: str, emulator: Emulator) -> None:
    """Bytes keep coming (one per 20 ms, so an event every few seconds): the deadline still holds."""
    inv = new_id()
    steps: List[Step] = [Log("m" * 150) for _ in range(20)]
    steps.append(State("succeeded"))
    emulator.add(Script(inv, steps, start=START, fault=Fault(byte_by_byte=True, byte_delay=0.02)))
    run = run_follow(driver, emulator, inv, deadline=0.6, idle_timeout=30)
    assert isinstance(run.error, DeadlineExceeded), run.error
    assert 0.55 <= run.elapsed < 2.5


def test_deadline_cuts_a_backoff_short(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(simple(inv, fault=Fault(status=503, retry_after="30")))
    run = run_follow(driver, emulator, inv, deadline=0.5, retry_after_cap=60)
    assert isinstance(run.error, DeadlineExceeded), run.error
    assert 0.45 <= run.elapsed < 2.5
    assert len(emulator.requests) == 1


def test_deadline_bounds_a_silent_server(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(Script(inv, [Log("x")], start=START, fault=Fault(silence_after=0, silence=30)))
    run = run_follow(driver, emulator, inv, deadline=0.5, idle_timeout=30)
    assert isinstance(run.error, DeadlineExceeded)
    assert 0.45 <= run.elapsed < 2.5


def test_deadline_also_bounds_the_whole_follow_with_progress(driver: str, emulator: Emulator) -> None:
    """Events keep arriving (so neither idle nor retries trigger), but the total time is bounded."""
    emulator.heartbeat_interval = None
    inv = new_id()
    steps: List[Step] = []
    for n in range(100):
        steps += [Log("tick %d" % n), Pause(0.05)]
    emulator.add(Script(inv, steps + [State("succeeded")], start=START))
    run = run_follow(driver, emulator, inv, deadline=0.5, idle_timeout=0.3)
    assert isinstance(run.error, DeadlineExceeded)
    assert 3 <= len(run.logs) <= 12
    assert 0.45 <= run.elapsed < 2.5


def test_idle_limit_is_not_defeated_by_trickled_bytes(driver: str, emulator: Emulator) -> None:
    """One byte every 20 ms of an event that takes seconds to finish: no event, so idle."""
    inv = new_id()
    emulator.add(
        Script(
            inv,
            [Log("x" * 2000), State("succeeded")],
            start=START,
            fault=Fault(byte_by_byte=True, byte_delay=0.02),
        )
    )
    run = run_follow(driver, emulator, inv, idle_timeout=0.4, max_retries=0)
    assert isinstance(run.error, StreamTimeout), run.error
    assert 0.35 <= run.elapsed < 2.5


def test_idle_limit_is_not_defeated_by_raw_bytes_that_never_end_an_event(driver: str, emulator: Emulator) -> None:
    emulator.heartbeat_interval = None
    inv = new_id()
    steps: List[Step] = [Raw(b'data: {"event": "log", ')]
    for _ in range(40):
        steps += [Pause(0.05), Raw(b"x")]
    emulator.add(Script(inv, steps, start=START))
    run = run_follow(driver, emulator, inv, idle_timeout=0.4, max_retries=0)
    assert isinstance(run.error, StreamTimeout), run.error
    assert 0.35 <= run.elapsed < 2.5


# ---------------------------------------------------------------- servers the emulator cannot play


class TinyServer:
    """Accepts on 127.0.0.1 and runs ``handle(connection, stopping)`` per connection, in threads."""

    def __init__(self, handle: Callable[[socket.socket, threading.Event], None]) -> None:
        self.handle = handle
        self.stopping = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self.threads: List[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, name="test-tiny-server", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            self.handle(connection, self.stopping)
        except OSError:
            pass
        finally:
            connection.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()
        for thread in self.threads:
            thread.join(5)

    def __enter__(self) -> TinyServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_head(connection: socket.socket) -> Tuple[bytes, bytes]:
    """Read up to the blank line ending a request head: (head, bytes after it)."""
    connection.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(4096)
        if not chunk:
            raise OSError("closed before the end of the head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_deadline_holds_while_the_response_head_trickles(driver: str) -> None:
    """A server that sends its header one byte at a time, forever, cannot hold a follow past its deadline."""

    def trickle_head(connection: socket.socket, stopping: threading.Event) -> None:
        read_head(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stopping.wait(0.05):
            connection.sendall(b"a")

    with TinyServer(trickle_head) as server:
        follower = new_follower(driver, "inv", api_key="k", base_url=local(server.port), deadline=0.5, idle_timeout=30)
        items, thread = follow_in_thread(follower)
        try:
            kind, item = items.get(timeout=2.5)
        except queue.Empty:
            pytest.fail("the follow was still running 2.5 s after its 0.5 s deadline")
        finally:
            server.stopping.set()
            thread.join(10)
        assert kind == "error" and isinstance(item, DeadlineExceeded), (kind, item)


def test_idle_limit_holds_while_the_server_never_answers(driver: str) -> None:
    """A server that accepts the request and says nothing at all is a stall like any other."""

    def silent(connection: socket.socket, stopping: threading.Event) -> None:
        read_head(connection)
        stopping.wait(60)

    with TinyServer(silent) as server:
        follower = new_follower(driver, 
            "inv", api_key="k", base_url=local(server.port), idle_timeout=0.3, max_retries=0
        )
        items, thread = follow_in_thread(follower)
        try:
            kind, item = items.get(timeout=2.5)
        except queue.Empty:
            pytest.fail("the follow was still waiting for a response head 2.5 s into a 0.3 s idle limit")
        finally:
            server.stopping.set()
            thread.join(10)
        assert kind == "error" and isinstance(item, (StreamTimeout, ConnectionFailed)), (kind, item)


SSE_LOG = b'data: {"event":"log","timestamp":"2025-06-20T12:00:00.000000001Z","message":"over close"}\n\n'
SSE_DONE = (
    b'data: {"event":"invocation_state","timestamp":"2025-06-20T12:00:00.000000002Z","invocation":'
    b'{"id":"inv","app_name":"a","version":"1","action_name":"run","status":"succeeded",'
    b'"started_at":"2025-06-20T12:00:00Z","finished_at":"2025-06-20T12:00:00.000000002Z"}}\n\n'
)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n",
    ],
    ids=["chunked-connection-close", "until-close", "HTTP/1.0"],
)
def test_a_stream_the_server_will_close_is_followed(driver: str, head: bytes) -> None:
    """``Connection: close`` and HTTP/1.0 streams (common behind proxies) are streams like any other."""

    def stream(connection: socket.socket, stopping: threading.Event) -> None:
        read_head(connection)
        body = SSE_LOG + SSE_DONE
        if b"chunked" in head:
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        connection.sendall(head + body)

    with TinyServer(stream) as server:
        follower = new_follower(driver, "inv", api_key="k", base_url=local(server.port), max_retries=0)
        events = list(events_of(follower))
    assert [e.message for e in events if isinstance(e, LogEvent)] == ["over close"]
    assert isinstance(events[-1], InvocationStateEvent) and events[-1].invocation.status == "succeeded"


@pytest.mark.parametrize(
    "garbage",
    [b"zz\r\n", b"5\r\nabcdeXX", b"\r\n\r\n"],
    ids=["bad-chunk-size", "bad-chunk-end", "empty-chunk-size"],
)
def test_a_protocol_error_is_a_drop(driver: str, garbage: bytes) -> None:
    """Broken chunked framing mid-stream: reconnect and resume, like any other drop."""
    requests: List[bytes] = []

    def stream(connection: socket.socket, stopping: threading.Event) -> None:
        head, _ = read_head(connection)
        requests.append(head.split(b"\r\n")[0])
        ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        if len(requests) == 1:
            connection.sendall(ok + b"%x\r\n%s\r\n" % (len(SSE_LOG), SSE_LOG) + garbage)
            stopping.wait(10)  # keep the socket open: only the framing tells something is wrong
        else:
            body = SSE_LOG + SSE_DONE
            connection.sendall(ok + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    with TinyServer(stream) as server:
        follower = new_follower(driver, 
            "inv", api_key="k", base_url=local(server.port), max_retries=1, backoff_base=0.01, idle_timeout=0.5
        )
        items, thread = follow_in_thread(follower)
        got: List[Tuple[str, object]] = []
        try:
            while not got or got[-1][0] == "event":
                got.append(items.get(timeout=5))
        finally:
            server.stopping.set()
            thread.join(10)
    assert got[-1] == ("done", None), got[-1]
    events = [item for kind, item in got if kind == "event"]
    assert [e.message for e in events if isinstance(e, LogEvent)] == ["over close"]
    assert len(requests) == 2
    resumed = b"GET /invocations/inv/events?since=%s HTTP/1.1" % urllib.parse.quote(
        str(resume_since(["2025-06-20T12:00:00.000000001Z"]))
    ).encode()
    if driver == "asyncio":
        # HTTPResponseReader drops the events of a read that breaks the framing: a log
        # that arrived with the garbage is asked for again (and delivered once).
        assert requests[1] in (resumed, b"GET /invocations/inv/events HTTP/1.1")
    else:
        assert requests[1] == resumed


def test_a_200_that_is_not_an_event_stream_is_retried(driver: str) -> None:
    def json_body(connection: socket.socket, stopping: threading.Event) -> None:
        read_head(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

    with TinyServer(json_body) as server:
        follower = new_follower(driver, "inv", api_key="k", base_url=local(server.port), max_retries=1, backoff_base=0.01)
        with pytest.raises(ConnectionFailed, match="event stream"):
            list(events_of(follower))
        assert server.accepted == 2


# ---------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_same_origin_redirect_is_followed(driver: str, emulator: Emulator, status: int) -> None:
    inv = new_id()
    emulator.add(
        simple(inv, attempts=[Fault(redirect_to="", redirect_status=status)])
    )
    run = run_follow(driver, emulator, inv)
    assert run.error is None and run.logs == ["x"]
    first, second = emulator.requests
    assert first.status == status and second.status == 200
    assert second.path == first.path
    assert second.header("Authorization") == "Bearer %s" % emulator.api_key
    assert run.retry_since == []  # a redirect is not a retry


def test_same_origin_absolute_redirect_is_followed(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(simple(inv, attempts=[Fault(redirect_to=emulator.url)]))
    assert run_follow(driver, emulator, inv).logs == ["x"]
    assert len(emulator.requests) == 2


@pytest.mark.parametrize("where", ["other-port", "other-scheme"])
def test_cross_origin_redirect_is_refused(
    driver: str,
    emulator: Emulator, make_emulator: Callable[..., Emulator], where: str
) -> None:
    other = make_emulator()
    inv = new_id()
    script = Script(inv, [Log("x"), State("succeeded")], start=START)
    other.add(script)
    target = other.url if where == "other-port" else "https://127.0.0.1:%d" % other.port
    emulator.add(Script(inv, script.steps, start=START, attempts=[Fault(redirect_to=target)]))
    run = run_follow(driver, emulator, inv)
    assert isinstance(run.error, APIStatusError), run.error
    assert run.error.status == 307
    assert run.events == []
    assert other.requests == []  # the other origin never saw a request, let alone the key
    assert len(emulator.requests) == 1


def test_redirect_loop_gives_up(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(Script(inv, [Log("x"), State("succeeded")], start=START, fault=Fault(redirect_to="")))
    run = run_follow(driver, emulator, inv, max_retries=0)
    assert isinstance(run.error, ConnectionFailed), run.error
    assert 2 <= len(emulator.requests) <= 21


# ---------------------------------------------------------------- bad data never stops a follow


@pytest.mark.parametrize(
    "payload",
    [
        '{"event": "log", "timestamp": ',
        "[1, 2, 3]",
        '{"event": "log", "timestamp": "not a time", "message": "x"}',
        '{"event": "log", "timestamp": "2025-06-20T12:00:00Z"}',
        '{"event": "invocation_state", "timestamp": "2025-06-20T12:00:00Z", "invocation": 3}',
        "\u00e9t\u00e9 \u2603",
    ],
)
def test_malformed_event_becomes_a_client_error_with_the_raw_data(driver: str, emulator: Emulator, payload: str) -> None:
    inv = new_id()
    emulator.add(Script(inv, [Log("before"), Malformed(payload), Log("after"), State("succeeded")], start=START))
    run = run_follow(driver, emulator, inv)
    assert run.error is None
    assert run.logs == ["before", "after"]
    kinds = [type(e).__name__ for e in run.content]
    assert kinds == ["LogEvent", "ErrorEvent", "LogEvent", "InvocationStateEvent"]
    error = run.content[1]
    assert isinstance(error, ErrorEvent) and error.error.code == "client_malformed_event"
    assert payload in [detail.message for detail in error.error.details]


def test_unknown_kind_becomes_unknown_event(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    emulator.add(
        Script(
            inv,
            [
                Log("before"),
                Unknown("browser_ready", {"session": "kx7", "n": [1, 2]}),
                Log("after"),
                State("succeeded"),
            ],
            start=START,
        )
    )
    run = run_follow(driver, emulator, inv)
    assert run.logs == ["before", "after"]
    unknown = run.content[1]
    assert isinstance(unknown, UnknownEvent) and unknown.event == "browser_ready"
    assert unknown.raw == emulator.invocation(inv).emitted()[1].json()
    assert unknown.raw["session"] == "kx7"


def test_oversized_event_is_skipped_and_reported_and_the_stream_goes_on(driver: str, emulator: Emulator) -> None:
    inv = new_id()
    steps: List[Step] = [Log("before"), Log("x" * 5000), Pause(0.1), Log("after"), Pause(0.1), State("succeeded")]
    emulator.add(Script(inv, steps, start=START))
    run = run_follow(driver, emulator, inv, max_event_bytes=1000)
    assert run.error is None
    assert run.logs == ["before", "after"]
    assert delivered_shapes(run.events)[:3] == [
        ("event", emulator.invocation(inv).emitted()[0].json()),
        ("too_large", None),
        ("event", emulator.invocation(inv).emitted()[2].json()),
    ]
    assert len(emulator.requests) == 1


def test_oversized_event_report_keeps_its_place(driver: str, emulator: Emulator) -> None:
    """The big event and those after it arrive in one read: the report still comes at its place."""
    inv = new_id()
    emulator.add(Script(inv, [Log("before"), Log("x" * 5000), Log("after"), State("succeeded")], start=START))
    run = run_follow(driver, emulator, inv, max_event_bytes=1000)
    assert run.error is None
    assert [shape[0] for shape in delivered_shapes(run.events)] == ["event", "too_large", "event", "event"]
    assert run.logs == ["before", "after"]


# ---------------------------------------------------------------- the key never shows


def exception_text(exc: BaseException) -> str:
    """Everything an exception can show: str, repr, args, attributes, the chained traceback."""
    parts = [str(exc), repr(exc), repr(exc.args), repr(vars(exc))]
    parts += traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "\n".join(parts)


def test_the_key_never_shows(
    driver: str,
    make_emulator: Callable[..., Emulator],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    emu = make_emulator(api_key=CANARY_KEY)
    other = make_emulator(api_key=CANARY_KEY)
    wrong = make_emulator(api_key="a-different-key")
    scripts = {
        "ok": Script(
            "ok", [Log("x"), Malformed(), State("succeeded")], start=START, attempts=[Fault(drop_after=1)]
        ),
        "down": Script("down", [Log("x")], start=START, fault=Fault(status=503)),
        "idle": Script("idle", [], start=START, fault=Fault(silence_after=0, silence=30)),
        "away": Script("away", [Log("x")], start=START, fault=Fault(redirect_to=other.url)),
        "forbidden": Script("forbidden", [Log("x")], start=START, fault=Fault(status=403)),
    }
    for script in scripts.values():
        emu.add(script)
    wrong.add(Script("ok", [Log("x"), State("succeeded")], start=START))
    raised: List[BaseException] = []
    shown: List[str] = []

    def attempt(make: Callable[[], AnyFollower]) -> None:
        try:
            follower = make()
            shown.extend([str(follower), repr(follower), repr(vars(follower))])
            for event in events_of(follower):
                shown.append(repr(event))
        except KernelSSEError as exc:
            raised.append(exc)

    def on(emulator: Emulator, inv: str, **options: object) -> Callable[[], AnyFollower]:
        return lambda: make_follower(driver, emulator, inv, api_key=CANARY_KEY, **options)

    attempt(on(emu, "ok"))
    attempt(on(emu, "down", max_retries=1))
    attempt(on(emu, "idle", idle_timeout=0.2, max_retries=0))
    attempt(on(emu, "idle", deadline=0.2))
    attempt(on(emu, "away"))
    attempt(on(emu, "forbidden"))
    attempt(on(emu, "missing"))
    attempt(on(wrong, "ok"))
    attempt(on(emu, "ok", since="garbage"))
    attempt(lambda: new_follower(driver, "ok", api_key=CANARY_KEY, base_url=local(closed_port()), max_retries=0))
    attempt(lambda: new_follower(driver, "bad\nid", api_key=CANARY_KEY, base_url=emu.url))
    attempt(lambda: new_follower(driver, "ok", api_key=CANARY_KEY + "\r\n", base_url=emu.url))
    attempt(lambda: new_follower(driver, "ok", api_key=CANARY_KEY, base_url="http://example.com"))
    attempt(lambda: new_follower(driver, "ok", api_key=CANARY_KEY, base_url="http://u:%s@127.0.0.1:1" % CANARY_KEY))
    expected = {
        ConnectionFailed,
        StreamTimeout,
        DeadlineExceeded,
        APIStatusError,
        PermissionDeniedError,
        NotFoundError,
        AuthenticationError,
        BadRequestError,
        ConfigurationError,
    }
    assert expected <= {type(exc) for exc in raised}
    assert len(raised) == 13
    for exc in raised:
        assert CANARY_KEY not in exception_text(exc), type(exc)
    for text in shown:
        assert CANARY_KEY not in text
    assert CANARY_KEY not in repr(emu.requests) + repr(other.requests) + repr(wrong.requests)
    assert other.requests == []
    assert CANARY_KEY not in caplog.text
    captured = capsys.readouterr()
    assert CANARY_KEY not in captured.out + captured.err


def test_credentials_in_a_refused_base_url_are_not_echoed() -> None:
    for base_url in ("ftp://user:%s@example.com" % CANARY_KEY, "https://user:%s@example.com" % CANARY_KEY):
        with pytest.raises(ConfigurationError) as caught:
            Follower("inv", api_key="k", base_url=base_url)
        assert CANARY_KEY not in exception_text(caught.value)


# ---------------------------------------------------------------- HTTPS through a CONNECT proxy


def pump(a: socket.socket, b: socket.socket, stopping: threading.Event) -> None:
    """Copy bytes both ways until either side closes (one thread: safe for TLS sockets)."""
    sockets: List[socket.socket] = [a, b]
    try:
        while not stopping.is_set():
            ready: List[socket.socket] = [s for s in sockets if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready = select.select(sockets, [], [], 0.05)[0]
            for source in ready:
                target = b if source is a else a
                data = source.recv(65536)
                if not data:
                    return
                target.sendall(data)
    except OSError:
        return
    finally:
        for s in sockets:
            s.close()


class TLSShim:
    """TLS in front of a plain local server: accepts TLS, forwards the plain bytes."""

    def __init__(self, target_port: int, certfile: str, keyfile: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)
        self.target_port = target_port
        self.handshakes = 0
        self.server = TinyServer(self._handle)
        self.port = self.server.port

    def _handle(self, connection: socket.socket, stopping: threading.Event) -> None:
        connection.settimeout(5)
        try:
            tls = self.context.wrap_socket(connection, server_side=True)
        except (OSError, ssl.SSLError):
            return
        self.handshakes += 1
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        pump(tls, upstream, stopping)

    def close(self) -> None:
        self.server.close()


class ConnectProxy:
    """A minimal HTTP CONNECT proxy; records each request line and its headers."""

    def __init__(self) -> None:
        self.requests: List[Tuple[str, Dict[str, str]]] = []
        self.server = TinyServer(self._handle)
        self.port = self.server.port

    def _handle(self, connection: socket.socket, stopping: threading.Event) -> None:
        head, rest = read_head(connection)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.requests.append((lines[0], headers))
        method, target, _ = lines[0].split(" ", 2)
        if method != "CONNECT":
            connection.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
        connection.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            upstream.sendall(rest)
        pump(connection, upstream, stopping)

    def close(self) -> None:
        self.server.close()


TLS_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = kernel-sse test
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class TLSFiles:
    ca: str
    cert: str
    key: str


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A throwaway CA and a certificate for 127.0.0.1/localhost it signed (skips without openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("tls")
    config = where / "openssl.cnf"
    config.write_text(TLS_CONFIG)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: Union[str, Path]) -> None:
        done = subprocess.run([openssl, *map(str, args)], cwd=where, capture_output=True, timeout=60)
        if done.returncode != 0:
            pytest.skip("openssl failed: %s" % done.stderr.decode(errors="replace")[-300:])

    run("req", "-x509", "-config", config, "-extensions", "ca_ext", *ec, "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2")  # fmt: skip
    run("req", "-new", "-config", config, *ec, "-keyout", "leaf.key", "-out", "leaf.csr")
    run(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", config, "-extensions", "leaf_ext",
    )  # fmt: skip
    return TLSFiles(str(where / "ca.pem"), str(where / "leaf.pem"), str(where / "leaf.key"))


@pytest.fixture
def tls_emulator(emulator: Emulator, tls_files: TLSFiles) -> Iterator[Tuple[Emulator, TLSShim]]:
    """The emulator behind TLS (the shim), for ``https://127.0.0.1:{shim.port}``."""
    shim = TLSShim(emulator.port, tls_files.cert, tls_files.key)
    try:
        yield emulator, shim
    finally:
        shim.close()


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    running = ConnectProxy()
    try:
        yield running
    finally:
        running.close()


def test_https_directly(driver: str, tls_emulator: Tuple[Emulator, TLSShim], tls_files: TLSFiles) -> None:
    emu, shim = tls_emulator
    inv = new_id()
    emu.add(Script(inv, [Log("secure"), State("succeeded")], start=START))
    context = ssl.create_default_context(cafile=tls_files.ca)
    run = run_follow(driver, emu, inv, base_url="https://127.0.0.1:%d" % shim.port, ssl_context=context)
    assert run.error is None and run.logs == ["secure"]
    assert shim.handshakes == 1


def test_https_certificate_is_checked(driver: str, tls_emulator: Tuple[Emulator, TLSShim]) -> None:
    """Without the test CA the self-made certificate is refused, and no request (no key) gets through."""
    emu, shim = tls_emulator
    inv = new_id()
    emu.add(Script(inv, [Log("secure"), State("succeeded")], start=START))
    run = run_follow(driver, emu, inv, base_url="https://127.0.0.1:%d" % shim.port, max_retries=0)
    assert isinstance(run.error, ConnectionFailed), run.error
    assert emu.requests == []


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_https_through_a_connect_proxy(
    driver: str,
    tls_emulator: Tuple[Emulator, TLSShim],
    tls_files: TLSFiles,
    proxy: ConnectProxy,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    emu, shim = tls_emulator
    monkeypatch.setenv(variable, local(proxy.port))
    inv = new_id()
    steps: List[Step] = [Log("tunnelled"), Log("\u6f22\u5b57"), State("succeeded")]
    emu.add(Script(inv, steps, start=START, attempts=[Fault(drop_after=1)]))
    context = ssl.create_default_context(cafile=tls_files.ca)
    run = run_follow(driver, emu, inv, base_url="https://127.0.0.1:%d" % shim.port, ssl_context=context)
    assert run.error is None, run.error
    assert run.logs == ["tunnelled", "\u6f22\u5b57"]
    assert len(proxy.requests) == 2  # one tunnel per connection (the first was dropped)
    for line, headers in proxy.requests:
        assert line.startswith("CONNECT 127.0.0.1:%d HTTP/1." % shim.port), line
        assert "authorization" not in headers  # the key only travels inside the tunnel
        assert "proxy-authorization" not in headers
    assert [r.header("Authorization") for r in emu.requests] == ["Bearer %s" % emu.api_key] * 2
    assert_resumes_carry_since(emu, inv, run)


def test_proxy_credentials_go_to_the_proxy(
    driver: str,
    tls_emulator: Tuple[Emulator, TLSShim],
    tls_files: TLSFiles,
    proxy: ConnectProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu, shim = tls_emulator
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy%%20user:p%%40ss@127.0.0.1:%d" % proxy.port)
    inv = new_id()
    emu.add(Script(inv, [Log("x"), State("succeeded")], start=START))
    context = ssl.create_default_context(cafile=tls_files.ca)
    run = run_follow(driver, emu, inv, base_url="https://127.0.0.1:%d" % shim.port, ssl_context=context)
    assert run.error is None and run.logs == ["x"]
    (line, headers), = proxy.requests
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"proxy user:p@ss").decode("ascii")


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
def test_no_proxy_bypasses_the_proxy(
    driver: str,
    tls_emulator: Tuple[Emulator, TLSShim],
    tls_files: TLSFiles,
    proxy: ConnectProxy,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
) -> None:
    emu, shim = tls_emulator
    monkeypatch.setenv("HTTPS_PROXY", local(proxy.port))
    monkeypatch.setenv("NO_PROXY", no_proxy)
    inv = new_id()
    emu.add(Script(inv, [Log("direct"), State("succeeded")], start=START))
    context = ssl.create_default_context(cafile=tls_files.ca)
    run = run_follow(driver, emu, inv, base_url="https://127.0.0.1:%d" % shim.port, ssl_context=context)
    assert run.error is None and run.logs == ["direct"]
    assert proxy.requests == [] and proxy.server.accepted == 0
    assert shim.handshakes == 1


def test_plain_http_to_loopback_ignores_the_https_proxy(
    driver: str,
    emulator: Emulator, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", local(proxy.port))
    inv = new_id()
    emulator.add(simple(inv))
    assert run_follow(driver, emulator, inv).logs == ["x"]
    assert proxy.server.accepted == 0
