"""Tests of the asyncio driver (``kernel_sse.AsyncFollower`` / ``afollow``, DESIGN 3.3).

test_follow.py runs its follow tests with both drivers (its ``driver``
fixture); this file tests what only the asyncio driver has: ``async for``,
``async with`` and ``aclose``, cancellation (the connection closes at once
and a new follower resumes from the checkpoint with nothing lost or
repeated), many follows in one event loop with no thread each, the status
probe, and the HTTPS proxy tunnel's corners. Everything goes over real
sockets on 127.0.0.1; no pytest-asyncio: each test runs ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import ssl
import threading
import urllib.parse
from typing import Any, Callable, Coroutine, Dict, List, Optional, Tuple, TypeVar

import pytest

import kernel_sse
from kernel_sse import (
    AsyncFollower,
    Checkpoint,
    ConfigurationError,
    ConnectionFailed,
    DeadlineExceeded,
    Follower,
    HeartbeatEvent,
    InvocationStateEvent,
    KernelEvent,
    LogEvent,
    NotFoundError,
    StreamTimeout,
    afollow,
    follow,
    parse_timestamp,
)
from kernel_sse_emulator import Emulator, Fault, Gate, Log, Script, State
from test_follow import (  # noqa: F401  (fixtures: clean_environment is autouse here too)
    BASE_EVENTS,
    CANARY_KEY,
    MS,
    START,
    ConnectProxy,
    TinyServer,
    TLSFiles,
    TLSShim,
    at,
    base_steps,
    clean_environment,
    delivered_shapes,
    established_to,
    expected_shapes,
    local,
    new_id,
    proxy,
    pump,
    read_head,
    tls_emulator,
    tls_files,
)

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a new event loop (asyncio.run: the loop is closed after)."""
    return asyncio.run(coroutine)


def make_async(url: str, invocation_id: str, **options: Any) -> AsyncFollower:
    """An AsyncFollower with test-friendly defaults (tiny backoff, short idle limit)."""
    settings: Dict[str, Any] = {
        "api_key": "test-key-emulator-0123456789",
        "base_url": url,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "idle_timeout": 5.0,
        "max_retries": 6,
    }
    settings.update(options)
    return AsyncFollower(invocation_id, **settings)


def on(emu: Emulator, invocation_id: str, **options: Any) -> AsyncFollower:
    return make_async(emu.url, invocation_id, api_key=emu.api_key, **options)


async def collect(follower: AsyncFollower) -> Tuple[List[KernelEvent], Optional[BaseException]]:
    """Every event to the end, and the error that ended the follow (None if it finished)."""
    events: List[KernelEvent] = []
    try:
        async with follower:
            async for event in follower:
                events.append(event)
    except kernel_sse.KernelSSEError as exc:
        return events, exc
    return events, None


def content(events: List[KernelEvent]) -> List[KernelEvent]:
    return [e for e in events if not isinstance(e, HeartbeatEvent)]


def logs(events: List[KernelEvent]) -> List[str]:
    return [e.message for e in events if isinstance(e, LogEvent)]


async def until_closed(port: int) -> Optional[int]:
    """Let the loop run callbacks until no client socket is connected to ``port`` (None without /proc)."""
    for _ in range(200):
        count = established_to(port)
        if not count:
            return count
        await asyncio.sleep(0.01)
    return established_to(port)


# ---------------------------------------------------------------- the API


def test_public_names_and_signatures() -> None:
    """AsyncFollower and afollow take exactly the blocking driver's arguments."""
    assert "AsyncFollower" in kernel_sse.__all__ and "afollow" in kernel_sse.__all__
    assert list(inspect.signature(AsyncFollower).parameters.values()) == list(
        inspect.signature(Follower).parameters.values()
    )
    assert list(inspect.signature(afollow).parameters.values()) == list(
        inspect.signature(follow).parameters.values()
    )
    for name in ("checkpoint", "attempt", "reconnects", "invocation", "finished"):
        assert isinstance(getattr(AsyncFollower, name), property), name


