#!/usr/bin/env python3
"""Follow-loop latency, throughput and memory of kernel-sse against the official SDK.

Run from the repository root, with the ``bench`` extra installed
(``pip install '.[bench]'``; the SDK is the ``kernel`` package)::

    python benchmarks/bench_follow.py            # about two to four minutes
    python benchmarks/bench_follow.py --quick    # 100,000 events, 300 latency samples

It benchmarks the ``kernel_sse.py`` of this checkout (not an installed copy).
Everything runs over loopback (127.0.0.1) with real sockets, in one run, so the
ratios are what counts. The targets are in ``benchmarks/README.md``.

1. Latency: the time from just before a server writes an event to the
   moment ``follow()`` yields it, p50/p90/p99/max over 1,000 events (after a
   warm-up). The server writes one event, then waits on a gate that the
   consumer opens only once it got that event, so every sample is one event
   crossing an idle connection (nothing queued, no buffer ever fills). The
   write time travels in the log message itself (``time.perf_counter_ns()``,
   same process). Two servers:

   - ``mini``: a purpose-built stdlib server thread that takes the time right
     before its ``sendall`` of the chunk holding the event: this is the number
     of the issue. A raw-socket client on the same server is the floor.
   - ``emulator``: ``kernel_sse_emulator``; the consumer appends a ``Log``
     step stamped with the time, and the emulator's script thread and stream
     thread hand it on before the write. The extra thread hops are in the
     number: an upper bound, shown for reference.

   kernel-sse ``follow()`` and the SDK's ``Kernel(...).invocations.follow(id)``
   are measured against the same servers, each in a fresh process.

2. Throughput: 1,000,000 log events (plus the state events around them)
   pre-generated once, as the API sends them (compact JSON, RFC 3339
   nanosecond timestamps, 20-300 character messages, some non-ASCII), served
   in 64 KiB chunks of chunked transfer encoding by a stdlib server in its own
   process, so the client is what is measured. kernel-sse ``follow()`` and the
   SDK's ``follow`` each consume the whole stream in a fresh process (typed
   events both); events/s, MB/s, and RSS (``VmRSS`` from ``/proc/self/status``,
   not the peak) after 100,000 events and after the last. Both clients check
   what they got: the number of log events and the total length of their
   messages must equal the server's.

3. Identical timestamps: N log events that all carry one timestamp (a burst
   the server stamped at once) against N with distinct timestamps, through
   ``follow()``. The follow remembers what it delivered near the resume point
   (a bounded window); this shows what that costs as N grows.

Not a test: it prints numbers and exits 0 (1 only if a client delivered wrong
events or crashed). The SDK rows are skipped with a note if ``kernel`` is not
installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

API_KEY = "bench-key-0123456789"
INVOCATION_ID = "inv_bench"
MIB = 1024 * 1024
CHUNK = 64 * 1024
START_NS = 1750420800 * 10**9

# ---------------------------------------------------------------------------
# Events, as the API sends them
# ---------------------------------------------------------------------------

_WORDS = (
    "navigating to https://example.com/checkout?step=2&ref=kernel clicked button "
    "'Submit' waiting for selector #cart > .item:nth-child(3) page loaded in 412ms "
    "status=200 retrying (attempt 2/5) screenshot saved /tmp/shot-0017.png "
    "browser session bs_7f3k2 started headless=true viewport 1280x720 "
    "extracted 24 rows from table.results cookie consent dismissed "
    'INFO DEBUG WARN step done ok true false null {"price": 19.99, "qty": 2} '
    "café naïve Grüße Ελληνικά Привет мир 日本語のテキスト 中文日志 ✓ → … “quoted” 🚀 ✅"
).split(" ")


class _Clock:
    """RFC 3339 nanosecond timestamps, with the date part cached per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, ns: int) -> str:
        second, fraction = divmod(ns, 10**9)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%09dZ" % (self._prefix, fraction)


