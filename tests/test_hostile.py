"""Adversarial tests of the three promises cron relies on, through the real CLI.

1. it never hangs past ``--deadline``;
2. its exit code tells the truth (no input reaches exit 70; every exit path
   saves the state file and calls ``on_finish``);
3. no log line is lost or printed twice (resume with untidy timestamps).

Plus: plugins cannot change what the exit code means, the API key never shows,
signals/files/terminals are handled.  The server is ``hostile_server`` (raw
sockets on 127.0.0.1, scripted per connection).  Timing and signal cases run
``python -m kernel_sse`` as a subprocess (cwd elsewhere, no PYTHONPATH: the
installed kernel_sse is the one under test); resume rules also run through the
Python API.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest

import kernel_sse
from hostile_server import (
    LAST_CHUNK,
    Close,
    Fault,
    HostileServer,
    Plan,
    Realistic,
    Request,
    Scripted,
    Send,
    Trickle,
    TrickleForever,
    chunk,
    error_body,
    error_event,
    head,
    invocation,
    json_response,
    log,
    raw_event,
    serve,
    sse,
    sse_head,
    stamp,
    standard_events,
    state,
    terminal,
)

pytestmark = pytest.mark.timeout(45)

KEY = "sk_test_HOSTILE_9c4e1f7a2b5d0e8f"
LINES = [f"line {index}" for index in range(1, 7)]
DEADLINE = 2.0
SLACK = 1.5  # exit at most this long after the deadline (process start included)

# ---------------------------------------------------------------- running the CLI


@dataclass
class Result:
    code: int
    out: str
    err: str
    elapsed: float
    raw_out: bytes = b""
    ended: float = 0.0  # time.monotonic() when the process had exited

    def since_first_request(self, server: HostileServer) -> float:
        """Seconds from the first request the server saw to the exit: the
        follow's own time, without the interpreter's start-up (slow on a
        loaded machine); the whole run if no request came."""
        requests = server.requests
        return self.ended - requests[0].at if requests else self.elapsed

    def jsonl(self) -> List[Dict[str, object]]:
        objs = []
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + 5000)  # legal JSON ~1000 deep is among the output; the test's stack is deep
        try:
            decoded = []
            for line in self.out.splitlines():
                try:
                    decoded.append(json.loads(line))
                except ValueError:
                    continue
        finally:
            sys.setrecursionlimit(limit)
        for obj in decoded:
            if isinstance(obj, dict):
                objs.append(obj)
        return objs

    def logs(self) -> List[str]:
        return [str(obj.get("message")) for obj in self.jsonl() if obj.get("event") == "log"]

    def describe(self) -> str:
        return f"exit {self.code} after {self.elapsed:.2f}s\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"


def cli_env(url: Optional[str], **extra: str) -> Dict[str, str]:
    """A cron-like environment: no PYTHON* (no PYTHONPATH), no KERNEL_*, no proxies."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "KERNEL_"))
        and name.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        and name not in ("TERM", "COLUMNS")
    }
    env["KERNEL_API_KEY"] = KEY
    env["KERNEL_SSE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if url is not None:
        env["KERNEL_BASE_URL"] = url
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str],
    env: Dict[str, str],
    cwd: Path,
    timeout: float = 15.0,
    limit_memory: bool = False,
) -> Result:
    """``python -m kernel_sse ARGS``; a run that does not exit within ``timeout`` fails the test."""

    def limits() -> None:
        if limit_memory:
            resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kernel_sse", *args],
            env=env,
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            preexec_fn=limits,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode("utf-8", "replace")
        err = (exc.stderr or b"").decode("utf-8", "replace")
        pytest.fail(f"HANG: no exit within {timeout:g}s\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-2000:]}")
    ended = time.monotonic()
    return Result(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
        ended - started,
        done.stdout,
        ended,
    )


class Live:
    """A CLI run in the background, its stdout read line by line as it comes."""

    def __init__(self, args: Sequence[str], env: Dict[str, str], cwd: Path) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kernel_sse", *args],
            env=env,
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: List[str] = []
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.decode("utf-8", "replace"))

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        self.err = self.process.stderr.read()

    def wait_for_logs(self, count: int, timeout: float = 10.0) -> bool:
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            if len(self.logs()) >= count:
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def logs(self) -> List[str]:
        found = []
        for line in list(self.lines):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == "log":
                found.append(str(obj.get("message")))
        return found

    def finish(self, timeout: float = 8.0) -> Result:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            pytest.fail(f"HANG: no exit within {timeout:g}s of the signal")
        self._reader.join(5)
        self._err_reader.join(5)
        return Result(code, "".join(self.lines), self.err.decode("utf-8", "replace"), time.monotonic() - self.started)


# ---------------------------------------------------------------- test plugins

MARKER_PLUGIN = '''
"""Appends each on_finish outcome (and the state file at that moment) to $HOSTILE_MARKER."""
import json
import os

import kernel_sse


@kernel_sse.hookimpl
def on_finish(outcome, context):
    path = os.environ.get("HOSTILE_MARKER")
    if not path:
        return
    saved = None
    state = os.environ.get("HOSTILE_STATE")
    if state and os.path.isfile(state):
        try:
            with open(state, encoding="utf-8") as handle:
                saved = json.load(handle)
        except Exception as exc:  # what the test wants to see
            saved = "unreadable: %r" % (exc,)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"status": outcome.status, "exit_code": outcome.exit_code, "saved": saved}) + "\\n")
'''