def test_async_for_delivers_every_event_once_across_a_drop(emulator: Emulator) -> None:
    inv = new_id("async")
    emulator.add(Script(inv, base_steps(), start=START, attempts=[Fault(drop_after=4)]))
    follower = on(emulator, inv)
    assert (follower.checkpoint, follower.finished, follower.invocation) == (Checkpoint(), False, None)
    events, error = run(collect(follower))
    assert error is None
    assert delivered_shapes(events) == expected_shapes(emulator.invocation(inv).emitted())
    assert follower.finished and follower.attempt == 2 and follower.reconnects == 1
    assert follower.invocation is not None and follower.invocation.status == "succeeded"
    assert follower.state.finished
    assert follower.checkpoint.since == at(13 * MS)
    assert "AsyncFollower" in repr(follower) and str(emulator.api_key) not in repr(follower)


def test_afollow_reads_the_environment_and_retries(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERNEL_API_KEY", str(emulator.api_key))
    monkeypatch.setenv("KERNEL_BASE_URL", emulator.url)
    inv = new_id("afollow")
    emulator.add(Script(inv, [Log("x"), State("succeeded")], start=START, attempts=[Fault(status=503, retry_after="0")]))

    async def main() -> List[KernelEvent]:
        return [event async for event in afollow(inv, idle_timeout=5)]

    assert logs(run(main())) == ["x"]
    assert [r.status for r in emulator.requests] == [503, 200]


@pytest.mark.parametrize(
    "invocation_id, options",
    [
        ("", {}),
        ("a\nb", {}),
        ("inv", {"api_key": ""}),
        ("inv", {"api_key": "k\r\nX: y"}),
        ("inv", {"base_url": "ftp://127.0.0.1"}),
        ("inv", {"base_url": "http://example.com"}),
        ("inv", {"idle_timeout": 0}),
        ("inv", {"max_retries": -1}),
    ],
)
def test_bad_settings_are_refused_at_construction(invocation_id: str, options: Dict[str, Any]) -> None:
    settings: Dict[str, Any] = {"api_key": "k", "base_url": "http://127.0.0.1:1"}
    settings.update(options)
    with pytest.raises(ConfigurationError):
        AsyncFollower(invocation_id, **settings)
    with pytest.raises(ConfigurationError):
        afollow(invocation_id, **settings)


def test_aclose_before_during_and_after(emulator: Emulator) -> None:
    inv = new_id("aclose")
    emulator.heartbeat_interval = None
    gate = Gate()
    emulator.add(Script(inv, [Log("a"), gate, Log("b"), State("succeeded")], start=START))

    async def main() -> None:
        unused = on(emulator, inv)
        await unused.aclose()
        with pytest.raises(StopAsyncIteration):
            await unused.__anext__()
        follower = on(emulator, inv)
        first = await follower.__anext__()
        assert isinstance(first, LogEvent) and first.message == "a"
        assert established_to(emulator.port) in (1, None)
        await follower.aclose()
        assert await until_closed(emulator.port) in (0, None)
        with pytest.raises(StopAsyncIteration):
            await follower.__anext__()
        await follower.aclose()  # twice is harmless

    try:
        run(main())
    finally:
        gate.release()
    assert len(emulator.requests) == 1


def test_start_clock_starts_the_deadline_once(emulator: Emulator) -> None:
    inv = new_id("clock")
    emulator.add(Script(inv, [Log("a"), State("succeeded")], start=START))

    async def main() -> List[KernelEvent]:
        follower = on(emulator, inv, deadline=30)
        follower.start_clock()
        deadline_at = follower.state.deadline_at
        assert deadline_at is not None
        events, error = await collect(follower)
        assert error is None and follower.state.deadline_at == deadline_at  # iterating did not restart it
        return events

    assert logs(run(main())) == ["a"]


# ---------------------------------------------------------------- cancellation


@pytest.mark.parametrize("stop_after", range(1, BASE_EVENTS))
def test_cancelled_while_waiting_for_the_network_then_resumed(emulator: Emulator, stop_after: int) -> None:
    """The task is cancelled while the server holds the stream open after ``stop_after`` events."""
    emulator.heartbeat_interval = None
    inv = new_id("cancel-wait")
    gate = Gate()
    steps = base_steps()
    steps.insert(stop_after, gate)
    emulator.add(Script(inv, steps, start=START))
    got: List[KernelEvent] = []

    async def first_run() -> Checkpoint:
        follower = on(emulator, inv)
        reached = asyncio.Event()

        async def consume() -> None:
            async for event in follower:
                got.append(event)
                if len(got) == stop_after:
                    reached.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(reached.wait(), 10)
        await asyncio.sleep(0.05)  # the consumer is back in the follow, waiting for bytes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await until_closed(emulator.port) in (0, None)
        return follower.checkpoint

    try:
        checkpoint = run(first_run())
    finally:
        gate.release()
    assert len(got) == stop_after
    rest, error = run(collect(on(emulator, inv, checkpoint=checkpoint)))
    assert error is None
    assert delivered_shapes(got + rest) == expected_shapes(emulator.invocation(inv).emitted())


SSE_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


def sse(obj: Dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n"


def invocation_json(status: str, at_: str = "2025-06-20T12:00:01Z") -> Dict[str, Any]:
    return {
        "id": "inv",
        "app_name": "a",
        "version": "1",
        "action_name": "run",
        "status": status,
        "started_at": "2025-06-20T12:00:00Z",
        "finished_at": at_ if status in ("succeeded", "failed") else None,
    }


def one_burst() -> List[Dict[str, Any]]:
    """A whole invocation, sent in one write: five logs (two alike at one time) and the end."""
    events: List[Dict[str, Any]] = [{"event": "invocation_state", "timestamp": at(0), "invocation": invocation_json("running")}]
    for n, (message, stamp) in enumerate([("a", 1), ("same", 2), ("same", 2), ("b", 3), ("c", 4)]):
        events.append({"event": "log", "timestamp": at(stamp * MS), "message": message})
    events.append({"event": "invocation_state", "timestamp": at(5 * MS), "invocation": invocation_json("succeeded")})
    return events


@pytest.mark.parametrize("stop_after", range(1, len(one_burst())))
def test_cancelled_while_handling_an_event_then_resumed(stop_after: int) -> None:
    """All events arrive in one read; the task is cancelled in its own code after ``stop_after``
    of them: the checkpoint holds exactly those, the rest of that read comes with the resume."""
    body = b"".join(sse(event) for event in one_burst())

    def whole_stream(connection: socket.socket, stopping: threading.Event) -> None:
        read_head(connection)  # the server ignores since: the follow state drops the replay
        connection.sendall(SSE_OK + body)

    got: List[KernelEvent] = []

    async def first_run(port: int) -> Checkpoint:
        follower = make_async(local(port), "inv")

        async def consume() -> None:
            async with follower:
                async for event in follower:
                    got.append(event)
                    if len(got) == stop_after:
                        task = asyncio.current_task()
                        assert task is not None
                        task.cancel()
                    await asyncio.sleep(0)  # where the cancellation lands

        task = asyncio.ensure_future(consume())
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await until_closed(port) in (0, None)
        return follower.checkpoint

    with TinyServer(whole_stream) as server:
        checkpoint = run(first_run(server.port))
        assert len(got) == stop_after
        rest, error = run(collect(make_async(local(server.port), "inv", checkpoint=checkpoint)))
    assert error is None
    assert [e.raw for e in got + rest] == one_burst()


def test_cancelled_during_a_backoff(emulator: Emulator) -> None:
    inv = new_id("cancel-sleep")
    emulator.add(Script(inv, [Log("x"), State("succeeded")], start=START, fault=Fault(status=503, retry_after="30")))

    async def main() -> None:
        follower = on(emulator, inv, retry_after_cap=60)
        task = asyncio.ensure_future(collect(follower))
        for _ in range(500):  # until the first answer came and the follow sleeps
            if follower.reconnects:
                break
            await asyncio.sleep(0.01)
        assert follower.reconnects == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

    run(main())
    assert len(emulator.requests) == 1


def test_cancelled_while_the_server_says_nothing() -> None:
    """Cancelling while waiting for a response head closes the connection too."""

    def silent(connection: socket.socket, stopping: threading.Event) -> None:
        read_head(connection)
        stopping.wait(30)

    async def main(port: int) -> None:
        task = asyncio.ensure_future(collect(make_async(local(port), "inv", idle_timeout=30)))
        for _ in range(500):
            if established_to(port):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert await until_closed(port) in (0, None)

    with TinyServer(silent) as server:
        run(main(server.port))
        assert server.accepted == 1


# ---------------------------------------------------------------- many follows, one loop, no threads


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class LoopServer:
    """An SSE server on the test's own event loop: each invocation's logs,
    replayed from ``since`` (inclusive); the first connection of every other
    invocation breaks off in the middle of an event."""

    LINES = 5

    def __init__(self) -> None:
        self.attempts: Dict[str, int] = {}

    def events(self, invocation_id: str) -> List[Tuple[str, bytes]]:
        out = []
        for n in range(self.LINES):
            stamp = at(n * MS)
            out.append((stamp, sse({"event": "log", "timestamp": stamp, "message": f"{invocation_id} {n}"})))
        end = at(self.LINES * MS)
        done = {"event": "invocation_state", "timestamp": end, "invocation": invocation_json("succeeded", end)}
        out.append((end, sse(done)))
        return out

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            split = urllib.parse.urlsplit(head.split(b" ")[1].decode("ascii"))
            invocation_id = urllib.parse.unquote(split.path.split("/")[2])
            since = urllib.parse.parse_qs(split.query).get("since")
            attempt = self.attempts[invocation_id] = self.attempts.get(invocation_id, -1) + 1
            writer.write(SSE_OK.replace(b"Connection: close", b"Transfer-Encoding: chunked"))
            sent = 0
            for stamp, data in self.events(invocation_id):
                if since and parse_timestamp(stamp) < parse_timestamp(since[0]):
                    continue
                if attempt == 0 and sent == 3 and int(invocation_id.split("-")[1]) % 2:
                    writer.write(chunk(data)[:20])
                    return
                writer.write(chunk(data))
                sent += 1
                await writer.drain()
                await asyncio.sleep(0)  # let the other streams interleave
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()


def test_two_hundred_follows_in_one_event_loop() -> None:
    """Each of 200 concurrent follows (half of them dropped once) delivers each line once,
    and the follows start no thread."""
    count = 200
    server = LoopServer()

    async def main() -> Tuple[List[Tuple[List[KernelEvent], Optional[BaseException]]], List[AsyncFollower], int]:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=count)
        port = listener.sockets[0].getsockname()[1]
        threads: List[int] = []

        async def watch_threads() -> None:
            while True:
                threads.append(threading.active_count())
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch_threads())
        try:
            followers = [make_async(local(port), f"inv-{n}") for n in range(count)]
            results = await asyncio.wait_for(asyncio.gather(*(collect(f) for f in followers)), 60)
        finally:
            watcher.cancel()
            listener.close()
            await listener.wait_closed()
        return results, followers, max(threads)

    before = threading.active_count()
    results, followers, most_threads = run(main())
    assert most_threads == before
    for n, ((events, error), follower) in enumerate(zip(results, followers)):
        assert error is None, (n, error)
        assert logs(events) == [f"inv-{n} {line}" for line in range(LoopServer.LINES)]
        assert isinstance(events[-1], InvocationStateEvent) and follower.finished
        assert follower.reconnects == n % 2


