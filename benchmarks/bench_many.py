#!/usr/bin/env python3
"""Many concurrent follows in one process: kernel-sse ``AsyncFollower`` against the SDK's ``AsyncKernel``.

Run from the repository root, with the ``bench`` extra installed
(``pip install '.[bench]'``; the SDK is the ``kernel`` package)::

    python benchmarks/bench_many.py            # 1,000 follows x 60 s, per client: about 2.5 minutes
    python benchmarks/bench_many.py --quick    # 100 follows x 10 s: about 30 s
    python benchmarks/bench_many.py --client ours --tracemalloc   # where kernel-sse's memory goes

It benchmarks the ``kernel_sse.py`` of this checkout (not an installed copy).

The server: a stdlib asyncio server in its own process (one task per
connection, so 1,000 streams cost it little; ``kernel_sse_emulator`` runs a
thread per stream and a script thread per invocation, too heavy for 1,000 at
once). It serves ``GET /invocations/{id}/events`` (Bearer auth, the API's JSON
event shapes, ``Content-Type: text/event-stream``, chunked, ``Connection:
close``) and ``GET /invocations/{id}``. Every connection gets the ``running``
state first (so kernel-sse never needs its status probe), then one log line a
second for ``--seconds`` seconds, an ``sse_heartbeat`` every 5 seconds (half
a second after every fifth line: a fixed cadence, more heartbeats than an API
that only sends them when idle would, since a stream with a line a second is
never idle), and the ``succeeded`` state 0.2 s after the last line, then the
end of the body. The invocations' one-second grids are spread evenly across
the second (invocation k of N logs at phase k/N), as independent invocations
would be: about N lines a second in all, never N at one instant. Each log
message carries the server's ``time.time_ns()`` taken just before the write of
its chunk, and its line number.

Each client runs in a fresh process (so their memory does not mix) and
prints one JSON line that the parent collects:

- RSS per follow: ``VmRSS`` while all N follows are streaming (the highest of
  the samples taken every 0.5 s from the moment every follow has had its first
  line to the moment the first one ends) less ``VmRSS`` of the same process
  before the follows start (after imports, the client's construction, one
  warm-up follow of a one-line invocation, ``gc.collect()`` and glibc's
  ``malloc_trim(0)``), divided by N. The first, median and last samples are
  printed too: a client whose memory grows with every line shows it there.
- CPU per 1,000 events: ``os.times()`` user + system of the client process
  from the start of the follows to the end of the last, divided by the events
  yielded (logs, states and heartbeats), times 1,000.
- Delivery latency: ``time.time_ns()`` when the event is yielded to the
  consuming task less the stamp in the message (same machine, same clock,
  two processes); p50/p99/max over every line.
- Delivery: per invocation, lines 0..S-1 in order, each once, then the
  ``succeeded`` state; any miss, repeat, reordering or crash makes the script
  exit 1 (a missed target does not).

The clients, each with one task per follow on one event loop:

- ``ours``: ``async with kernel_sse.AsyncFollower(id, api_key=..., base_url=URL)``
  with its defaults (``idle_timeout=90``, ``max_retries=10``).
- ``sdk``: one shared ``kernel.AsyncKernel``: ``max_retries=2`` (the SDK's
  default; it retries only the opening request, which is what a connect storm
  of N follows can need), ``http_client=kernel.DefaultAsyncHttpxClient(limits=
  httpx.Limits(max_connections=N+16, max_keepalive_connections=N+16),
  timeout=httpx.Timeout(30.0, connect=10.0))`` (the default pool of 100
  connections would queue the other follows; the read timeout of 30 s is six
  heartbeat intervals, the connect timeout leaves room for N connects at
  once), and ``async with await client.invocations.follow(id) as stream``.
- ``floor`` (only with ``--client floor`` or ``all``): an ``asyncio.Protocol``
  per connection that finds the stamps in the raw bytes, no HTTP, SSE or
  JSON parsing: what a wake-up per event costs on this machine.

The machine's load average is printed before and after each client: the
clients and the server share the CPUs with whatever else runs, which moves the
latency and CPU numbers more than the memory ones.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

API_KEY = "bench-key-0123456789"
WARM_ID = "inv_warm"
HEARTBEAT_EVERY = 5  # lines: one sse_heartbeat half a second after every fifth line
TAIL = 0.2  # seconds from the last line to the succeeded state
FILLER = "navigating to https://example.com/checkout?step=2 waiting for selector #cart > .item status=200"
KIB = 1024


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _loadavg() -> str:
    return "/".join("%.2f" % x for x in os.getloadavg())


def _rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // KIB


def _malloc_trim() -> None:
    """Hand the C heap's free pages back (glibc), so the baseline RSS holds no
    memory freed by imports and the warm-up that the follows would reuse unseen."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def invocation_id(index: int) -> str:
    return "inv_%05d" % index