def plugin_file(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


@dataclass
class Setup:
    """One test's files: a state file, the marker plugin and its output."""

    folder: Path
    invocation_id: str
    state: Path = field(init=False)
    marker: Path = field(init=False)
    marker_plugin: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state = self.folder / "follow.state"
        self.marker = self.folder / "on_finish.jsonl"
        self.marker_plugin = plugin_file(self.folder, "hostile_marker", MARKER_PLUGIN)

    def env(self, url: Optional[str], **extra: str) -> Dict[str, str]:
        return cli_env(url, HOSTILE_MARKER=str(self.marker), HOSTILE_STATE=str(self.state), **extra)

    def args(self, *more: str, state: bool = True, fmt: str = "jsonl") -> List[str]:
        args = ["follow", self.invocation_id, "--format", fmt, "-p", str(self.marker_plugin)]
        if state:
            args += ["--state-file", str(self.state)]
        return args + list(more)

    def outcomes(self) -> List[Dict[str, object]]:
        if not self.marker.exists():
            return []
        return [json.loads(line) for line in self.marker.read_text(encoding="utf-8").splitlines() if line]


_COUNTER = [0]


@pytest.fixture
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> Setup:
    _COUNTER[0] += 1
    name = "".join(char for char in request.node.name if char.isalnum())[:40]
    return Setup(tmp_path, f"inv_{name}_{_COUNTER[0]}")


def assert_sane(result: Result) -> None:
    """What must never happen, whatever the case."""
    assert result.code != 70, result.describe()
    assert "Traceback" not in result.err, result.describe()
    assert KEY not in result.err and KEY not in result.out, result.describe()
    assert result.code >= 0, f"died of signal {-result.code}\n" + result.describe()


def assert_finished_once(setup: Setup, status: str, result: Result) -> Dict[str, object]:
    outcomes = setup.outcomes()
    assert len(outcomes) == 1, f"on_finish called {len(outcomes)} times: {outcomes}\n" + result.describe()
    assert outcomes[0]["status"] == status, f"{outcomes}\n" + result.describe()
    return outcomes[0]


def rerun_healthy(setup: Setup, events: Sequence[Dict[str, object]], first: Result,
                  expected: Optional[Sequence[str]] = None) -> Result:
    """A second run against a healthy server: together the two runs print every
    line exactly once, in order."""
    assert setup.state.exists(), "the state file was not saved\n" + first.describe()
    setup.marker.unlink(missing_ok=True)
    with serve(Realistic(setup.invocation_id, events)) as server:
        second = run_cli(setup.args("--deadline", "10"), setup.env(server.url), setup.folder, timeout=15)
    assert_sane(second)
    assert second.code == 0, second.describe()
    wanted = list(expected if expected is not None else LINES)
    both = first.logs() + second.logs()
    assert Counter(both) == Counter(wanted), (
        f"first run printed {first.logs()}, the rerun {second.logs()}; wanted each of {wanted} once"
    )
    assert both == wanted
    return second


def realistic(invocation_id: str, **options: object) -> Realistic:
    return Realistic(invocation_id, standard_events(invocation_id, LINES), **options)  # type: ignore[arg-type]


def forever(plan: Plan) -> Scripted:
    """The same plan for every request."""
    return Scripted([], then=plan)


# ---------------------------------------------------------------- 0. what is under test


def test_the_module_under_test_is_the_installed_one(tmp_path: Path) -> None:
    """The subprocesses run the same kernel_sse as this process (the lead's checkout)."""
    done = subprocess.run(
        [sys.executable, "-c", "import kernel_sse; print(kernel_sse.__file__)"],
        env=cli_env(None), cwd=str(tmp_path), capture_output=True, timeout=20, text=True,
    )
    assert os.path.realpath(done.stdout.strip()) == os.path.realpath(kernel_sse.__file__)
    print("kernel_sse under test:", kernel_sse.__file__)


# ---------------------------------------------------------------- 1. the deadline holds whatever blocks


def _chunked_head() -> bytes:
    return sse_head([("Transfer-Encoding", "chunked")])


def _first_blocks(invocation_id: str, count: int) -> List[bytes]:
    return [sse(event) for event in standard_events(invocation_id, LINES)[:count]]


def deadline_server(case: str, invocation_id: str) -> HostileServer:
    if case == "trickle_inside_sse_line":
        return serve(realistic(invocation_id, faults=[Fault(cut_events=4, tail="trickle")] * 50))
    if case == "silent_after_logs":
        return serve(realistic(invocation_id, faults=[Fault(cut_events=4, tail="hold")] * 50))
    if case == "trickle_inside_chunk_size_line":
        blocks = b"".join(chunk(block) for block in _first_blocks(invocation_id, 4))
        return serve(forever([Send(_chunked_head() + blocks), TrickleForever(b"f", 0.05)]))
    if case == "endless_chunked_trailer":
        blocks = b"".join(chunk(block) for block in _first_blocks(invocation_id, 4))
        return serve(forever([Send(_chunked_head() + blocks + b"0\r\n"), TrickleForever(b"X-Trailer: y\r\n", 0.02)]))
    if case == "error_body_trickles":
        error_head = head(503, [("Content-Type", "application/json"), ("Content-Length", "1000000")])
        return serve(forever([Send(error_head), TrickleForever(b'{"code":"unavailable",', 0.05)]))
    if case == "head_trickles":
        return serve(forever([Trickle(b"HTTP/1.1 200 OK\r\n", 0.02), TrickleForever(b"X-Slow: 1\r\n", 0.03)]))
    if case == "retry_after_huge":
        return serve(forever(json_response(503, error_body("unavailable", "later"), [("Retry-After", "1000000000")])))
    raise AssertionError(case)


DEADLINE_CASES = [
    "trickle_inside_sse_line",
    "silent_after_logs",
    "trickle_inside_chunk_size_line",
    "endless_chunked_trailer",
    "error_body_trickles",
    "head_trickles",
    "retry_after_huge",
]


@pytest.mark.parametrize("case", DEADLINE_CASES)
def test_deadline_holds_whatever_blocks(setup: Setup, case: str) -> None:
    with deadline_server(case, setup.invocation_id) as server:
        result = run_cli(
            setup.args("--deadline", str(DEADLINE), "--idle-timeout", "30", "--max-retries", "10"),
            setup.env(server.url), setup.folder, timeout=DEADLINE + 10,
        )
    assert_sane(result)
    assert result.code == 4, result.describe()
    took = result.since_first_request(server)
    assert took < DEADLINE + SLACK, f"exited {took - DEADLINE:.2f}s after the deadline (first request to exit)"
    assert_finished_once(setup, "deadline", result)
    rerun_healthy(setup, standard_events(setup.invocation_id, LINES), result)


def test_deadline_holds_while_a_plugin_sleeps_in_on_log(setup: Setup) -> None:
    sleepy = plugin_file(setup.folder, "sleepy", """
        import time
        import kernel_sse

        @kernel_sse.hookimpl
        def on_log(event, context):
            time.sleep(30)
    """)
    with serve(realistic(setup.invocation_id)) as server:
        result = run_cli(setup.args("--deadline", str(DEADLINE), "-p", str(sleepy)), setup.env(server.url),
                         setup.folder, timeout=DEADLINE + 5)
    assert_sane(result)
    assert result.code == 4, result.describe()
    assert result.since_first_request(server) < DEADLINE + SLACK, result.describe()
    assert_finished_once(setup, "deadline", result)
    rerun_healthy(setup, standard_events(setup.invocation_id, LINES), result)


@pytest.mark.parametrize("chunked", [False, True], ids=["plain", "chunked"])
def test_idle_limit_counts_bytes_that_never_complete_an_event(setup: Setup, chunked: bool) -> None:
    if chunked:
        plan: Plan = [Send(_chunked_head() + chunk(b"data: {\"event\":")), TrickleForever(b"1\r\nx\r\n", 0.02)]
    else:
        plan = [Send(sse_head() + b"data: {\"event\":"), TrickleForever(b"x", 0.05)]
    with serve(forever(plan)) as server:
        result = run_cli(setup.args("--idle-timeout", "1", "--max-retries", "0"), setup.env(server.url),
                         setup.folder, timeout=12)
    assert_sane(result)
    assert result.code == 4, result.describe()
    assert result.since_first_request(server) < 4.0, result.describe()
    assert_finished_once(setup, "gave_up", result)


def _follow_in_thread(follower: kernel_sse.Follower, timeout: float
                      ) -> Tuple[List[kernel_sse.KernelEvent], Optional[BaseException], float, bool]:
    """Iterate in a thread; (events, exception, elapsed, finished within timeout)."""
    events: List[kernel_sse.KernelEvent] = []
    caught: List[BaseException] = []

    def target() -> None:
        try:
            for event in follower:
                events.append(event)
        except BaseException as exc:  # noqa: B036 - reported to the test
            caught.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return events, (caught[0] if caught else None), time.monotonic() - started, not thread.is_alive()


def test_retry_after_is_capped_at_the_backoff_cap_without_a_deadline() -> None:
    plan = json_response(503, error_body("unavailable", "later"), [("Retry-After", "1000000000")])
    with serve(forever(plan)) as server:
        follower = kernel_sse.Follower("inv_cap", api_key=KEY, base_url=server.url, backoff_cap=0.5,
                                       backoff_base=0.1, max_retries=1, idle_timeout=5)
        events, error, elapsed, finished = _follow_in_thread(follower, 8.0)
        requests = len(server.events_requests)
    assert finished, "still sleeping on Retry-After: 1000000000 (not capped at backoff_cap=0.5)"
    assert isinstance(error, kernel_sse.ConnectionFailed), repr(error)
    assert elapsed < 3.0
    assert requests == 2


# ---------------------------------------------------------------- 2. no input reaches exit 70

RETRY_AFTER_VALUES = [
    "99999999999999999999",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "\u00b2",  # a digit, but not an ASCII one
    "-5",
    "",
    "garbage",
    "1e9",
    "NaN",
    "inf",
    "Mon, 32 Foo 2020 99:99:99 GMT",
    "0x10",
]


@pytest.mark.parametrize("value", RETRY_AFTER_VALUES)
def test_bad_retry_after_is_absent_or_capped_python_api(value: str) -> None:
    inv = "inv_retry_after"
    events = standard_events(inv, LINES)
    busy = json_response(503, error_body("unavailable", "later"),
                         [("Retry-After", value.encode("utf-8").decode("latin-1"))])
    with serve(Scripted([busy, busy], then=Realistic(inv, events))) as server:
        follower = kernel_sse.Follower(inv, api_key=KEY, base_url=server.url, backoff_cap=0.3,
                                       backoff_base=0.05, max_retries=3, idle_timeout=5)
        got, error, elapsed, finished = _follow_in_thread(follower, 8.0)
    assert finished, f"Retry-After {value!r}: still waiting after 8 s"
    assert error is None, f"Retry-After {value!r}: {error!r}"
    assert [event.message for event in got if isinstance(event, kernel_sse.LogEvent)] == LINES
    assert elapsed < 3.0


@pytest.mark.parametrize("value", RETRY_AFTER_VALUES)
def test_bad_retry_after_never_reaches_exit_70_cli(setup: Setup, value: str) -> None:
    events = standard_events(setup.invocation_id, LINES)
    busy = json_response(503, error_body("unavailable", "later"),
                         [("Retry-After", value.encode("utf-8").decode("latin-1"))])
    with serve(Scripted([busy], then=Realistic(setup.invocation_id, events))) as server:
        result = run_cli(setup.args("--deadline", "3", "--max-retries", "3"), setup.env(server.url),
                         setup.folder, timeout=12)
    assert_sane(result)
    assert result.code in (0, 4), result.describe()
    assert result.since_first_request(server) < 3 + SLACK
    if result.code == 0:
        assert result.logs() == LINES
    assert len(setup.outcomes()) == 1


REDIRECTS = {
    "port_99999": "http://127.0.0.1:99999/invocations/x/events",
    "broken_ipv6": "http://[::1",
    "non_ascii_path": "/invocations/\u00e9v\u00e9nement/\u00fc/events?since=\u00e0",
    "utf8_bytes_path": "/invocations/\u00e2\u0098\u0083/events",  # a snowman's UTF-8 bytes read as Latin-1
    "empty": "",
    "scheme_only": "http:",
    "control_in_path": "/invocations/a%0d%0aX-Injected:%201/events",
}


@pytest.mark.parametrize("name", sorted(REDIRECTS))
def test_hostile_redirects_end_in_a_clear_error(setup: Setup, name: str) -> None:
    plan: Plan = [Send(head(307, [("Location", REDIRECTS[name]), ("Content-Length", "0"), ("Connection", "close")])),
                  Close()]
    with serve(forever(plan)) as server:
        result = run_cli(setup.args("--deadline", "3", "--max-retries", "1"), setup.env(server.url),
                         setup.folder, timeout=12)
    assert_sane(result)
    assert result.code in (3, 4), result.describe()
    last = [line for line in result.err.splitlines() if line.strip()]
    assert last and last[-1].startswith("kernel-sse:"), result.describe()
    assert_finished_once(setup, "refused" if result.code == 3 else str(setup.outcomes()[0]["status"]), result)


def test_bad_https_proxy_port_is_a_usage_error_naming_it(setup: Setup) -> None:
    result = run_cli(setup.args("--deadline", "3", "--max-retries", "0", state=False),
                     setup.env("https://api.onkernel.invalid", HTTPS_PROXY="http://127.0.0.1:99999"),
                     setup.folder, timeout=12)
    assert_sane(result)
    assert result.code == 2, result.describe()
    assert "HTTPS_PROXY" in result.err, result.describe()


@pytest.mark.parametrize("proxy", ["http://user:pw-SECRET-77@127.0.0.1:{port}", "http://user:pw-SECRET-77@127.0.0.1:99999",
                                   "http://user:pw-SECRET-77@[::1/"])
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_proxy_password_never_appears(setup: Setup, proxy: str, verbose: bool) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    more = ["-v"] if verbose else []
    result = run_cli(setup.args("--deadline", "3", "--max-retries", "0", *more, state=False),
                     setup.env("https://api.onkernel.invalid", HTTPS_PROXY=proxy.format(port=port)),
                     setup.folder, timeout=12)
    assert "pw-SECRET-77" not in result.err + result.out, result.describe()
    assert result.code in (2, 4), result.describe()
    assert result.code != 70 and "Traceback" not in result.err or verbose


@pytest.mark.parametrize("cut", [40, 150, 260], ids=["in_first_event", "mid_stream", "later"])
def test_content_length_on_a_stream_is_a_drop_then_resume(setup: Setup, cut: int) -> None:
    server_script = realistic(setup.invocation_id, content_length=(0, cut))
    with serve(server_script) as server:
        result = run_cli(setup.args("--deadline", "8", "--idle-timeout", "3"), setup.env(server.url),
                         setup.folder, timeout=15)
        requests = len(server.events_requests)
    assert_sane(result)
    assert result.code == 0, result.describe()
    assert result.logs() == LINES, result.describe()
    assert requests >= 2


def _interpreters() -> List[str]:
    found = [sys.executable]
    for candidate in ("/root/.pyenv/versions/3.8.18/bin/python3.8", "/root/.pyenv/versions/3.13.0/bin/python3.13"):
        if os.path.exists(candidate):
            found.append(candidate)
    return found


@pytest.mark.parametrize("python", _interpreters(), ids=lambda path: os.path.basename(path))
def test_content_length_on_a_stream_on_every_python(setup: Setup, python: str) -> None:
    """The file form (``python kernel_sse.py``) on each interpreter at hand."""
    with serve(realistic(setup.invocation_id, content_length=(0, 150))) as server:
        done = subprocess.run(
            [python, os.path.abspath(kernel_sse.__file__), "follow", setup.invocation_id, "--format", "jsonl",
             "--deadline", "8", "--idle-timeout", "3"],
            env=cli_env(server.url), cwd=str(setup.folder), capture_output=True, timeout=20,
        )
    result = Result(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"), 0.0)
    assert_sane(result)
    assert result.code == 0, result.describe()
    assert result.logs() == LINES


BAD_OPTIONS = [
    ("--idle-timeout", "nan"),
    ("--deadline", "nan"),
    ("--deadline", "inf"),
    ("--deadline", "-1"),
    ("--deadline", "0"),
    ("--idle-timeout", "0"),
    ("--idle-timeout", "-inf"),
    ("--max-retries", "-1"),
]


@pytest.mark.parametrize("option,value", BAD_OPTIONS)
def test_bad_option_values_are_usage_errors_naming_option_and_value(setup: Setup, option: str, value: str) -> None:
    with serve(realistic(setup.invocation_id)) as server:
        result = run_cli(setup.args(f"{option}={value}", state=False), setup.env(server.url), setup.folder,
                         timeout=12)
        requests = len(server.requests)
    assert_sane(result)
    assert result.code == 2, result.describe()
    named = option in result.err or option.lstrip("-").replace("-", "_") in result.err
    assert named and value in result.err, result.describe()
    assert requests == 0


def _drop_then(invocation_id: str, then: Plan) -> Scripted:
    events = standard_events(invocation_id, LINES)
    first: Plan = [Send(sse_head() + b"".join(sse(event) for event in events[:4])), Close()]
    return Scripted([first], then=then)


MID_FOLLOW: Dict[str, Tuple[Callable[[str], Scripted], int, str]] = {
    "refused_404": (lambda inv: _drop_then(inv, json_response(404, error_body("not_found", "gone"))), 3, "refused"),
    "refused_401": (lambda inv: _drop_then(inv, json_response(401, error_body("unauthorized", "no"))), 3, "refused"),
    "gave_up_503": (lambda inv: _drop_then(inv, json_response(503, error_body("unavailable", "later"))), 4, "gave_up"),
    "gave_up_reset": (lambda inv: _drop_then(inv, [Send(b"HTTP/1.1 2")]), 4, "gave_up"),
    "idle": (lambda inv: _drop_then(inv, [Send(sse_head()), TrickleForever(b":", 5.0)]), 4, "gave_up"),
}


@pytest.mark.parametrize("name", sorted(MID_FOLLOW))
def test_every_mid_follow_failure_saves_state_and_calls_on_finish(setup: Setup, name: str) -> None:
    make, code, status = MID_FOLLOW[name]
    with serve(make(setup.invocation_id)) as server:
        result = run_cli(setup.args("--idle-timeout", "1", "--max-retries", "1", "--deadline", "8"),
                         setup.env(server.url), setup.folder, timeout=15)
    assert_sane(result)
    assert result.code == code, result.describe()
    assert result.logs() == LINES[:3]
    outcome = assert_finished_once(setup, status, result)
    assert outcome["saved"] is not None, "on_finish ran before the state file was saved"
    rerun_healthy(setup, standard_events(setup.invocation_id, LINES), result)


# ---------------------------------------------------------------- 3. resume loses nothing


def _api_logs(events: Sequence[kernel_sse.KernelEvent]) -> List[str]:
    return [event.message for event in events if isinstance(event, kernel_sse.LogEvent)]


def _api_follow(server: HostileServer, invocation_id: str, timeout: float = 10.0, **options: object
                ) -> Tuple[List[kernel_sse.KernelEvent], Optional[BaseException], bool]:
    settings: Dict[str, object] = dict(idle_timeout=3.0, deadline=8.0, max_retries=10, backoff_base=0.02,
                                       backoff_cap=0.1)
    settings.update(options)
    follower = kernel_sse.Follower(invocation_id, api_key=KEY, base_url=server.url, **settings)  # type: ignore[arg-type]
    events, error, _, finished = _follow_in_thread(follower, timeout)
    return events, error, finished


def test_state_on_connect_stamped_now_loses_no_line_python_api() -> None:
    """The classic loss: 6 lines, a drop after line 3, a state stamped now on each connect."""
    inv = "inv_state_now"
    with serve(realistic(inv, state_on_connect=True, faults=[Fault(cut_events=5)])) as server:
        events, error, finished = _api_follow(server, inv)
    assert finished and error is None, repr(error)
    assert _api_logs(events) == LINES
    final = [event for event in events if isinstance(event, kernel_sse.InvocationStateEvent)][-1]
    assert final.invocation.status == "succeeded"


def test_state_on_connect_stamped_now_loses_no_line_cli(setup: Setup) -> None:
    faults = [Fault(cut_events=5), Fault(cut_events=3)]
    with serve(realistic(setup.invocation_id, state_on_connect=True, faults=faults)) as server:
        result = run_cli(setup.args("--deadline", "8", "--idle-timeout", "2"), setup.env(server.url),
                         setup.folder, timeout=15)
    assert_sane(result)
    assert result.code == 0, result.describe()
    assert result.logs() == LINES, result.describe()
    assert_finished_once(setup, "succeeded", result)


JITTER_OFFSETS = [1.0, 2.9, 1.6, 4.8, 3.1, 6.9, 5.2, 8.0, 6.5, 10.0]
JITTER_LINES = [f"jitter {index}" for index in range(len(JITTER_OFFSETS))]


@pytest.mark.parametrize("state_now", [False, True], ids=["plain", "state_on_connect"])
@pytest.mark.parametrize("cuts", [(3, 4, 5), (5, 2, 6, 3), (8,), (2, 2, 2, 2, 2, 2)], ids=str)
def test_jittered_timestamps_delivered_exactly_once(state_now: bool, cuts: Tuple[int, ...]) -> None:
    inv = "inv_jitter"
    events = standard_events(inv, JITTER_LINES, offsets=JITTER_OFFSETS)
    faults = [Fault(cut_events=cut) for cut in cuts]
    with serve(Realistic(inv, events, faults=faults, state_on_connect=state_now)) as server:
        got, error, finished = _api_follow(server, inv, max_retries=20)
        sinces = [request.since for request in server.events_requests]
    assert finished and error is None, f"{error!r}; since values {sinces}"
    logs = _api_logs(got)
    assert Counter(logs) == Counter(JITTER_LINES), f"got {logs}; since values {sinces}"
    assert logs == JITTER_LINES


def _late_case(inv: str) -> Tuple[List[Dict[str, object]], Tuple[int, int, Dict[str, object]], List[str]]:
    """Lines 1..6 one second apart; a late line appears from the second request
    on, stored after line 5, stamped 4.6 s before line 5."""
    events = standard_events(inv, LINES)
    late = log(stamp(0.4), "late line")
    expected = LINES[:5] + ["late line"] + LINES[5:]
    return events, (1, 6, late), expected


@pytest.mark.parametrize("state_now", [False, True], ids=["plain", "state_on_connect"])
def test_late_event_after_a_reconnect_is_delivered_once(state_now: bool) -> None:
    inv = "inv_late"
    events, late, expected = _late_case(inv)
    faults = [Fault(cut_events=6 + (1 if state_now else 0))]
    with serve(Realistic(inv, events, faults=faults, late=[late], state_on_connect=state_now)) as server:
        got, error, finished = _api_follow(server, inv)
        sinces = [request.since for request in server.events_requests]
    assert finished and error is None, repr(error)
    logs = _api_logs(got)
    assert Counter(logs) == Counter(expected), f"got {logs}; since values {sinces}"


@pytest.mark.parametrize("stop", ["deadline", "sigterm"])
def test_late_event_across_two_cli_runs(setup: Setup, stop: str) -> None:
    events, late, expected = _late_case(setup.invocation_id)
    first_server = Realistic(setup.invocation_id, events, faults=[Fault(cut_events=6, tail="hold")] * 20)
    with serve(first_server) as server:
        if stop == "deadline":
            first = run_cli(setup.args("--deadline", str(DEADLINE), "--idle-timeout", "30"), setup.env(server.url),
                            setup.folder, timeout=DEADLINE + 10)
            assert first.code == 4, first.describe()
        else:
            live = Live(setup.args("--idle-timeout", "30"), setup.env(server.url), setup.folder)
            assert live.wait_for_logs(5), "the first run printed too little"
            time.sleep(0.2)
            live.process.send_signal(signal.SIGTERM)
            first = live.finish()
            assert first.code == 143, first.describe()
    assert_sane(first)
    assert first.logs() == LINES[:5]
    setup.marker.unlink(missing_ok=True)
    # The second run meets the late line (it is stored now) and the rest.
    with serve(Realistic(setup.invocation_id, events, late=[(0, 6, late[2])])) as server:
        second = run_cli(setup.args("--deadline", "10"), setup.env(server.url), setup.folder, timeout=15)
    assert_sane(second)
    assert second.code == 0, second.describe()
    both = first.logs() + second.logs()
    assert Counter(both) == Counter(expected), f"first {first.logs()}, second {second.logs()}"


BAD_EVENTS: Dict[str, Tuple[Dict[str, object], str]] = {
    "too_large": (log(stamp(2.5), "B" * 2000), "client_event_too_large"),
    "malformed": (raw_event(stamp(2.5), '{"event":"log","timestamp":"' + stamp(2.5) + '","message":'), "client_malformed_event"),
    "unknown": ({"event": "browser_ready", "timestamp": stamp(2.5), "session": "s1"}, "unknown"),
    "unknown_untimed": ({"event": "browser_ready", "session": "s2"}, "unknown"),
}


@pytest.mark.parametrize("name", sorted(BAD_EVENTS))
def test_a_replayed_bad_event_then_drop_is_reported_once_and_gives_up(name: str) -> None:
    inv = f"inv_bad_{name}"
    bad, kind = BAD_EVENTS[name]
    events = standard_events(inv, LINES)
    events.insert(3, bad)  # after line 2 (2.0 s)
    responder = _CutAfter(inv, events, bad)  # every stream drops right after the bad event
    with serve(responder) as server:
        got, error, finished = _api_follow(server, inv, max_retries=2, max_event_bytes=1024, idle_timeout=2.0,
                                           deadline=None, timeout=12.0)
        requests = len(server.events_requests)
    assert finished, f"still looping after 12 s and {requests} requests"
    assert isinstance(error, kernel_sse.ConnectionFailed), repr(error)
    assert requests <= 4, f"{requests} requests: the replayed bad event counted as progress"
    reports: List[kernel_sse.KernelEvent] = [
        event for event in got
        if (isinstance(event, kernel_sse.UnknownEvent) if kind == "unknown"
            else isinstance(event, kernel_sse.ErrorEvent) and event.error.code == kind)
    ]
    assert len(reports) == 1, f"{len(reports)} reports of the bad event over {requests} requests"
    assert Counter(_api_logs(got)) == Counter(LINES[:2])


class _CutAfter(Realistic):
    """A realistic server whose every stream drops right after one given event."""

    def __init__(self, invocation_id: str, events: Sequence[Dict[str, object]], bad: Dict[str, object]) -> None:
        super().__init__(invocation_id, events)
        self.bad = bad

    def __call__(self, request: Request, index: int) -> Plan:
        if not request.is_events:
            return super().__call__(request, index)
        plan = super().__call__(request, index)
        # rebuild: the head, then everything up to and including the bad event, then a drop
        body = b"".join(step.data for step in plan if isinstance(step, Send))
        marker = sse(str(self.bad["__raw__"])) if "__raw__" in self.bad else sse(self.bad)
        end = body.find(marker)
        if end < 0:
            return [Send(body), Close()]
        return [Send(body[: end + len(marker)]), Close()]


@pytest.mark.parametrize("status,code", [("succeeded", 0), ("failed", 1)])
def test_since_after_the_end_ends_with_the_status(setup: Setup, status: str, code: int) -> None:
    events = standard_events(setup.invocation_id, LINES, status=status)
    with serve(Realistic(setup.invocation_id, events, after_end="heartbeats", heartbeat_interval=0.25)) as server:
        result = run_cli(setup.args("--since", stamp(300), "--idle-timeout", "2", "--deadline", "10", state=False),
                         setup.env(server.url), setup.folder, timeout=15)
        status_requests = len(server.status_requests)
    assert_sane(result)
    assert result.code == code, result.describe()
    assert result.since_first_request(server) < 6.0, result.describe()
    assert status_requests >= 1


# ---------------------------------------------------------------- 4. plugins cannot change the exit code's meaning

PLUGINS = {
    "sys_exit_0": "raise SystemExit(0)",
    "cancelled": "import asyncio; raise asyncio.CancelledError()",
    "runtime": "raise RuntimeError('plugin boom')",
    "generator_exit": "raise GeneratorExit()",
}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_a_raising_on_log_is_exit_5_and_reported_once(setup: Setup, name: str) -> None:
    bad = plugin_file(setup.folder, f"bad_{name}", f"""
        import kernel_sse

        @kernel_sse.hookimpl
        def on_log(event, context):
            {PLUGINS[name]}
    """)
    with serve(realistic(setup.invocation_id)) as server:
        result = run_cli(setup.args("--deadline", "8", "-p", str(bad)), setup.env(server.url), setup.folder)
    assert_sane(result)
    assert result.code == 5, result.describe()
    assert result.logs() == LINES
    mentions = [line for line in result.err.splitlines() if f"bad_{name}" in line]
    assert len(mentions) == 1, result.describe()
    assert_finished_once(setup, "succeeded", result)


def test_keyboard_interrupt_from_a_hook_is_ctrl_c(setup: Setup) -> None:
    bad = plugin_file(setup.folder, "interrupts", """
        import kernel_sse

        @kernel_sse.hookimpl
        def on_log(event, context):
            if event.message == "line 3":
                raise KeyboardInterrupt()
    """)
    with serve(realistic(setup.invocation_id)) as server:
        result = run_cli(setup.args("--deadline", "8", "-p", str(bad)), setup.env(server.url), setup.folder)
    assert_sane(result)
    assert result.code == 130, result.describe()
    outcome = assert_finished_once(setup, "interrupted", result)
    assert outcome["saved"] is not None
    rerun_healthy(setup, standard_events(setup.invocation_id, LINES), result)


@pytest.mark.parametrize("hook", ["on_log", "on_terminal", "on_state"])
def test_failed_invocation_plus_plugin_error_is_exit_1(setup: Setup, hook: str) -> None:
    bad = plugin_file(setup.folder, "boom", f"""
        import kernel_sse

        @kernel_sse.hookimpl
        def {hook}(context):
            raise RuntimeError("boom")
    """)
    events = standard_events(setup.invocation_id, LINES, status="failed")
    with serve(Realistic(setup.invocation_id, events)) as server:
        result = run_cli(setup.args("--deadline", "8", "-p", str(bad)), setup.env(server.url), setup.folder)
    assert_sane(result)
    assert result.code == 1, result.describe()


# ---------------------------------------------------------------- 5. the key never appears


@pytest.mark.parametrize("status", [400, 401, 403, 404])
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_refusal_bodies_quoting_the_key_are_redacted(setup: Setup, status: int, verbose: bool) -> None:
    body = {"code": "unauthorized", "message": f"API key {KEY} is not valid",
            "details": [{"code": "key", "message": f"Bearer {KEY}"}]}
    with serve(forever(json_response(status, body))) as server:
        result = run_cli(setup.args("--deadline", "5", *(["-v"] if verbose else [])), setup.env(server.url),
                         setup.folder, timeout=12)
    assert KEY not in result.err and KEY not in result.out, result.describe()
    assert result.code == 3, result.describe()
    if not verbose:
        assert "Traceback" not in result.err


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_server_error_bodies_and_error_events_quoting_the_key_stay_off_stderr(setup: Setup, verbose: bool) -> None:
    events = standard_events(setup.invocation_id, LINES)
    events.insert(2, error_event(stamp(1.5), "auth_echo", f"the key {KEY} was used"))
    echo = json_response(500, {"code": "internal", "message": f"failed for key {KEY}"})
    with serve(Scripted([echo], then=Realistic(setup.invocation_id, events))) as server:
        result = run_cli(setup.args("--deadline", "8", *(["-v"] if verbose else []), fmt="text"),
                         setup.env(server.url), setup.folder, timeout=15)
    assert KEY not in result.err, result.describe()
    assert result.code == 0, result.describe()


def test_key_in_a_partial_echo_of_the_authorization_header(setup: Setup) -> None:
    body = {"code": "unauthorized", "message": f"bad header: 'Authorization: Bearer {KEY}'"}
    plan: Plan = [Send(head(401, [("Content-Type", "application/json"), ("WWW-Authenticate", f'Bearer error="{KEY}"'),
                            ("Content-Length", str(len(json.dumps(body))))]) + json.dumps(body).encode()), Close()]
    with serve(forever(plan)) as server:
        result = run_cli(setup.args("-v"), setup.env(server.url), setup.folder, timeout=12)
    assert KEY not in result.err and KEY not in result.out, result.describe()
    assert result.code == 3


# ---------------------------------------------------------------- 6. signals, files, terminals

SIGNALS = [(signal.SIGHUP, 129), (signal.SIGTERM, 143), (signal.SIGINT, 130)]


@pytest.mark.parametrize("signum,code", SIGNALS, ids=lambda item: getattr(item, "name", str(item)))
def test_signal_mid_follow_saves_state_calls_on_finish_and_rerun_repeats_nothing(
    setup: Setup, signum: int, code: int
) -> None:
    with serve(realistic(setup.invocation_id, faults=[Fault(cut_events=4, tail="hold")] * 20)) as server:
        live = Live(setup.args("--idle-timeout", "30"), setup.env(server.url), setup.folder)
        assert live.wait_for_logs(3), "the run printed too little"
        time.sleep(0.2)
        live.process.send_signal(signum)
        result = live.finish()
    assert result.code == code, result.describe()
    assert_sane(result)
    outcome = assert_finished_once(setup, "interrupted", result)
    assert outcome["saved"] is not None, "on_finish ran before the state was saved"
    rerun_healthy(setup, standard_events(setup.invocation_id, LINES), result)


@pytest.mark.parametrize("where", ["lock", "state"])
def test_dangling_symlink_is_not_followed(setup: Setup, where: str) -> None:
    target = setup.folder / "elsewhere" / "target"
    (setup.folder / "elsewhere").mkdir()
    link = Path(str(setup.state) + ".lock") if where == "lock" else setup.state
    os.symlink(str(target), str(link))
    with serve(realistic(setup.invocation_id)) as server:
        result = run_cli(setup.args("--deadline", "8"), setup.env(server.url), setup.folder, timeout=12)
    assert not target.exists(), "the symlink was followed: its target was created"
    assert_sane(result)
    assert result.code == 2, result.describe()
    assert str(link.name) in result.err or "symlink" in result.err.lower() or "link" in result.err.lower(), result.describe()


def test_symlinks_at_likely_temp_names_are_not_followed(setup: Setup) -> None:
    (setup.folder / "elsewhere").mkdir()
    targets = []
    for index, name in enumerate([setup.state.name + ".tmp", "." + setup.state.name + ".tmp", setup.state.name + ".new",
                                  setup.state.name + "~", "." + setup.state.name + ".swp"]):
        target = setup.folder / "elsewhere" / f"t{index}"
        os.symlink(str(target), str(setup.folder / name))
        targets.append(target)
    with serve(realistic(setup.invocation_id)) as server:
        result = run_cli(setup.args("--deadline", "8"), setup.env(server.url), setup.folder, timeout=12)
    assert_sane(result)
    assert not any(target.exists() for target in targets)
    assert result.code in (0, 2), result.describe()


@pytest.mark.parametrize("kind", ["fifo", "null_device", "zero_device", "directory"])
def test_state_path_that_is_not_a_regular_file_is_a_quick_usage_error(setup: Setup, kind: str) -> None:
    path = setup.state
    if kind == "fifo":
        os.mkfifo(str(path))
    elif kind == "directory":
        path.mkdir()
    else:
        minor = 3 if kind == "null_device" else 5
        try:
            os.mknod(str(path), stat.S_IFCHR | 0o600, os.makedev(1, minor))
        except (PermissionError, OSError) as exc:
            pytest.skip(f"cannot make a device node here: {exc}")
    with serve(realistic(setup.invocation_id)) as server:
        result = run_cli(setup.args("--deadline", "8"), setup.env(server.url), setup.folder, timeout=8,
                         limit_memory=True)
        requests = len(server.requests)
    assert_sane(result)
    assert result.code == 2, result.describe()
    assert result.elapsed < 5.0  # no request is made: the whole run, start-up included
    assert requests == 0
    assert str(path) in result.err or path.name in result.err, result.describe()


OSC52 = "\x1b]52;c;SGVsbG8=\x07"
CLEAR = "\x1b[2J"
HOSTILE_TEXT = f"copy {OSC52} clear {CLEAR} bell \x07 cr \r back \x08 del \x7f csi \x9b31m tab\tend"


def _terminal_events(inv: str) -> List[Dict[str, object]]:
    events = standard_events(inv, ["plain", HOSTILE_TEXT])
    events.insert(2, error_event(stamp(1.2), "esc\x1b[31m", f"error {CLEAR}"))
    final = dict(events[-1])
    inv_obj = dict(final["invocation"])  # type: ignore[call-overload]
    inv_obj["status_reason"] = f"reason {OSC52}"
    inv_obj["output"] = json.dumps({"note": f"out {CLEAR}"})
    final["invocation"] = inv_obj
    events[-1] = final
    return events


def test_text_output_escapes_control_characters(setup: Setup) -> None:
    with serve(Realistic(setup.invocation_id, _terminal_events(setup.invocation_id))) as server:
        result = run_cli(setup.args("--deadline", "8", fmt="text"), setup.env(server.url), setup.folder)
    assert_sane(result)
    assert result.code == 0, result.describe()
    raw = result.raw_out
    for bad in (b"\x1b", b"\x07", b"\x08", b"\x7f", b"\r", "\x9b".encode()):
        assert bad not in raw, f"{bad!r} reached stdout raw: {raw!r}"
    assert "\\x1b" in result.out, result.out
    assert "tab\tend" in result.out
    assert "plain" in result.out


def test_jsonl_keeps_control_characters_exactly(setup: Setup) -> None:
    with serve(Realistic(setup.invocation_id, _terminal_events(setup.invocation_id))) as server:
        result = run_cli(setup.args("--deadline", "8"), setup.env(server.url), setup.folder)
    assert_sane(result)
    assert result.code == 0, result.describe()
    assert b"\x1b" not in result.raw_out
    assert "\\u001b" in result.out
    assert HOSTILE_TEXT in result.logs()


def test_diagnostics_escape_control_characters(setup: Setup) -> None:
    body = {"code": "not_found", "message": f"no such invocation {OSC52}{CLEAR}"}
    with serve(forever(json_response(404, body))) as server:
        result = run_cli(setup.args(), setup.env(server.url), setup.folder, timeout=12)
    assert result.code == 3, result.describe()
    assert "\x1b" not in result.err and "\x07" not in result.err, repr(result.err)


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_lone_surrogate_is_printed_not_lost(setup: Setup, fmt: str) -> None:
    events = standard_events(setup.invocation_id, ["before", "bad \ud800 zqxmark", "after"])
    with serve(Realistic(setup.invocation_id, events)) as server:
        result = run_cli(setup.args("--deadline", "8", fmt=fmt), setup.env(server.url), setup.folder)
    assert_sane(result)
    assert result.code == 0, result.describe()
    lines = [line for line in result.out.splitlines() if "zqxmark" in line]
    assert len(lines) == 1, result.describe()
    assert "bad " in lines[0]
    if fmt == "jsonl":
        assert "\\ud800" in lines[0]
    assert "before" in result.out and "after" in result.out


EXTREME_TIMES = ["0001-01-01T00:00:00+01:00", "0001-01-01T00:30:00.999999999+00:59", "9999-12-31T23:59:59-01:00",
                 "9999-12-31T23:59:59.999999999Z", "2025-06-20T12:00:60Z"]


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_extreme_timestamps_are_printed_not_fatal(setup: Setup, fmt: str) -> None:
    events = standard_events(setup.invocation_id, [])
    body = [log(moment, f"extreme {index}") for index, moment in enumerate(EXTREME_TIMES)]
    events = events[:1] + body + events[1:]
    with serve(Realistic(setup.invocation_id, events)) as server:
        result = run_cli(setup.args("--deadline", "8", fmt=fmt), setup.env(server.url), setup.folder)
    assert_sane(result)
    assert result.code == 0, result.describe()
    for index in range(len(EXTREME_TIMES)):
        assert f"extreme {index}" in result.out, result.describe()


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_deeply_nested_unknown_event_is_printed(setup: Setup, fmt: str) -> None:
    events = standard_events(setup.invocation_id, ["first", "second"])
    deep = '{"event":"deep_thing","timestamp":"' + stamp(1.5) + '","x":' + "[" * 1000 + "]" * 1000 + "}"
    events.insert(2, raw_event(stamp(1.5), deep))
    with serve(Realistic(setup.invocation_id, events)) as server:
        result = run_cli(setup.args("--deadline", "8", fmt=fmt), setup.env(server.url), setup.folder)
    assert_sane(result)
    assert result.code == 0, result.describe()
    if fmt == "jsonl":  # the object the API sent, as sent
        deep_lines = [obj for obj in result.jsonl() if obj.get("event") == "deep_thing"]
        assert len(deep_lines) == 1, result.describe()
    assert "first" in result.out and "second" in result.out


def test_help_epilog_lists_every_exit_code(tmp_path: Path) -> None:
    result = run_cli(["--help"], cli_env(None), tmp_path)
    assert result.code == 0
    text = " ".join(result.out.split())
    for code in ("0", "1", "2", "3", "4", "5", "70", "75", "129", "130", "141", "143"):
        assert code in text, f"exit {code} missing from --help"
    readme = Path(kernel_sse.__file__).with_name("README.md")
    if readme.exists():
        content = readme.read_text(encoding="utf-8")
        for code in ("129", "141", "75", "70"):
            assert code in content, f"exit {code} missing from the README"