def test_many_follows_against_the_emulator(emulator: Emulator) -> None:
    faults = [Fault(drop_after=3), Fault(drop_after=5, reset=True), Fault(status=503, retry_after="0"), Fault()]
    ids = []
    for n in range(24):
        inv = new_id("many")
        ids.append(inv)
        emulator.add(Script(inv, base_steps(), start=START, attempts=[faults[n % len(faults)]]))

    async def main() -> List[Tuple[List[KernelEvent], Optional[BaseException]]]:
        return await asyncio.gather(*(collect(on(emulator, inv)) for inv in ids))

    for inv, (events, error) in zip(ids, run(main())):
        assert error is None, error
        assert delivered_shapes(events) == expected_shapes(emulator.invocation(inv).emitted())


# ---------------------------------------------------------------- the status probe

PROBE_DONE = json.dumps(invocation_json("succeeded")).encode("ascii")


def answer(status: str, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status.encode("ascii"),
        len(body),
        body,
    )


class ProbeServer:
    """The events endpoint sends a heartbeat (or nothing) and holds the stream
    open for ``hold`` seconds; ``GET /invocations/inv`` gets ``reply`` (None:
    the connection closes, or with ``hang`` stays silent)."""

    def __init__(self, reply: Optional[bytes], heartbeat: bool = True, hang: bool = False, hold: float = 30) -> None:
        self.reply = reply
        self.heartbeat = heartbeat
        self.hang = hang
        self.hold = hold
        self.targets: List[bytes] = []
        self.server = TinyServer(self.handle)
        self.port = self.server.port

    def handle(self, connection: socket.socket, stopping: threading.Event) -> None:
        head, _ = read_head(connection)
        target = head.split(b" ")[1]
        self.targets.append(target)
        if target.split(b"?")[0].endswith(b"/events"):
            heartbeat = sse({"event": "sse_heartbeat", "timestamp": at(0)}) if self.heartbeat else b""
            connection.sendall(SSE_OK + heartbeat)
            stopping.wait(self.hold)
        elif self.hang:
            stopping.wait(30)
        elif self.reply is not None:
            connection.sendall(self.reply)