def _messages(count: int, seed: int = 4) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(count):
        length = 20 + int(280 * rng.random() ** 1.5)
        parts: List[str] = []
        size = 0
        while size < length:
            word = rng.choice(_WORDS)
            parts.append(word)
            size += len(word) + 1
        yield " ".join(parts)[:length].rstrip() or "x" * 20


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _state(status: str, ts: str) -> bytes:
    invocation: Dict[str, object] = {
        "id": INVOCATION_ID,
        "app_name": "bench-app",
        "version": "1.0.0",
        "action_name": "run",
        "status": status,
        "started_at": "2025-06-20T12:00:00Z",
    }
    if status in ("succeeded", "failed"):
        invocation["finished_at"] = ts
        invocation["status_reason"] = "Invocation completed successfully"
    return b"data: " + _dumps({"event": "invocation_state", "timestamp": ts, "invocation": invocation}) + b"\n\n"


def _log(ts: str, message: str) -> bytes:
    return b"data: " + _dumps({"event": "log", "timestamp": ts, "message": message}) + b"\n\n"


def build_stream(count: int, same_timestamp: bool = False) -> Tuple[bytes, int, int]:
    """An SSE body of ``count`` logs between states: (body, count, total message length)."""
    clock = _Clock()
    step = 0 if same_timestamp else 1_234_567
    parts = [_state("queued", clock.format(START_NS)), _state("running", clock.format(START_NS + 1000))]
    total = 0
    ns = START_NS + 2000
    for message in _messages(count):
        parts.append(_log(clock.format(ns), message))
        total += len(message)
        ns += step
    parts.append(_state("succeeded", clock.format(ns + 1000)))
    return b"".join(parts), count, total


def chunked(body: bytes, size: int = CHUNK) -> bytes:
    """``body`` in chunked transfer encoding, ``size`` bytes a chunk, with the terminator."""
    out = []
    view = memoryview(body)
    for start in range(0, len(body), size):
        piece = view[start : start + size]
        out.append(b"%x\r\n" % len(piece))
        out.append(bytes(piece))
        out.append(b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"X-SSE-Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def _read_head(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the request")
        data += chunk
    return data


def _listen() -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


# ---------------------------------------------------------------------------
# The stream server (its own process)
# ---------------------------------------------------------------------------


def serve_stream(count: int, same_timestamp: bool) -> None:
    """Print one JSON line (port, events, message length, bytes), then serve the body to every GET."""
    body, events, total = build_stream(count, same_timestamp)
    wire = chunked(body)
    del body
    listener = _listen()
    print(json.dumps({"port": listener.getsockname()[1], "events": events, "chars": total, "bytes": len(wire)}), flush=True)

    def serve(connection: socket.socket) -> None:
        with connection:
            try:
                _read_head(connection)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection.sendall(_HEAD)
                view = memoryview(wire)
                for start in range(0, len(wire), MIB):
                    connection.sendall(view[start : start + MIB])
            except OSError:
                pass

    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection,), daemon=True).start()


class StreamServer:
    """The stream server process, stopped on exit."""

    def __init__(self, count: int, same_timestamp: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(count)] + (["--same-timestamp"] if same_timestamp else []),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        info = json.loads(self.process.stdout.readline())
        self.port: int = info["port"]
        self.events: int = info["events"]
        self.chars: int = info["chars"]
        self.bytes: int = info["bytes"]

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def __enter__(self) -> StreamServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


# ---------------------------------------------------------------------------
# Throughput clients (each in its own process)
# ---------------------------------------------------------------------------


def _rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def throughput_client(which: str, url: str, rss_at: int) -> Dict[str, Any]:
    """Consume the whole stream with one client; return counts, time and RSS."""
    if which == "ours":
        import kernel_sse

        def events() -> Iterator[Tuple[bool, str]]:
            for event in kernel_sse.follow(INVOCATION_ID, api_key=API_KEY, base_url=url, idle_timeout=120):
                if isinstance(event, kernel_sse.LogEvent):
                    yield True, event.message
                else:
                    yield False, ""

    else:
        import kernel

        client = kernel.Kernel(api_key=API_KEY, base_url=url, max_retries=0)

        def events() -> Iterator[Tuple[bool, str]]:
            for event in client.invocations.follow(INVOCATION_ID):
                if event.event == "log":
                    yield True, event.message
                else:
                    yield False, ""

    rss_start = _rss_mib()
    logs = chars = 0
    rss_mid = float("nan")
    started = time.perf_counter()
    for is_log, message in events():
        if is_log:
            logs += 1
            chars += len(message)
            if logs == rss_at:
                rss_mid = _rss_mib()
    elapsed = time.perf_counter() - started
    return {"logs": logs, "chars": chars, "seconds": elapsed, "rss_start": rss_start, "rss_mid": rss_mid, "rss_end": _rss_mib()}