# ---------------------------------------------------------------------------
# The server (its own process)
# ---------------------------------------------------------------------------


def _rfc3339(ns: int) -> str:
    second, fraction = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + ".%09dZ" % fraction


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _invocation(invocation_id: str, status: str) -> Dict[str, object]:
    obj: Dict[str, object] = {
        "id": invocation_id,
        "app_name": "bench-app",
        "version": "1.0.0",
        "action_name": "run",
        "status": status,
        "started_at": "2025-06-20T12:00:00Z",
    }
    if status == "succeeded":
        obj["finished_at"] = _rfc3339(time.time_ns())
        obj["status_reason"] = "Invocation completed successfully"
    return obj


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(obj: object) -> bytes:
    return _chunk(b"data: " + _dumps(obj) + b"\n\n")


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"X-SSE-Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
)
_PATH = re.compile(r"/invocations/([^/?]+)(/events)?")


class Server:
    """One task per connection; every invocation logs on its own one-second grid."""

    def __init__(self, follows: int, seconds: int) -> None:
        self.follows = follows
        self.seconds = seconds
        self.epoch = 0.0
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            match = _PATH.fullmatch(target.partition("?")[0])
            if headers.get("authorization") != "Bearer " + API_KEY:
                self._reply(writer, 401, {"code": "unauthorized", "message": "missing or invalid API key"})
            elif method != "GET" or match is None:
                self._reply(writer, 404, {"code": "not_found", "message": "no such route"})
            elif match.group(2) is None:
                self._reply(writer, 200, _invocation(match.group(1), "running"))
            else:
                await self.stream(match.group(1), writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, status: int, obj: object) -> None:
        body = _dumps(obj)
        reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}[status]
        writer.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, reason.encode(), len(body), body)
        )

    async def stream(self, invocation_id: str, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        writer.write(
            _STREAM_HEAD
            + _event({"event": "invocation_state", "timestamp": _rfc3339(time.time_ns()), "invocation": _invocation(invocation_id, "running")})
        )
        if invocation_id == WARM_ID:
            count, phase = 1, 0.0
        else:
            count = self.seconds
            index = int(invocation_id.rpartition("_")[2] or 0)
            phase = (index % self.follows) / self.follows
        # The first line on this invocation's grid at least 0.2 s after the connect.
        now = loop.time()
        first = self.epoch + phase + -(-(now + 0.2 - self.epoch - phase) // 1)
        plan: List[Tuple[float, int]] = [(first + j, j) for j in range(count)]
        plan += [(first + j + 0.5, -1) for j in range(HEARTBEAT_EVERY - 1, count - 1, HEARTBEAT_EVERY)]
        plan.append((first + count - 1 + TAIL, -2))
        plan.sort()
        quoted = invocation_id.encode()
        for at, what in plan:
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if what >= 0:
                stamp = time.time_ns()
                payload = b'data: {"event":"log","timestamp":"%s","message":"%d %d %s %s"}\n\n' % (
                    _rfc3339(stamp).encode(),
                    what,
                    stamp,
                    quoted,
                    FILLER.encode(),
                )
                writer.write(_chunk(payload))
            elif what == -1:
                writer.write(_event({"event": "sse_heartbeat", "timestamp": _rfc3339(time.time_ns())}))
            else:
                done = {"event": "invocation_state", "timestamp": _rfc3339(time.time_ns()), "invocation": _invocation(invocation_id, "succeeded")}
                writer.write(_event(done) + b"0\r\n\r\n")
            await writer.drain()
        await writer.drain()


async def _serve(follows: int, seconds: int) -> None:
    server = Server(follows, seconds)
    server.epoch = asyncio.get_running_loop().time()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=4096, limit=65536)
    print(json.dumps({"port": listener.sockets[0].getsockname()[1]}), flush=True)
    async with listener:
        await listener.serve_forever()


class ServerProcess:
    def __init__(self, follows: int, seconds: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--follows", str(follows), "--seconds", str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = "http://127.0.0.1:%d" % json.loads(self.process.stdout.readline())["port"]

    def cpu_seconds(self) -> float:
        with open("/proc/%d/stat" % self.process.pid) as handle:
            fields = handle.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


# ---------------------------------------------------------------------------
# The clients (each in a fresh process)
# ---------------------------------------------------------------------------


class Recorder:
    """What every follow delivered, in storage allocated before the baseline."""

    def __init__(self, follows: int, seconds: int) -> None:
        self.follows = follows
        self.seconds = seconds
        self.latency = array("q", bytes(8 * follows * seconds))
        self.samples = 0
        self.steady_from = -1  # the first sample taken once every follow has had its first line
        self.steady_at: Optional[Tuple[float, Any, int]] = None  # then: wall clock, os.times(), events
        self.next_line = [0] * follows
        self.finished = [False] * follows
        self.problems: List[str] = []
        self.bad = set()  # type: set[int]
        self.events = self.logs = self.heartbeats = self.states = 0
        self.streaming = 0  # follows that have had their first line
        self.ended = 0  # follows whose loop has ended
        self.rss_window: List[int] = []

    def problem(self, index: int, text: str) -> None:
        self.bad.add(index)
        if len(self.problems) < 10:
            self.problems.append("%s: %s" % (invocation_id(index), text))

    def log(self, index: int, message: str, now: int) -> None:
        line, stamp, _ = message.split(" ", 2)
        if self.samples < len(self.latency):
            self.latency[self.samples] = now - int(stamp)
            self.samples += 1
        expected = self.next_line[index]
        if int(line) != expected or self.finished[index]:
            self.problem(index, "line %s where line %d was due" % (line, expected))
        if expected == 0:
            self.streaming += 1
            if self.streaming == self.follows:
                self.steady_from = self.samples
                self.steady_at = (time.perf_counter(), os.times(), self.events)
        self.next_line[index] = expected + 1

    def state(self, index: int, status: str) -> None:
        if status == "succeeded":
            if self.next_line[index] != self.seconds:
                self.problem(index, "succeeded after %d lines" % self.next_line[index])
            if self.finished[index]:
                self.problem(index, "succeeded twice")
            self.finished[index] = True
        elif status != "running":
            self.problem(index, "state %s" % status)

    def end(self, index: int, error: Optional[BaseException]) -> None:
        self.ended += 1
        if error is not None:
            self.problem(index, "%s: %s" % (type(error).__name__, error))
        elif not self.finished[index]:
            self.problem(index, "ended without the succeeded state")


async def _sample_rss(rec: Recorder) -> None:
    while True:
        await asyncio.sleep(0.5)
        if rec.streaming == rec.follows and rec.ended == 0 and not any(rec.finished):
            rec.rss_window.append(_rss_kib())


def _make_ours(url: str, rec: Recorder) -> Any:
    import kernel_sse

    LogEvent, StateEvent, Heartbeat = kernel_sse.LogEvent, kernel_sse.InvocationStateEvent, kernel_sse.HeartbeatEvent

    async def follow(index: int, inv: str, stats: Optional[Dict[str, int]] = None) -> None:
        async with kernel_sse.AsyncFollower(inv, api_key=API_KEY, base_url=url) as follower:
            async for event in follower:
                now = time.time_ns()
                rec.events += 1
                kind = type(event)
                if kind is LogEvent:
                    rec.logs += 1
                    rec.log(index, event.message, now)
                elif kind is StateEvent:
                    rec.states += 1
                    rec.state(index, event.invocation.status)
                elif kind is Heartbeat:
                    rec.heartbeats += 1
                else:
                    rec.problem(index, "unexpected %r" % (event,))
        if stats is not None:
            stats["reconnects"] += follower.reconnects

    return follow, None, "kernel-sse %s" % kernel_sse.__version__


def _make_sdk(url: str, rec: Recorder, follows: int) -> Any:
    import httpx
    import kernel

    client = kernel.AsyncKernel(
        api_key=API_KEY,
        base_url=url,
        max_retries=2,
        http_client=kernel.DefaultAsyncHttpxClient(
            limits=httpx.Limits(max_connections=follows + 16, max_keepalive_connections=follows + 16),
            timeout=httpx.Timeout(30.0, connect=10.0),
        ),
    )

    async def follow(index: int, inv: str, stats: Optional[Dict[str, int]] = None) -> None:
        async with await client.invocations.follow(inv) as stream:
            async for event in stream:
                now = time.time_ns()
                rec.events += 1
                kind = event.event
                if kind == "log":
                    rec.logs += 1
                    rec.log(index, event.message, now)
                elif kind == "invocation_state":
                    rec.states += 1
                    rec.state(index, event.invocation.status)
                elif kind == "sse_heartbeat":
                    rec.heartbeats += 1
                else:
                    rec.problem(index, "unexpected %r" % (event,))

    return follow, client, "kernel %s, httpx %s" % (kernel.__version__, httpx.__version__)


def _cpu(start: Any, end: Any) -> float:
    return (end.user - start.user) + (end.system - start.system)


_LINE = re.compile(rb'"message":"(\d+) (\d+) ')
_KIND = re.compile(rb'"(?:event)":"(log|invocation_state|sse_heartbeat)"')


def _make_floor(url: str, rec: Recorder) -> Any:
    """No library: an asyncio Protocol per connection that finds the stamps in the
    raw bytes (no HTTP, SSE or JSON parsing); the platform's cost of a wake-up per event."""
    host, port = url.rpartition("/")[2].split(":")

    class Floor(asyncio.Protocol):
        def __init__(self, index: int, done: asyncio.Future) -> None:
            self.index, self.done, self.tail = index, done, b""

        def data_received(self, data: bytes) -> None:
            now = time.time_ns()
            data = self.tail + data
            end = data.rfind(b"\n\n")
            if end < 0:
                self.tail = data
                return
            self.tail = data[end + 2 :]
            for kind in _KIND.finditer(data, 0, end):
                rec.events += 1
                what = kind.group(1)
                if what == b"log":
                    rec.logs += 1
                elif what == b"sse_heartbeat":
                    rec.heartbeats += 1
                else:
                    rec.states += 1
                    rec.state(self.index, "succeeded" if b'"status":"succeeded"' in data else "running")
            for match in _LINE.finditer(data, 0, end):
                rec.log(self.index, "%s %s x" % (match.group(1).decode(), match.group(2).decode()), now)

        def connection_lost(self, exc: Optional[BaseException]) -> None:
            if not self.done.done():
                self.done.set_result(None)

    async def follow(index: int, inv: str, stats: Optional[Dict[str, int]] = None) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        transport, _ = await loop.create_connection(lambda: Floor(index, done), host, int(port))
        transport.write(b"GET /invocations/%s/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % (inv.encode(), API_KEY.encode()))
        await done

    return follow, None, "asyncio.Protocol, no parsing"


def _percentile(values: List[int], fraction: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, int(round(fraction * len(values))) - 1))
    return float(values[index])


async def run_client(which: str, url: str, follows: int, seconds: int, trace: bool) -> Dict[str, Any]:
    _raise_fd_limit()
    rec = Recorder(follows, seconds)
    if which == "ours":
        follow, client, version = _make_ours(url, rec)
    elif which == "floor":
        follow, client, version = _make_floor(url, rec)
    else:
        follow, client, version = _make_sdk(url, rec, follows)

    # Warm-up: one follow of a one-line invocation (imports done lazily, validators built).
    warm = Recorder(1, 1)
    if which == "ours":
        warm_follow = _make_ours(url, warm)[0]
    elif which == "floor":
        warm_follow = _make_floor(url, warm)[0]
    else:

        async def warm_follow(index: int, inv: str) -> None:
            async with await client.invocations.follow(inv) as stream:
                async for event in stream:
                    warm.events += 1
    await warm_follow(0, WARM_ID)
    gc.collect()
    _malloc_trim()
    await asyncio.sleep(0.2)
    rss_base = _rss_kib()
    if trace:
        import tracemalloc

        tracemalloc.start(1)
        snap_base = tracemalloc.take_snapshot()

    stats = {"reconnects": 0}

    async def one(index: int) -> None:
        error: Optional[BaseException] = None
        try:
            await follow(index, invocation_id(index), stats)
        except Exception as exc:  # recorded, reported, exit 1
            error = exc
        rec.end(index, error)

    # The cyclic collector's pauses (the default thresholds, as a user would have them).
    pauses: Dict[int, List[float]] = {0: [], 1: [], 2: []}
    began = [0.0]

    def on_gc(phase: str, info: Dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - began[0])

    gc.callbacks.append(on_gc)
    sampler = asyncio.ensure_future(_sample_rss(rec))
    snap_steady = None
    cpu_start = os.times()
    wall_start = time.perf_counter()
    tasks = [asyncio.ensure_future(one(index)) for index in range(follows)]
    if trace:
        # Take the snapshot in the middle of the steady window.
        while not (rec.streaming == follows and rec.ended == 0) and not all(t.done() for t in tasks):
            await asyncio.sleep(0.1)
        await asyncio.sleep(seconds / 3)
        snap_steady = tracemalloc.take_snapshot()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - wall_start
    cpu_end = os.times()
    sampler.cancel()
    gc.callbacks.remove(on_gc)
    if client is not None:
        await client.close()

    latency = sorted(rec.latency[: rec.samples])
    steady = sorted(rec.latency[rec.steady_from : rec.samples]) if rec.steady_from >= 0 else []
    window = rec.rss_window
    result: Dict[str, Any] = {
        "client": which,
        "version": version,
        "follows": follows,
        "seconds": seconds,
        "events": rec.events,
        "logs": rec.logs,
        "states": rec.states,
        "heartbeats": rec.heartbeats,
        "bad_follows": len(rec.bad),
        "problems": rec.problems,
        "reconnects": stats["reconnects"] if which == "ours" else None,
        "rss_base_kib": rss_base,
        "rss_steady_kib": max(window) if window else None,
        "rss_steady_median_kib": sorted(window)[len(window) // 2] if window else None,
        "rss_samples": len(window),
        "rss_first_kib": window[0] if window else None,
        "rss_last_kib": window[-1] if window else None,
        "cpu_s": _cpu(cpu_start, cpu_end),
        "cpu_user_s": cpu_end.user - cpu_start.user,
        "cpu_sys_s": cpu_end.system - cpu_start.system,
        "wall_s": wall,
        "lat_p50_ms": _percentile(latency, 0.50) / 1e6,
        "lat_p90_ms": _percentile(latency, 0.90) / 1e6,
        "lat_p99_ms": _percentile(latency, 0.99) / 1e6,
        "lat_max_ms": (latency[-1] / 1e6) if latency else float("nan"),
        "steady_lines": len(steady),
        "startup_s": rec.steady_at[0] - wall_start if rec.steady_at else None,
        "startup_cpu_s": _cpu(cpu_start, rec.steady_at[1]) if rec.steady_at else None,
        "steady_cpu_s": _cpu(rec.steady_at[1], cpu_end) if rec.steady_at else None,
        "steady_events": rec.events - rec.steady_at[2] if rec.steady_at else None,
        "steady_p50_ms": _percentile(steady, 0.50) / 1e6,
        "steady_p99_ms": _percentile(steady, 0.99) / 1e6,
        "steady_max_ms": (steady[-1] / 1e6) if steady else float("nan"),
        "gc": {str(g): [len(p), sum(p), max(p, default=0.0)] for g, p in pauses.items()},
        "loadavg": _loadavg(),
    }
    if trace and snap_steady is not None:
        top = snap_steady.compare_to(snap_base, "lineno")
        total = sum(stat.size_diff for stat in top)
        result["trace_total_kib_per_follow"] = total / KIB / follows
        by_file: Dict[str, int] = {}
        for stat in top:
            name = os.path.basename(stat.traceback[0].filename)
            by_file[name] = by_file.get(name, 0) + stat.size_diff
        result["trace_files"] = sorted(((name, size / follows) for name, size in by_file.items()), key=lambda x: -x[1])[:8]
        result["trace_top"] = [
            ["%s:%d" % (os.path.basename(stat.traceback[0].filename), stat.traceback[0].lineno), stat.size_diff / follows, stat.count_diff / follows]
            for stat in top[:20]
        ]
    return result


def client_process(which: str, url: str, follows: int, seconds: int, trace: bool) -> Dict[str, Any]:
    command = [sys.executable, __file__, "--run", which, "--url", url, "--follows", str(follows), "--seconds", str(seconds)]
    if trace:
        command.append("--tracemalloc")
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]}
    result: Dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _per_follow(result: Dict[str, Any]) -> Optional[float]:
    if result.get("rss_steady_kib") is None:
        return None
    return (result["rss_steady_kib"] - result["rss_base_kib"]) / result["follows"]


def _cpu_per_k(result: Dict[str, Any]) -> float:
    return result["cpu_s"] / max(1, result["events"]) * 1000 * 1000  # ms per 1,000 events


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--follows", type=int, default=None, help="concurrent follows (default 1000)")
    parser.add_argument("--seconds", type=int, default=None, help="lines per invocation, one a second (default 60)")
    parser.add_argument(
        "--client", choices=["ours", "sdk", "both", "floor", "all"], default="both",
        help="both: kernel-sse and the SDK (default); floor: a parse-free asyncio.Protocol; all: the three",
    )
    parser.add_argument("--quick", action="store_true", help="100 follows x 10 s")
    parser.add_argument("--tracemalloc", action="store_true", help="where the memory goes (slows the client: CPU and latency not comparable)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", choices=["ours", "sdk", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    follows = args.follows or (100 if args.quick else 1000)
    seconds = args.seconds or (10 if args.quick else 60)

    if args.serve:
        _raise_fd_limit()
        asyncio.run(_serve(follows, seconds))
        return 0
    if args.run:
        print(json.dumps(asyncio.run(run_client(args.run, args.url, follows, seconds, args.tracemalloc))))
        return 0

    _raise_fd_limit()
    clients = {"both": ["ours", "sdk"], "all": ["floor", "ours", "sdk"]}.get(args.client, [args.client])
    try:
        import kernel

        sdk_version: Optional[str] = kernel.__version__
    except ImportError:
        sdk_version = None
    if sdk_version is None and "sdk" in clients:
        print("official SDK not installed: SDK rows skipped")
        clients.remove("sdk")
    import kernel_sse

    print("kernel-sse %s, Python %s, %s, %s CPUs" % (kernel_sse.__version__, platform.python_version(), platform.platform(), os.cpu_count()))
    print("official SDK: %s" % ("kernel %s" % sdk_version if sdk_version else "not installed"))
    print(
        "%s concurrent follows in one process, each invocation: running, %d log lines 1/s, a heartbeat every %d s, succeeded"
        % (format(follows, ","), seconds, HEARTBEAT_EVERY)
    )
    print("load average (1/5/15 min) at start: %s" % _loadavg())
    failed = False
    results: Dict[str, Dict[str, Any]] = {}
    labels = {"ours": "kernel-sse AsyncFollower", "sdk": "SDK AsyncKernel", "floor": "floor: raw asyncio.Protocol"}
    with ServerProcess(follows, seconds) as server:
        for which in clients:
            cpu_before = server.cpu_seconds()
            result = client_process(which, server.url, follows, seconds, args.tracemalloc)
            server_cpu = server.cpu_seconds() - cpu_before
            if "error" in result:
                print("%s: ERROR %s" % (labels[which], result["error"]))
                failed = True
                continue
            result["server_cpu_s"] = server_cpu
            results[which] = result
            print(
                "  %s (%s): %.1f s wall, server process %.1f s CPU, load average after: %s"
                % (labels[which], result["version"], result["wall_s"], server_cpu, result["loadavg"])
            )
            if result["bad_follows"] or result["logs"] != follows * seconds:
                failed = True
                print(
                    "  WRONG: %d follows with problems, %d of %d lines: %s"
                    % (result["bad_follows"], result["logs"], follows * seconds, "; ".join(result["problems"]))
                )

    print()
    print(
        "%-26s %7s %6s %8s %9s %9s %8s %9s %9s %9s %8s %8s"
        % ("client", "events", "hbeats", "delivery", "RSS base", "RSS run", "KiB/fol", "CPU s", "ms/1k ev", "p50 ms", "p99 ms", "max ms")
    )
    for which, r in results.items():
        per_follow = _per_follow(r)
        ok = r["bad_follows"] == 0 and r["logs"] == follows * seconds
        print(
            "%-26s %7d %6d %8s %8.1fM %8sM %8s %9.2f %9.2f %9.2f %8.2f %8.1f"
            % (
                labels[which],
                r["events"],
                r["heartbeats"],
                "ok" if ok else "WRONG",
                r["rss_base_kib"] / KIB,
                "%.1f" % (r["rss_steady_kib"] / KIB) if r["rss_steady_kib"] else "-",
                "%.1f" % per_follow if per_follow is not None else "-",
                r["cpu_s"],
                _cpu_per_k(r),
                r["lat_p50_ms"],
                r["lat_p99_ms"],
                r["lat_max_ms"],
            )
        )
    print(
        "(RSS run: highest of %s samples while all follows streamed; CPU: user+sys of the client process; "
        "events: logs + states + heartbeats)" % "/".join(str(r["rss_samples"]) for r in results.values())
    )
    for which, r in results.items():
        if r["rss_samples"]:
            print(
                "%-26s RSS while all streamed: first %.1f, median %.1f, last %.1f, highest %.1f MiB (%d samples)"
                % (labels[which], r["rss_first_kib"] / KIB, r["rss_steady_median_kib"] / KIB, r["rss_last_kib"] / KIB, r["rss_steady_kib"] / KIB, r["rss_samples"])
            )
    print()
    print("Where it goes: start-up (from the first connect to every follow's first line) and the steady state after it")
    print(
        "%-26s %9s %11s %11s %9s %9s %9s %9s"
        % ("client", "start s", "start CPU s", "ms/follow", "ms/1k ev", "p50 ms", "p99 ms", "max ms")
    )
    for which, r in results.items():
        if r.get("startup_s") is None:
            continue
        print(
            "%-26s %9.2f %11.2f %11.2f %9.2f %9.2f %9.2f %9.1f"
            % (
                labels[which],
                r["startup_s"],
                r["startup_cpu_s"],
                r["startup_cpu_s"] / r["follows"] * 1000,
                r["steady_cpu_s"] / max(1, r["steady_events"]) * 1e6,
                r["steady_p50_ms"],
                r["steady_p99_ms"],
                r["steady_max_ms"],
            )
        )
    print("(start CPU s/follow in ms; steady ms/1k ev: CPU of the events after start-up, teardown included)")
    for which, r in results.items():
        print(
            "%-26s cyclic GC during the run: %s"
            % (
                labels[which],
                ", ".join(
                    "gen%s %d x, %.0f ms in all, longest %.1f ms" % (g, n, total * 1000, longest * 1000)
                    for g, (n, total, longest) in sorted(r["gc"].items())
                ),
            )
        )
    ours, sdk = results.get("ours"), results.get("sdk")
    if ours:
        if ours.get("reconnects"):
            print("kernel-sse reconnects: %d" % ours["reconnects"])
        per_follow = _per_follow(ours)
        if per_follow is not None:
            print("target kernel-sse RSS per follow <= 64 KiB: %s (%.1f KiB)" % (_verdict(per_follow <= 64), per_follow))
        print("target kernel-sse p99 delivery <= 10 ms: %s (%.2f ms)" % (_verdict(ours["lat_p99_ms"] <= 10), ours["lat_p99_ms"]))
    if ours and sdk:
        ours_mem, sdk_mem = _per_follow(ours), _per_follow(sdk)
        if ours_mem is not None and sdk_mem is not None:
            print(
                "target kernel-sse memory per follow <= 1/5 of the SDK's: %s (%.1f vs %.1f KiB, 1/%.1f)"
                % (_verdict(ours_mem * 5 <= sdk_mem), ours_mem, sdk_mem, sdk_mem / ours_mem if ours_mem > 0 else float("inf"))
            )
        ours_cpu, sdk_cpu = _cpu_per_k(ours), _cpu_per_k(sdk)
        print(
            "target kernel-sse CPU per event <= 1/5 of the SDK's: %s (%.2f vs %.2f ms per 1,000 events, 1/%.1f)"
            % (_verdict(ours_cpu * 5 <= sdk_cpu), ours_cpu, sdk_cpu, sdk_cpu / ours_cpu)
        )
    floor = results.get("floor")
    if floor and ours and sdk:
        above_ours, above_sdk = _cpu_per_k(ours) - _cpu_per_k(floor), _cpu_per_k(sdk) - _cpu_per_k(floor)
        print(
            "CPU above the floor (a wake-up per event, no parsing): kernel-sse %.2f, SDK %.2f ms per 1,000 events (1/%.1f)"
            % (above_ours, above_sdk, above_sdk / above_ours if above_ours > 0 else float("inf"))
        )
    for which, r in results.items():
        if "trace_top" in r:
            print()
            print(
                "%s, tracemalloc (Python allocations) in the steady state less the baseline: %.1f KiB per follow; top sites:"
                % (labels[which], r["trace_total_kib_per_follow"])
            )
            print("  by file: " + ", ".join("%s %.2f KiB" % (name, size / KIB) for name, size in r["trace_files"]))
            print("  (RSS and CPU above include tracemalloc's own cost; only these numbers count in this mode)")
            for site, size, count in r["trace_top"]:
                print("  %-40s %9.2f KiB %8.2f blocks per follow" % (site, size / KIB, count))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