def test_a_heartbeat_without_state_asks_for_the_status() -> None:
    """A stream that only beats (resumed after the end, say): the probe finds the invocation finished."""
    server = ProbeServer(answer("200 OK", PROBE_DONE))
    try:
        events, error = run(collect(make_async(local(server.port), "inv", idle_timeout=30)))
    finally:
        server.server.close()
    assert error is None
    assert [type(e).__name__ for e in events] == ["HeartbeatEvent", "InvocationStateEvent"]
    last = events[-1]
    assert isinstance(last, InvocationStateEvent) and last.invocation.status == "succeeded"
    assert last.raw["invocation"] == json.loads(PROBE_DONE)
    assert server.targets == [b"/invocations/inv/events", b"/invocations/inv"]


@pytest.mark.parametrize(
    "reply",
    [
        answer("404 Not Found", b'{"code": "not_found", "message": "no"}'),
        answer("200 OK", b"not json"),
        answer("200 OK", b"[1]"),
        answer("200 OK", b'{"id": "inv"}'),
        answer("200 OK", json.dumps(invocation_json("running")).encode("ascii")),
        None,
    ],
    ids=["404", "not-json", "not-an-object", "not-an-invocation", "running", "closed"],
)
def test_a_probe_that_finds_nothing_lets_the_stream_go_on(reply: Optional[bytes]) -> None:
    server = ProbeServer(reply)
    try:
        events, error = run(collect(make_async(local(server.port), "inv", idle_timeout=0.4, max_retries=0)))
    finally:
        server.server.close()
    assert isinstance(error, StreamTimeout), error
    assert [type(e).__name__ for e in events] == ["HeartbeatEvent"]
    assert server.targets == [b"/invocations/inv/events", b"/invocations/inv"]