def run_client(which: str, url: str, rss_at: int) -> Dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--client", which, "--url", url, "--rss-at", str(rss_at)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]}
    result: Dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------
# Latency (in one process: the stamp is perf_counter_ns of the same clock)
# ---------------------------------------------------------------------------

_STAMP = re.compile(rb'"message":"(\d+)"')


class GatedServer:
    """Serves one stream: per event, wait for the gate, stamp, write; then the terminal state."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.gate = threading.Event()
        self.gate.set()
        self.listener = _listen()
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            _read_head(connection)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            clock = _Clock()
            running = _state("running", clock.format(START_NS))
            connection.sendall(_HEAD + b"%x\r\n%s\r\n" % (len(running), running))
            ns = START_NS + 1000
            for _ in range(self.events):
                if not self.gate.wait(30):
                    return
                self.gate.clear()
                ns += 1000
                ts = clock.format(ns)
                stamp = time.perf_counter_ns()
                event = b'data: {"event":"log","timestamp":"%s","message":"%d"}\n\n' % (ts.encode(), stamp)
                connection.sendall(b"%x\r\n%s\r\n" % (len(event), event))
            self.gate.wait(30)
            done = _state("succeeded", clock.format(ns + 1000))
            connection.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            try:
                while connection.recv(65536):
                    pass
            except OSError:
                pass


def latency_floor(events: int) -> List[int]:
    """A raw socket reading the gated server: recv, find the stamp, open the gate."""
    server = GatedServer(events)
    samples: List[int] = []
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /invocations/%s/events HTTP/1.1\r\nHost: x\r\n\r\n" % INVOCATION_ID.encode())
        buffer = b""
        while len(samples) < events:
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
            end = buffer.rfind(b"\n\n")
            if end < 0:
                continue
            complete, buffer = buffer[:end], buffer[end + 2 :]
            for match in _STAMP.finditer(complete):
                samples.append(time.perf_counter_ns() - int(match.group(1)))
                server.gate.set()
    server.gate.set()
    server.thread.join(10)
    return samples


def _follow_ours(url: str) -> Iterator[Tuple[bool, str]]:
    import kernel_sse

    for event in kernel_sse.follow(INVOCATION_ID, api_key=API_KEY, base_url=url, idle_timeout=60):
        if isinstance(event, kernel_sse.LogEvent):
            yield True, event.message
        else:
            yield False, ""


def _follow_sdk(url: str) -> Iterator[Tuple[bool, str]]:
    import kernel

    client = kernel.Kernel(api_key=API_KEY, base_url=url, max_retries=0)
    try:
        for event in client.invocations.follow(INVOCATION_ID):
            if event.event == "log":
                yield True, event.message
            else:
                yield False, ""
    finally:
        client.close()


FOLLOWERS: Dict[str, Callable[[str], Iterator[Tuple[bool, str]]]] = {"ours": _follow_ours, "sdk": _follow_sdk}


def latency_mini(which: str, events: int) -> List[int]:
    server = GatedServer(events)
    samples: List[int] = []
    for is_log, message in FOLLOWERS[which](server.url):
        if is_log:
            samples.append(time.perf_counter_ns() - int(message))
            server.gate.set()
    server.thread.join(10)
    return samples


def latency_emulator(which: str, events: int) -> List[int]:
    from kernel_sse_emulator import Log, Script, State, running_emulator

    samples: List[int] = []
    with running_emulator(api_key=API_KEY, heartbeat_interval=None) as emu:
        invocation = emu.add(Script(INVOCATION_ID, [State("running")], tick=0.000001))
        sent = 0
        for is_log, message in FOLLOWERS[which](emu.url):
            if is_log:
                samples.append(time.perf_counter_ns() - int(message))
            if sent < events:
                sent += 1
                invocation.append(Log(str(time.perf_counter_ns())))
            elif is_log:
                invocation.append(State("succeeded"))
    return samples


def latency_process(which: str, server: str, events: int, warmup: int) -> List[int]:
    """Run one latency measurement in a fresh process; samples in ns, warm-up dropped."""
    done = subprocess.run(
        [sys.executable, __file__, "--latency", which, "--server", server, "--events", str(events + warmup)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1])
    samples: List[int] = json.loads(done.stdout.strip().splitlines()[-1])
    if len(samples) != events + warmup:
        raise RuntimeError("got %d samples, expected %d" % (len(samples), events + warmup))
    return samples[warmup:]


def _percentile(sorted_values: List[int], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * len(sorted_values))) - 1))
    return float(sorted_values[index])


def _summary(samples: List[int]) -> Dict[str, float]:
    values = sorted(samples)
    return {
        "p50": statistics.median(values) / 1000,
        "p90": _percentile(values, 0.90) / 1000,
        "p99": _percentile(values, 0.99) / 1000,
        "max": values[-1] / 1000,
    }


# ---------------------------------------------------------------------------
# Identical timestamps
# ---------------------------------------------------------------------------


def same_timestamp_rate(count: int, same: bool) -> Tuple[float, int]:
    with StreamServer(count, same_timestamp=same) as server:
        result = run_client("ours", server.url, rss_at=count + 1)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["logs"] / result["seconds"], result["logs"]


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 events, 300 latency samples")
    parser.add_argument("--events", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--same-timestamp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=["ours", "sdk"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--rss-at", type=int, default=100_000, help=argparse.SUPPRESS)
    parser.add_argument("--latency", choices=["ours", "sdk"], help=argparse.SUPPRESS)
    parser.add_argument("--server", choices=["mini", "emulator", "floor"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    # Worker modes (run by the main mode in fresh processes).
    if args.serve is not None:
        serve_stream(args.serve, args.same_timestamp)
        return 0
    if args.client:
        print(json.dumps(throughput_client(args.client, args.url, args.rss_at)))
        return 0
    if args.server == "floor":
        print(json.dumps(latency_floor(args.events)))
        return 0
    if args.latency:
        measure = latency_mini if args.server == "mini" else latency_emulator
        print(json.dumps(measure(args.latency, args.events)))
        return 0

    total = 100_000 if args.quick else 1_000_000
    rss_at = 10_000 if args.quick else 100_000
    samples_wanted = 300 if args.quick else 1_000
    warmup = 50
    try:
        import kernel

        sdk_version: Optional[str] = kernel.__version__
    except ImportError:
        sdk_version = None
    import kernel_sse

    print("kernel-sse %s, Python %s, %s" % (kernel_sse.__version__, platform.python_version(), platform.platform()))
    print("official SDK: %s" % ("kernel %s" % sdk_version if sdk_version else "not installed (SDK rows skipped)"))
    print("CPUs: %s" % os.cpu_count())
    failed = False

    # 1. Latency
    print()
    print("1. Latency, server write -> follow() yields, %d events after %d warm-up, loopback (us)" % (samples_wanted, warmup))
    print("   %-44s %8s %8s %8s %8s" % ("", "p50", "p90", "p99", "max"))
    rows: Dict[str, Dict[str, float]] = {}
    plan = [
        ("mini server: raw socket recv (floor)", "floor", None),
        ("mini server: kernel-sse follow()", "mini", "ours"),
        ("mini server: SDK invocations.follow", "mini", "sdk"),
        ("emulator (+ its 2 thread hops): kernel-sse", "emulator", "ours"),
        ("emulator (+ its 2 thread hops): SDK", "emulator", "sdk"),
    ]
    for label, server_kind, which in plan:
        if which == "sdk" and sdk_version is None:
            continue
        try:
            if server_kind == "floor":
                done = subprocess.run(
                    [sys.executable, __file__, "--server", "floor", "--events", str(samples_wanted + warmup)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                samples = json.loads(done.stdout.strip().splitlines()[-1])[warmup:]
            else:
                assert which is not None
                samples = latency_process(which, server_kind, samples_wanted, warmup)
        except (RuntimeError, subprocess.CalledProcessError, ValueError) as exc:
            print("   %-44s ERROR: %s" % (label, exc))
            failed = True
            continue
        rows[label] = stats = _summary(samples)
        print("   %-44s %8.0f %8.0f %8.0f %8.0f" % (label, stats["p50"], stats["p90"], stats["p99"], stats["max"]))
    ours = rows.get("mini server: kernel-sse follow()")
    sdk = rows.get("mini server: SDK invocations.follow")
    if ours:
        print("   target kernel-sse p99 <= 1 ms: %s (%.0f us)" % (_verdict(ours["p99"] <= 1000), ours["p99"]))
    if ours and sdk:
        print(
            "   target kernel-sse no worse than the SDK: %s (p50 %.0f vs %.0f us, p99 %.0f vs %.0f us)"
            % (_verdict(ours["p50"] <= sdk["p50"] and ours["p99"] <= sdk["p99"]), ours["p50"], sdk["p50"], ours["p99"], sdk["p99"])
        )

    # 2. Throughput
    print()
    print("2. Throughput: %s log events over loopback, typed events, one fresh process per client" % format(total, ","))
    with StreamServer(total) as server:
        print(
            "   stream: %s events, %.1f MB on the wire (64 KiB chunks), messages %s characters"
            % (format(server.events, ","), server.bytes / 1e6, format(server.chars, ","))
        )
        print(
            "   %-22s %12s %8s %8s %12s %12s %8s"
            % ("client", "events/s", "MB/s", "time s", "RSS@%dk MiB" % (rss_at // 1000), "RSS@end MiB", "delta")
        )
        results: Dict[str, Dict[str, Any]] = {}
        for label, which in (("kernel-sse follow()", "ours"), ("SDK invocations.follow", "sdk")):
            if which == "sdk" and sdk_version is None:
                continue
            result = run_client(which, server.url, rss_at)
            if "error" in result:
                print("   %-22s ERROR: %s" % (label, result["error"]))
                failed = True
                continue
            if result["logs"] != server.events or result["chars"] != server.chars:
                print(
                    "   %-22s WRONG: %d logs / %d chars, expected %d / %d"
                    % (label, result["logs"], result["chars"], server.events, server.chars)
                )
                failed = True
                continue
            results[which] = result
            rate = result["logs"] / result["seconds"]
            print(
                "   %-22s %12s %8.1f %8.2f %12.1f %12.1f %+8.1f"
                % (
                    label,
                    format(int(rate), ","),
                    server.bytes / 1e6 / result["seconds"],
                    result["seconds"],
                    result["rss_mid"],
                    result["rss_end"],
                    result["rss_end"] - result["rss_mid"],
                )
            )
    if "ours" in results:
        delta = results["ours"]["rss_end"] - results["ours"]["rss_mid"]
        print(
            "   target flat memory (RSS after %s within 5 MB of RSS after %s): %s (%+.1f MiB)"
            % (format(total, ","), format(rss_at, ","), _verdict(abs(delta) * MIB <= 5e6), delta)
        )
    if "ours" in results and "sdk" in results:
        ratio = results["sdk"]["seconds"] / results["ours"]["seconds"]
        print("   target >= 5x the SDK's events/s: %s (%.1fx)" % (_verdict(ratio >= 5), ratio))

    # 3. Identical timestamps
    print()
    sizes = (5_000, 10_000, 20_000) if args.quick else (10_000, 20_000, 40_000)
    print("3. Identical timestamps: N logs at one timestamp vs N at distinct ones, kernel-sse follow()")
    print("   %-10s %16s %16s %8s" % ("N", "distinct ev/s", "identical ev/s", "slowdown"))
    for size in sizes:
        try:
            distinct, got_distinct = same_timestamp_rate(size, same=False)
            identical, got_identical = same_timestamp_rate(size, same=True)
        except RuntimeError as exc:
            print("   %-10s ERROR: %s" % (format(size, ","), exc))
            failed = True
            continue
        if got_distinct != size or got_identical != size:
            print("   %-10s WRONG: %d / %d logs" % (format(size, ","), got_distinct, got_identical))
            failed = True
            continue
        print(
            "   %-10s %16s %16s %7.1fx"
            % (format(size, ","), format(int(distinct), ","), format(int(identical), ","), distinct / identical)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