@pytest.mark.parametrize("finished", [True, False])
def test_a_silent_attempt_asks_for_the_status_when_it_ends(monkeypatch: pytest.MonkeyPatch, finished: bool) -> None:
    """A stream that says nothing for a while and ends: the status is asked before retrying."""
    monkeypatch.setattr(kernel_sse, "_STATUS_PROBE_AFTER", 0.05)
    reply = answer("200 OK", PROBE_DONE) if finished else answer("503 Service Unavailable", b"{}")
    server = ProbeServer(reply, heartbeat=False, hold=0.3)
    try:
        events, error = run(collect(make_async(local(server.port), "inv", idle_timeout=30, max_retries=0)))
    finally:
        server.server.close()
    assert server.targets == [b"/invocations/inv/events", b"/invocations/inv"]
    if finished:
        assert error is None and [type(e).__name__ for e in events] == ["InvocationStateEvent"]
    else:
        assert isinstance(error, ConnectionFailed) and events == []


def test_a_long_error_body_is_read_only_so_far() -> None:
    def refuse(connection: socket.socket, stopping: threading.Event) -> None:
        read_head(connection)
        connection.sendall(answer("404 Not Found", b'{"code": "x", "message": "' + b"y" * 200_000 + b'"}'))

    with TinyServer(refuse) as server:
        events, error = run(collect(make_async(local(server.port), "inv")))
    assert isinstance(error, NotFoundError) and error.code == "not_found" and events == []


def test_the_deadline_holds_while_a_probe_waits() -> None:
    server = ProbeServer(None, hang=True)
    try:
        events, error = run(collect(make_async(local(server.port), "inv", idle_timeout=30, deadline=0.5)))
    finally:
        server.server.close()
    assert isinstance(error, DeadlineExceeded), error
    assert [type(e).__name__ for e in events] == ["HeartbeatEvent"]
    assert server.targets == [b"/invocations/inv/events", b"/invocations/inv"]


# ---------------------------------------------------------------- HTTPS and the proxy tunnel


class AnyTargetProxy:
    """A CONNECT proxy that records the request and tunnels to ``port`` whatever the target."""

    def __init__(self, port: int) -> None:
        self.port_to = port
        self.heads: List[bytes] = []
        self.server = TinyServer(self.handle)
        self.port = self.server.port

    def handle(self, connection: socket.socket, stopping: threading.Event) -> None:
        head, _ = read_head(connection)
        self.heads.append(head)
        upstream = socket.create_connection(("127.0.0.1", self.port_to), timeout=5)
        connection.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pump(connection, upstream, stopping)


@pytest.mark.parametrize(
    "host, authority, host_field",
    [("localhost", b"localhost:443", "localhost"), ("[::1]", b"[::1]:443", "[::1]")],
)
def test_the_tunnel_and_host_field_name_the_default_port_and_ipv6_right(
    tls_emulator: Tuple[Emulator, TLSShim],
    tls_files: TLSFiles,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    authority: bytes,
    host_field: str,
) -> None:
    emu, shim = tls_emulator
    tunnel = AnyTargetProxy(shim.port)
    monkeypatch.setenv("HTTPS_PROXY", local(tunnel.port))
    inv = new_id("tunnel")
    emu.add(Script(inv, [Log("via"), State("succeeded")], start=START))
    context = ssl.create_default_context(cafile=tls_files.ca)
    try:
        events, error = run(collect(on(emu, inv, base_url=f"https://{host}", ssl_context=context)))
    finally:
        tunnel.server.close()
    assert error is None and logs(events) == ["via"]
    (head,) = tunnel.heads
    assert head.split(b"\r\n")[:2] == [b"CONNECT %s HTTP/1.1" % authority, b"Host: %s" % authority]
    (request,) = emu.requests
    assert request.header("Host") == host_field


@pytest.mark.parametrize(
    "reply, reason",
    [
        (b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n", "refused the tunnel: 407"),
        (b"HTTP/1.1 200 OK\r\n\r\nhello", "bytes before the TLS handshake"),
    ],
    ids=["407", "early-bytes"],
)
def test_a_failed_tunnel_is_a_failed_connection(
    monkeypatch: pytest.MonkeyPatch, reply: bytes, reason: str
) -> None:
    def bad_proxy(connection: socket.socket, stopping: threading.Event) -> None:
        read_head(connection)
        connection.sendall(reply)
        stopping.wait(5)

    with TinyServer(bad_proxy) as server:
        monkeypatch.setenv("HTTPS_PROXY", local(server.port))
        events, error = run(collect(make_async("https://127.0.0.1:1", "inv", api_key=CANARY_KEY, max_retries=1)))
        assert server.accepted == 2
    assert isinstance(error, ConnectionFailed), error
    assert reason in str(error) and CANARY_KEY not in str(error)
    assert events == []


def test_the_certificate_is_checked_through_the_tunnel(
    tls_emulator: Tuple[Emulator, TLSShim], proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the test CA the handshake through the tunnel fails, and no request gets through."""
    emu, shim = tls_emulator
    monkeypatch.setenv("HTTPS_PROXY", local(proxy.port))
    monkeypatch.setattr(kernel_sse, "_default_ssl_context", None)
    inv = new_id("untrusted")
    emu.add(Script(inv, [Log("x"), State("succeeded")], start=START))
    base_url = "https://127.0.0.1:%d" % shim.port
    events, error = run(collect(on(emu, inv, base_url=base_url, max_retries=1)))
    assert isinstance(error, ConnectionFailed), error
    assert "certificate" in str(error).lower()
    assert len(proxy.requests) == 2 and emu.requests == [] and events == []
    shared = kernel_sse._default_ssl_context
    assert shared is not None and shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname
    on(emu, inv, base_url=base_url)  # the next follower shares the default context
    assert kernel_sse._default_ssl_context is shared
