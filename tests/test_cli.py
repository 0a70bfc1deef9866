"""Tests of the command line (the exit table and options in README.md) through the real program.

Most tests run ``kernel-sse`` as a subprocess, as cron would: a cron-like environment
(no terminal, no ``TERM``, no ``KERNEL_*`` unless a test sets one), stdout and stderr
on pipes, against an emulator started in the test process on 127.0.0.1. The
exit-code table also runs in-process through ``kernel_sse.main([...])`` (same
assertions), which is faster and gives coverage of the command-line section.

Every run is checked for what must never happen whatever the test: the API key in
any output, an ANSI escape sequence under pipes, a traceback without ``-v``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pytest

import kernel_sse
from kernel_sse_emulator import (
    EmulatedInvocation,
    Emulator,
    Error,
    Fault,
    Gate,
    Log,
    Pause,
    Script,
    State,
    Unknown,
    demo_script,
)

MODULE_FILE = os.path.abspath(kernel_sse.__file__)
"""The kernel_sse.py under test (the checkout's, or the installed copy under tox)."""
MODULE_DIR = os.path.dirname(MODULE_FILE)
START = "2025-06-20T12:00:00Z"
WRONG_KEY = "wrong-key-SECRET-5f0c2b7e9d"
OLDEST_PYTHON = "/root/.pyenv/versions/3.8.18/bin/python3.8"
NEWEST_PYTHON = "/root/.pyenv/versions/3.13.0/bin/python3.13"
ANSI = re.compile(r"\x1b[\[\]()#;?0-9A-Za-z]")

HAS_PLUGGY = importlib.util.find_spec("pluggy") is not None
needs_pluggy = pytest.mark.skipif(not HAS_PLUGGY, reason="plugins need pluggy")


def _console_script() -> List[str]:
    """The installed ``kernel-sse`` script, or what pip's console-script wrapper runs."""
    found = shutil.which("kernel-sse", path=os.path.dirname(sys.executable))
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from kernel_sse import main; sys.exit(main())"]


FORMS: Dict[str, List[str]] = {
    "kernel-sse": _console_script(),
    "python -m kernel_sse": [sys.executable, "-m", "kernel_sse"],
    "python kernel_sse.py": [sys.executable, MODULE_FILE],
}
DEFAULT_FORM = FORMS["kernel-sse"]  # what cron and systemd run


# ---------------------------------------------------------------- plugins the tests load with -p

MARKER_PLUGIN = '''
"""Records on_finish, and what the state file held at that moment, in $TEST_MARKER."""
import json
import os

import kernel_sse


@kernel_sse.hookimpl
def on_finish(outcome, context):
    saved = None
    state = os.environ.get("TEST_STATE_FILE")
    if state and os.path.exists(state):
        with open(state, encoding="utf-8") as handle:
            saved = json.load(handle)
    with open(os.environ["TEST_MARKER"], "w", encoding="utf-8") as handle:
        json.dump({"status": outcome.status, "exit_code": outcome.exit_code, "saved": saved}, handle)
'''

FAILING_PLUGIN = '''
import kernel_sse


@kernel_sse.hookimpl
def on_log(event, context):
    raise RuntimeError("boom from a plugin")
'''

TYPES_PLUGIN = '''
import sys

import kernel_sse


@kernel_sse.hookimpl
def on_log(event, context):
    seen = isinstance(event, kernel_sse.LogEvent), kernel_sse.format_text(event) is not None
    print("plugin sees kernel_sse events: %s %s" % seen, file=sys.stderr)
'''


# ---------------------------------------------------------------- running the CLI


@dataclass
class Run:
    """One finished run of the command line."""

    code: int
    out: str
    err: str
    seconds: float

    @property
    def err_lines(self) -> List[str]:
        return self.err.splitlines()

    @property
    def out_lines(self) -> List[str]:
        return self.out.splitlines()


def cron_env(**extra: Optional[str]) -> Dict[str, str]:
    """What a cron job gets: a bare environment, no terminal; ``None`` removes a name."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LOGNAME": os.environ.get("LOGNAME", "root"),
        "SHELL": "/bin/sh",
        # The module under test first, then whatever the test run itself was given.
        "PYTHONPATH": os.pathsep.join([MODULE_DIR, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]),
        # Only what the tests load: no entry-point plugin of the surrounding environment.
        "KERNEL_SSE_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _decode(data: bytes) -> str:
    return data.decode("utf-8")  # strict: the output must be valid UTF-8, also under cron


def check_clean(run: Run, secrets: Sequence[str], traceback_ok: bool = False) -> None:
    """What holds for every run: no key, no colour under pipes, no traceback."""
    for secret in secrets:
        assert secret not in run.out and secret not in run.err, "the API key was printed"
    assert not ANSI.search(run.out) and not ANSI.search(run.err), "ANSI escape under pipes"
    if not traceback_ok:
        assert "Traceback" not in run.err, run.err


def check_short_error(run: Run) -> None:
    """An error is one or two clear lines on stderr, prefixed kernel-sse."""
    assert 1 <= len(run.err_lines) <= 2, run.err
    assert run.err_lines[-1].startswith("kernel-sse"), run.err


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ as ``env`` says for the names kernel_sse reads, restored afterwards."""
    names = {name for name in os.environ if name.startswith(("KERNEL_", "NO_COLOR"))} | set(env)
    names.discard("PATH")
    names.discard("HOME")
    names.discard("PYTHONPATH")
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in names:
            if name in env:
                os.environ[name] = env[name]
            else:
                os.environ.pop(name, None)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Cli:
    """Runs the command line against the test's emulator."""

    def __init__(self, emulator: Emulator, tmp_path: Path) -> None:
        self.emulator = emulator
        self.tmp_path = tmp_path
        assert emulator.api_key is not None
        self.key = emulator.api_key
        self.secrets = [self.key, WRONG_KEY]

    def env(self, key: Optional[str] = "", **extra: Optional[str]) -> Dict[str, str]:
        """A cron environment with the emulator's key (``key=None``: no key at all)."""
        return cron_env(KERNEL_API_KEY=self.key if key == "" else key, **extra)

    def follow_args(self, invocation_id: str, *more: str) -> List[str]:
        return ["follow", invocation_id, "--base-url", self.emulator.url, *more]

    def run(
        self,
        args: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        *,
        inprocess: bool = False,
        command: Optional[Sequence[str]] = None,
        cwd: Optional[str] = None,
        traceback_ok: bool = False,
        timeout: float = 30.0,
    ) -> Run:
        env = dict(self.env() if env is None else env)
        started = time.monotonic()
        if inprocess:
            out, err = io.StringIO(), io.StringIO()
            with _environ(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = kernel_sse.main(list(args))
            run = Run(code, out.getvalue(), err.getvalue(), time.monotonic() - started)
        else:
            result = subprocess.run(
                [*(command or DEFAULT_FORM), *args],
                env=env,
                cwd=cwd or str(self.tmp_path),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )
            run = Run(result.returncode, _decode(result.stdout), _decode(result.stderr), time.monotonic() - started)
        check_clean(run, self.secrets, traceback_ok)
        return run

    def follow(
        self,
        invocation_id: str,
        *more: str,
        env: Optional[Mapping[str, str]] = None,
        inprocess: bool = False,
        command: Optional[Sequence[str]] = None,
        traceback_ok: bool = False,
    ) -> Run:
        return self.run(
            self.follow_args(invocation_id, *more), env, inprocess=inprocess, command=command, traceback_ok=traceback_ok
        )

    def start(self, args: Sequence[str], env: Optional[Mapping[str, str]] = None) -> Background:
        return Background([*DEFAULT_FORM, *args], dict(self.env() if env is None else env), str(self.tmp_path))

    def plugin(self, name: str, source: str) -> str:
        path = self.tmp_path / f"{name}.py"
        path.write_text(source, encoding="utf-8")
        return str(path)


class Background:
    """A CLI process running while the test acts, its output read as it comes."""

    def __init__(self, argv: List[str], env: Dict[str, str], cwd: str) -> None:
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[bytes], into: bytearray) -> None:
        while True:
            chunk = stream.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                return
            with self._lock:
                into += chunk

    def stdout_so_far(self) -> str:
        with self._lock:
            return self._out.decode("utf-8", "replace")

    def wait_for_output(self, text: str, timeout: float = 10.0) -> None:
        ends = time.monotonic() + timeout
        while text not in self.stdout_so_far():
            if self.proc.poll() is not None or time.monotonic() > ends:
                self.kill()
                raise AssertionError(f"no {text!r} in the output: {self.stdout_so_far()!r}")
            time.sleep(0.01)

    def wait(self, timeout: float = 20.0) -> Run:
        started = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        for reader in self._readers:
            reader.join(5)
        return Run(code, _decode(bytes(self._out)), _decode(bytes(self._err)), time.monotonic() - started)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def cli(emulator: Emulator, tmp_path: Path) -> Cli:
    return Cli(emulator, tmp_path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def ordinary(
    emulator: Emulator, invocation_id: str = "inv", status: str = "succeeded", start: Optional[str] = START
) -> EmulatedInvocation:
    """An invocation that has finished: queued, running, three logs, the terminal state."""
    return emulator.add(
        Script(
            invocation_id,
            [
                State("queued"),
                State("running"),
                Log("first line"),
                Log("second line \u2013 caf\u00e9 \u2713"),
                Log("third line"),
                State(status, output={"rows": 3} if status == "succeeded" else None,
                      status_reason=None if status == "succeeded" else "the action raised ValueError"),
            ],
            start=start,
        )
    )


def objects(text: str) -> List[object]:
    return [json.loads(line) for line in text.splitlines()]


# ---------------------------------------------------------------- exit codes

MODES = [pytest.param(False, id="subprocess"), pytest.param(True, id="in-process")]


def table(cases: Sequence[Tuple[str, object]], in_subprocess: Sequence[str]) -> List[object]:
    """Every case in-process (fast), and the named ones through a subprocess as well."""
    params: List[object] = []
    for case_id, value in cases:
        if case_id in in_subprocess:
            params.append(pytest.param(value, False, id=f"{case_id}-subprocess"))
        params.append(pytest.param(value, True, id=f"{case_id}-in-process"))
    return params


BAD_ARGUMENTS: List[Tuple[str, object]] = [
    ("no-command", []),
    ("unknown-command", ["frobnicate"]),
    ("no-invocation-id", ["follow"]),
    ("bad-format", ["follow", "inv", "--format", "xml"]),
    ("negative-retries", ["follow", "inv", "--max-retries", "-1"]),
    ("zero-idle-timeout", ["follow", "inv", "--idle-timeout", "0"]),
    ("negative-deadline", ["follow", "inv", "--deadline", "-5"]),
    ("deadline-not-a-number", ["follow", "inv", "--deadline", "soon"]),
    ("key-is-never-an-argument", ["follow", "inv", "--api-key", "k"]),
    ("unknown-option", ["follow", "inv", "--bogus"]),
]

CORRUPT_STATE_FILES: List[Tuple[str, object]] = [
    ("not-json", b"not json at all"),
    ("empty", b""),
    ("a-list", b"[1, 2, 3]"),
    ("not-ours", b'{"kind": "something-else", "invocation_id": "inv"}'),
    ("bad-since", b'{"kind": "kernel-sse-state", "version": 1, "invocation_id": "inv", '
                  b'"checkpoint": {"since": 12, "seen": []}, "finished_status": null}'),
    ("bad-status", b'{"kind": "kernel-sse-state", "version": 1, "invocation_id": "inv", '
                   b'"checkpoint": {"since": null, "seen": []}, "finished_status": "exploded"}'),
    ("bad-checkpoint", b'{"kind": "kernel-sse-state", "version": 1, "invocation_id": "inv", '
                       b'"checkpoint": "yesterday", "finished_status": null}'),
]


@pytest.mark.parametrize("inprocess", MODES)
def test_exit_0_succeeded(cli: Cli, inprocess: bool) -> None:
    ordinary(cli.emulator)
    run = cli.follow("inv", inprocess=inprocess)
    assert run.code == 0
    for message in ("first line", "second line \u2013 caf\u00e9 \u2713", "third line"):
        assert run.out.count(message) == 1
    assert "succeeded" in run.out and '"rows": 3' in run.out
    assert run.err == ""


@pytest.mark.parametrize("inprocess", MODES)
def test_exit_1_failed(cli: Cli, inprocess: bool) -> None:
    ordinary(cli.emulator, status="failed")
    run = cli.follow("inv", inprocess=inprocess)
    assert run.code == 1
    assert "failed" in run.out and "the action raised ValueError" in run.out
    assert "third line" in run.out


@pytest.mark.parametrize("args, inprocess", table(BAD_ARGUMENTS, ["no-command", "bad-format", "unknown-option"]))
def test_exit_2_bad_arguments(cli: Cli, args: List[str], inprocess: bool) -> None:
    ordinary(cli.emulator)
    run = cli.run(args, inprocess=inprocess)
    assert run.code == 2
    assert run.out == ""
    assert run.err.strip(), "a usage error says what is wrong"
    assert cli.emulator.requests == []


@pytest.mark.parametrize("inprocess", MODES)
def test_exit_2_no_api_key(cli: Cli, inprocess: bool) -> None:
    ordinary(cli.emulator)
    run = cli.follow("inv", env=cli.env(key=None), inprocess=inprocess)
    assert run.code == 2
    check_short_error(run)
    assert "KERNEL_API_KEY" in run.err
    assert cli.emulator.requests == []


@pytest.mark.parametrize(
    "since, inprocess",
    table([("word", "yesterday"), ("spaces", "5 minutes"), ("bad-date", "2025-13-45T99:00:00Z"),
           ("negative", "-5m"), ("empty", "")], ["word"]),
)
def test_exit_2_bad_since(cli: Cli, since: str, inprocess: bool) -> None:
    ordinary(cli.emulator)
    run = cli.follow("inv", f"--since={since}", inprocess=inprocess)
    assert run.code == 2
    check_short_error(run)
    assert "--since" in run.err
    assert cli.emulator.requests == []


@pytest.mark.parametrize("since", ["5m", "1h30m", "2025-06-20T12:00:00.000000002Z", "2025-06-20T14:00:00+02:00"])
def test_good_since_is_sent(cli: Cli, since: str) -> None:
    ordinary(cli.emulator, start=None)  # now: every event is after any of these
    run = cli.follow("inv", "--since", since)
    assert run.code == 0
    assert cli.emulator.requests[0].query["since"] == [since]


@pytest.mark.parametrize(
    "what, inprocess", table([("missing", "missing"), ("directory", "directory"), ("empty", "empty")], ["missing"])
)
def test_exit_2_unreadable_api_key_file(cli: Cli, what: str, inprocess: bool) -> None:
    ordinary(cli.emulator)
    path = cli.tmp_path / "key"
    if what == "directory":
        path.mkdir()
    elif what == "empty":
        path.write_text("\n")
    run = cli.follow("inv", "--api-key-file", str(path), env=cli.env(key=None), inprocess=inprocess)
    assert run.code == 2
    check_short_error(run)
    assert str(path) in run.err
    assert cli.emulator.requests == []


def test_api_key_file_is_read(cli: Cli) -> None:
    ordinary(cli.emulator)
    path = cli.tmp_path / "key"
    path.write_text(cli.key + "\n")
    path.chmod(0o600)
    run = cli.follow("inv", "--api-key-file", str(path), env=cli.env(key=None))
    assert run.code == 0
    assert cli.emulator.requests[0].header("Authorization") == f"Bearer {cli.key}"
    # The file wins over the environment.
    run = cli.follow("inv", "--api-key-file", str(path), env=cli.env(key=WRONG_KEY))
    assert run.code == 0


@pytest.mark.parametrize("inprocess", MODES)
@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_exit_3_refused(cli: Cli, status: int, inprocess: bool) -> None:
    invocation_id = "inv"
    env = None
    if status in (400, 403):
        cli.emulator.add(Script("inv", [Log("never")], fault=Fault(status=status)))
    elif status == 401:
        ordinary(cli.emulator)
        env = cli.env(key=WRONG_KEY)
    else:
        ordinary(cli.emulator)
        invocation_id = "no-such-invocation"
    run = cli.follow(invocation_id, "--max-retries", "5", env=env, inprocess=inprocess)
    assert run.code == 3
    check_short_error(run)
    assert str(status) in run.err
    if status == 401:
        assert "key was refused" in run.err
    if status == 404:
        assert "no such invocation" in run.err
    assert len(cli.emulator.requests) == 1, "retrying cannot help: one request only"
    assert "never" not in run.out


def test_exit_4_retries_exhausted_on_a_closed_port(cli: Cli) -> None:
    port = closed_port()
    run = cli.run(["follow", "inv", "--base-url", f"http://127.0.0.1:{port}", "--max-retries", "1"])
    assert run.code == 4
    check_short_error(run)
    assert "gave up after 2 failed attempts" in run.err
    assert run.out == ""


def test_exit_4_max_retries_means_n_plus_one_requests(cli: Cli) -> None:
    cli.emulator.add(Script("inv", [State("succeeded")], fault=Fault(status=503, retry_after="0")))
    run = cli.follow("inv", "--max-retries", "2")
    assert run.code == 4
    check_short_error(run)
    assert len(cli.emulator.requests) == 3
    assert "503" in run.err


def test_exit_4_idle_limit_hit_too_often(cli: Cli) -> None:
    cli.emulator.heartbeat_interval = None  # a stalled stream: not even heartbeats
    gate = Gate()
    invocation = cli.emulator.add(Script("inv", [gate]))
    try:
        run = cli.follow("inv", "--idle-timeout", "0.2", "--max-retries", "1")
    finally:
        gate.release()
    assert run.code == 4
    check_short_error(run)
    assert "no event for 0.2s" in run.err
    assert invocation.attempts == 2


@pytest.mark.parametrize("inprocess", MODES)
def test_exit_4_deadline(cli: Cli, inprocess: bool) -> None:
    gate = Gate()
    cli.emulator.add(Script("inv", [State("running"), Log("started"), gate, State("succeeded")]))
    try:
        run = cli.follow("inv", "--deadline", "0.5", inprocess=inprocess)
    finally:
        gate.release()
    assert run.code == 4
    check_short_error(run)
    assert "deadline" in run.err
    assert "started" in run.out
    assert 0.5 <= run.seconds < 5


@needs_pluggy
@pytest.mark.parametrize("inprocess", MODES)
def test_exit_5_plugin_raised(cli: Cli, inprocess: bool) -> None:
    ordinary(cli.emulator)
    plugin = cli.plugin("raiser", FAILING_PLUGIN)
    run = cli.follow("inv", "-p", plugin, inprocess=inprocess)
    assert run.code == 5
    # The follow completed: every line and the result are there.
    assert "first line" in run.out and "third line" in run.out and "succeeded" in run.out
    # Reported once (it raised on each of the three logs), naming plugin and hook.
    assert len(run.err_lines) == 1, run.err
    assert "raiser" in run.err and "on_log" in run.err and "boom from a plugin" in run.err


@needs_pluggy
def test_plugin_error_does_not_hide_a_failed_invocation(cli: Cli) -> None:
    ordinary(cli.emulator, status="failed")
    run = cli.follow("inv", "-p", cli.plugin("raiser", FAILING_PLUGIN))
    assert run.code == 1


@needs_pluggy
@pytest.mark.parametrize("inprocess", MODES)
def test_exit_5_strict_plugins(cli: Cli, inprocess: bool) -> None:
    ordinary(cli.emulator)
    plugin = cli.plugin("raiser", FAILING_PLUGIN)
    run = cli.follow("inv", "-p", plugin, "--strict-plugins", inprocess=inprocess)
    assert run.code == 5
    check_short_error(run)
    assert "raiser" in run.err and "on_log" in run.err
    assert "second line" not in run.out, "the first plugin error stops the follow"
    assert "succeeded" not in run.out


def test_exit_75_state_file_locked_by_another_run(cli: Cli) -> None:
    gate = Gate()
    invocation = cli.emulator.add(Script("inv", [State("running"), Log("working"), gate, Log("done"), State("succeeded")]))
    state = str(cli.tmp_path / "inv.state")
    first = cli.start(cli.follow_args("inv", "--state-file", state))
    try:
        first.wait_for_output("working")
        second = cli.follow("inv", "--state-file", state)
        assert second.code == 75
        check_short_error(second)
        assert "another run" in second.err and "try again later" in second.err
        assert second.out == ""
        assert invocation.attempts == 1, "the locked-out run made no request"
        assert second.seconds < 5
    finally:
        gate.release()
    done = first.wait()
    assert done.code == 0
    assert "done" in done.out
    # The lock went with the first run: the next run gets it, and has nothing new to print.
    third = cli.follow("inv", "--state-file", state)
    assert third.code == 10 and third.out == ""  # remembered, not reported again


@needs_pluggy
@pytest.mark.parametrize(
    "signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_exit_130_143_interrupted(cli: Cli, signum: int, code: int) -> None:
    gate = Gate()
    invocation = cli.emulator.add(
        Script("inv", [State("running"), Log("working"), gate, Log("resumed"), State("succeeded")])
    )
    state = str(cli.tmp_path / "inv.state")
    marker = cli.tmp_path / "marker.json"
    plugin = cli.plugin("marker", MARKER_PLUGIN)
    env = cli.env(TEST_MARKER=str(marker), TEST_STATE_FILE=state)
    proc = cli.start(cli.follow_args("inv", "--state-file", state, "-p", plugin), env=env)
    try:
        proc.wait_for_output("working")
        time.sleep(0.2)  # into the wait for the next event
        sent = time.monotonic()
        proc.proc.send_signal(signum)
        run = proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert run.code == code, "exits with the status, does not die of the signal"
    assert took < 1.0
    check_clean(run, cli.secrets)
    check_short_error(run)
    assert ("SIGINT" if signum == signal.SIGINT else "SIGTERM") in run.err
    # The plugins were told, and the state was saved before they were.
    recorded = json.loads(marker.read_text())
    assert recorded["status"] == "interrupted" and recorded["exit_code"] == code
    working = invocation.emitted()[1]
    assert recorded["saved"]["checkpoint"]["since"] == working.timestamp
    # The next run resumes after "working".
    gate.release()
    again = cli.follow("inv", "--state-file", state, env=env)
    assert again.code == 0
    assert "working" not in again.out and "resumed" in again.out


# ---------------------------------------------------------------- three ways to run it


def test_three_entry_points_behave_the_same(cli: Cli) -> None:
    ordinary(cli.emulator)
    env = cli.env(COLUMNS="100")
    results: Dict[str, List[Tuple[int, str]]] = {}
    for name, command in FORMS.items():
        runs = [
            cli.run(["--version"], env, command=command),
            cli.run(["follow", "--help"], env, command=command),
            cli.run(cli.follow_args("inv"), env, command=command),
        ]
        results[name] = [(run.code, run.out) for run in runs]
    first = results["kernel-sse"]
    for name, outcome in results.items():
        assert outcome == first, f"{name} differs from kernel-sse"
    assert [code for code, _out in first] == [0] * 3
    assert first[0][1] == f"kernel-sse {kernel_sse.__version__}\n"
    assert "third line" in first[2][1]
    follow_help = " ".join(first[1][1].split())
    for option in ("INVOCATION_ID", "--base-url", "--api-key-file", "--since", "--format", "--idle-timeout",
                   "--deadline", "--max-retries", "--state-file", "-p PLUGIN", "--strict-plugins", "-q", "-v"):
        assert option in follow_help, option
    for default in ("$KERNEL_BASE_URL or https://api.onkernel.com", "$KERNEL_API_KEY", "(default: text)",
                    "(default: 90)", "(default: none)", "(default: 10)"):
        assert default in follow_help, default


@needs_pluggy
@pytest.mark.parametrize("form", ["python -m kernel_sse", "python kernel_sse.py"])
def test_plugins_see_kernel_sse_types_whatever_the_entry_point(cli: Cli, form: str) -> None:
    """Run as __main__, the module must still be the one plugins get from ``import kernel_sse``
    (else isinstance fails in every plugin, and the console plugin prints no log line)."""
    ordinary(cli.emulator)
    run = cli.follow("inv", "-p", cli.plugin("typecheck", TYPES_PLUGIN), command=FORMS[form])
    assert run.code == 0
    assert "plugin sees kernel_sse events: True True" in run.err


@needs_pluggy
def test_plugins_see_kernel_sse_types_under_the_console_script(cli: Cli) -> None:
    ordinary(cli.emulator)
    run = cli.follow("inv", "-p", cli.plugin("typecheck", TYPES_PLUGIN), command=FORMS["kernel-sse"])
    assert run.code == 0
    assert run.err.count("plugin sees kernel_sse events: True True") == 3


def test_version_and_help_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert kernel_sse.main(["--version"]) == 0
    assert capsys.readouterr().out == f"kernel-sse {kernel_sse.__version__}\n"
    assert kernel_sse.main(["--help"]) == 0
    top = " ".join(capsys.readouterr().out.split())
    for subcommand in ("follow", "demo", "plugins"):
        assert subcommand in top
    assert kernel_sse.main(["follow", "--help"]) == 0
    assert "--state-file" in capsys.readouterr().out


# ---------------------------------------------------------------- --state-file


def test_cron_loop_prints_each_line_exactly_once(cli: Cli) -> None:
    """A cron job re-runs with the same state file; each run ends at its deadline (exit 4)
    while the invocation goes on between runs, until the terminal state is delivered."""
    first_gate, second_gate = Gate(), Gate()
    invocation = cli.emulator.add(
        Script(
            "inv",
            [
                State("running", at=0.0),
                Log("line one", at=1.0),
                Log("twin line", at=2.0),
                first_gate,
                Log("twin line", at=2.0),  # the same line again, same timestamp, in the next run
                Log("line three", at=3.0),
                second_gate,
                Log("line four", at=4.0),
                State("failed", at=5.0, status_reason="the action raised"),
            ],
            start=START,
        )
    )
    state = cli.tmp_path / "inv.state"
    args = ("--state-file", str(state), "--deadline", "0.5")
    try:
        assert first_gate.reached.wait(5)
        runs = [cli.follow("inv", *args)]
        runs.append(cli.follow("inv", *args))  # nothing new since
        first_gate.release()
        assert second_gate.reached.wait(5)
        runs.append(cli.follow("inv", *args))
        runs.append(cli.follow("inv", *args))
    finally:
        first_gate.release()
        second_gate.release()
    assert invocation.wait_idle()
    runs.append(cli.follow("inv", *args))
    requests = len(cli.emulator.requests)
    runs.append(cli.follow("inv", *args))
    runs.append(cli.follow("inv", *args))

    assert [run.code for run in runs] == [4, 4, 4, 4, 1, 11, 11]  # then only remembered: no second alert
    texts = [run.out for run in runs]
    assert "line one" in texts[0] and texts[0].count("twin line") == 1
    assert texts[1] == ""
    assert texts[2].count("twin line") == 1 and "line three" in texts[2] and "line one" not in texts[2]
    assert texts[3] == ""
    assert "line four" in texts[4] and "the action raised" in texts[4] and "line three" not in texts[4]
    assert texts[5] == texts[6] == "", "after the terminal state, later runs print nothing"
    assert len(cli.emulator.requests) == requests, "nor ask the API"
    everything = "".join(texts)
    assert everything.count("twin line") == 2
    for message in ("line one", "line three", "line four"):
        assert everything.count(message) == 1, message
    for run in runs[:4]:
        check_short_error(run)
        assert "deadline" in run.err
    assert runs[4].err == ""
    for run in runs[5:]:
        assert "already failed" in run.err and run.err.count("\n") == 1
    # Resumes asked for what came since the last delivered event.
    resumed = [r.query.get("since") for r in cli.emulator.requests if r.path.split("?")[0].endswith("/events")]
    assert resumed[0] is None and all(since is not None for since in resumed[1:])


def test_state_file_after_success(cli: Cli) -> None:
    ordinary(cli.emulator)
    state = str(cli.tmp_path / "inv.state")
    first = cli.follow("inv", "--state-file", state)
    assert first.code == 0 and "third line" in first.out
    again = cli.follow("inv", "--state-file", state)
    # Remembered: its own exit status, and one line saying what, when and from where.
    assert again.code == 10 and again.out == ""
    assert again.err.count("\n") == 1 and "already succeeded" in again.err and state in again.err
    assert re.search(r"recorded at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", again.err)
    assert len(cli.emulator.requests) == 1


def test_state_file_mode_no_temp_files_no_key(cli: Cli) -> None:
    ordinary(cli.emulator)
    folder = cli.tmp_path / "state"
    folder.mkdir()
    state = folder / "inv.state"
    run = cli.follow("inv", "--state-file", str(state))
    assert run.code == 0
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    leftovers = [p.name for p in folder.iterdir() if p.name not in ("inv.state", "inv.state.lock")]
    assert leftovers == [], "no temp file left behind"
    text = state.read_text()
    assert cli.key not in text
    saved = json.loads(text)
    assert saved["invocation_id"] == "inv"
    assert saved["finished_status"] == "succeeded"


def test_state_file_is_replaced_atomically(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, to watch the writes: each save fsyncs a complete 0600 temp file in the
    same folder, then renames it over the state file."""
    gate = Gate()
    cli.emulator.add(Script("inv", [State("running"), Log("before"), gate, Log("after"), State("succeeded")]))
    state = cli.tmp_path / "inv.state"
    events: List[Tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else ""))
        real_fsync(fd)

    def replace(src: "str | os.PathLike[str]", dst: "str | os.PathLike[str]") -> None:
        src, dst = os.fspath(src), os.fspath(dst)
        if os.path.abspath(dst) == str(state):
            assert os.path.dirname(os.path.abspath(src)) == str(cli.tmp_path)
            assert stat.S_IMODE(os.stat(src).st_mode) == 0o600
            with open(src, encoding="utf-8") as handle:
                json.load(handle)  # complete before it takes the name
            events.append(("replace", os.path.abspath(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    try:
        run = cli.follow("inv", "--state-file", str(state), "--deadline", "0.3", inprocess=True)
    finally:
        gate.release()
    assert run.code == 4
    inode = state.stat().st_ino
    run = cli.follow("inv", "--state-file", str(state), inprocess=True)
    assert run.code == 0 and "after" in run.out and "before" not in run.out
    assert state.stat().st_ino != inode, "renamed over, not rewritten in place"
    replaced = [path for kind, path in events if kind == "replace"]
    assert len(replaced) >= 2
    for path in replaced:
        index = events.index(("replace", path))
        if os.path.exists("/proc/self/fd"):
            assert ("fsync", path) in events[:index], "fsynced before the rename"
    assert sorted(p.name for p in cli.tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("content, inprocess", table(CORRUPT_STATE_FILES, ["not-json", "bad-since"]))
def test_corrupt_state_file_is_an_error_and_kept(cli: Cli, content: bytes, inprocess: bool) -> None:
    ordinary(cli.emulator)
    state = cli.tmp_path / "inv.state"
    state.write_bytes(content)
    before = state.stat()
    run = cli.follow("inv", "--state-file", str(state), inprocess=inprocess)
    assert run.code == 2
    check_short_error(run)
    assert str(state) in run.err
    assert state.read_bytes() == content
    assert state.stat().st_mtime_ns == before.st_mtime_ns
    assert cli.emulator.requests == []
    assert run.out == ""


@pytest.mark.parametrize("inprocess", MODES)
def test_binary_state_file_is_an_error_and_kept(cli: Cli, inprocess: bool) -> None:
    test_corrupt_state_file_is_an_error_and_kept(cli, b"\xff\xfe\x00garbage", inprocess)


@pytest.mark.parametrize("inprocess", MODES)
def test_state_file_of_another_invocation(cli: Cli, inprocess: bool) -> None:
    ordinary(cli.emulator, "inv_a")
    ordinary(cli.emulator, "inv_b")
    state = cli.tmp_path / "shared.state"
    assert cli.follow("inv_a", "--state-file", str(state)).code == 0
    content = state.read_bytes()
    run = cli.follow("inv_b", "--state-file", str(state), inprocess=inprocess)
    assert run.code == 2
    check_short_error(run)
    assert "inv_a" in run.err and "inv_b" in run.err
    assert state.read_bytes() == content
    assert len(cli.emulator.requests) == 1


@pytest.mark.parametrize("inprocess", MODES)
def test_state_file_in_a_missing_folder_is_a_usage_error(cli: Cli, inprocess: bool) -> None:
    ordinary(cli.emulator)
    state = cli.tmp_path / "no" / "such" / "folder" / "inv.state"
    run = cli.follow("inv", "--state-file", str(state), inprocess=inprocess)
    assert run.code == 2
    check_short_error(run)
    assert str(state) in run.err
    assert cli.emulator.requests == []


def test_state_file_that_cannot_be_written_is_a_clear_error(cli: Cli) -> None:
    gate = Gate()
    cli.emulator.add(Script("inv", [State("running"), Log("working"), gate, Log("done"), State("succeeded")]))
    folder = cli.tmp_path / "state"
    folder.mkdir()
    proc = cli.start(cli.follow_args("inv", "--state-file", str(folder / "inv.state")))
    try:
        proc.wait_for_output("working")
        shutil.rmtree(folder)  # the disk goes away under the run
    finally:
        gate.release()
    run = proc.wait()
    check_clean(run, cli.secrets)
    assert run.code == 2
    check_short_error(run)
    assert "state file" in run.err


# ---------------------------------------------------------------- output


def test_no_colour_under_pipes_even_with_a_colour_terminal_name(cli: Cli) -> None:
    cli.emulator.add(
        Script("inv", [State("running"), Log("hello"), Error("oops", "not fatal"), State("failed")],
               attempts=[Fault(drop_after=2)])
    )
    env = cli.env(TERM="xterm-256color", COLORTERM="truecolor", CLICOLOR="1")
    run = cli.follow("inv", "-v", env=env)  # check_clean: no ANSI in stdout or stderr
    assert run.code == 1
    assert "hello" in run.out and "oops" in run.out
    assert "\r" not in run.out, "no live status line under cron"


def test_quiet_prints_only_the_outcome(cli: Cli) -> None:
    ordinary(cli.emulator)
    run = cli.follow("inv", "-q")
    assert run.code == 0
    for message in ("first line", "second line", "third line", "[running]", "[queued]"):
        assert message not in run.out
    assert "invocation inv" in run.out and "succeeded" in run.out
    assert run.err == ""


def test_quiet_failed_still_says_so(cli: Cli) -> None:
    ordinary(cli.emulator, status="failed")
    run = cli.follow("inv", "-q")
    assert run.code == 1
    assert "third line" not in run.out
    assert "failed" in run.out and "the action raised ValueError" in run.out


def test_verbose_adds_connection_diagnostics(cli: Cli) -> None:
    invocation = cli.emulator.add(
        Script("inv", [State("running"), Log("a"), Log("b"), Log("c"), State("succeeded")],
               attempts=[Fault(drop_after=3), Fault(), Fault(drop_after=3)])  # for each of the two runs
    )
    quiet = cli.follow("inv", "--format", "jsonl")
    assert quiet.code == 0 and quiet.err == ""
    loud = cli.follow("inv", "--format", "jsonl", "-v")
    assert loud.code == 0
    assert "broke" in loud.err or "ended the stream" in loud.err, loud.err
    assert "attempt 2" in loud.err
    # Diagnostics never go to stdout: it holds exactly the events, each once despite the drop.
    expected = [event.json() for event in invocation.emitted()]
    assert [o for o in objects(quiet.out) if not _heartbeat(o)] == expected
    assert [o for o in objects(loud.out) if not _heartbeat(o)] == expected


def _heartbeat(obj: object) -> bool:
    return isinstance(obj, dict) and obj.get("event") == "sse_heartbeat"


def release_once_connected(emulator: Emulator, gate: Gate, invocation_id: str, quiet: float) -> None:
    """Open ``gate`` ``quiet`` seconds after the first request for the invocation (in a thread)."""

    def wait_then_open() -> None:
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up and not any(r.invocation_id == invocation_id for r in emulator.requests):
            time.sleep(0.02)
        time.sleep(quiet)
        gate.release()

    threading.Thread(target=wait_then_open, daemon=True).start()


def test_jsonl_is_exactly_what_the_api_sent(cli: Cli) -> None:
    cli.emulator.heartbeat_interval = 0.1
    gate = Gate()
    release_once_connected(cli.emulator, gate, "inv", 0.45)
    invocation = cli.emulator.add(
        Script(
            "inv",
            [
                State("queued"),
                State("running", status_reason="picked up"),
                Log("h\u00e9llo \u2713 \"quoted\" \\ back\\slash \U0001f600"),
                Log("same", at="2025-06-20T12:00:01.000000001Z"),
                Log("same", at="2025-06-20T12:00:01.000000001Z"),
                Log("offset stamp", at="2025-06-20T14:00:02.5+02:00"),
                Error("selector_timeout", "Timed out", details=[{"code": "selector", "message": ".price"}],
                      inner_error={"code": "inner", "message": "deeper"}),
                Unknown("browser_ready", {"session": "s1", "ratio": 1.5, "tags": ["a", None]}),
                gate,  # a quiet spell while the client is connected, however late it starts
                Log("after a pause"),
                State("succeeded", output={"n": 1.0, "list": [1, 2.5, None], "\u00fc": "x"}),
            ],
            start=START,
        )
    )
    run = cli.follow("inv", "--format", "jsonl")
    assert run.code == 0
    assert run.err == ""
    assert run.out.endswith("\n")
    got = objects(run.out)
    events = [o for o in got if not _heartbeat(o)]
    beats = [o for o in got if _heartbeat(o)]
    assert events == [event.json() for event in invocation.emitted()]
    # Timestamps keep their strings (nanoseconds, offsets) exactly as sent.
    assert '"timestamp":"2025-06-20T14:00:02.5+02:00"' in run.out.replace(" ", "")
    # Heartbeats are there, each exactly as the emulator writes them.
    record = [r for r in cli.emulator.requests if r.invocation_id == "inv"][0]
    assert len(beats) == record.heartbeats_written >= 1
    for beat in beats:
        assert isinstance(beat, dict) and set(beat) == {"event", "timestamp"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", beat["timestamp"])
    # The terminal state is the last line; no result text in JSON lines.
    last = got[-1]
    assert isinstance(last, dict) and last["event"] == "invocation_state"
    assert last["invocation"]["status"] == "succeeded"


@pytest.mark.parametrize("output_format", ["text", "jsonl"])
def test_nothing_after_the_terminal_state(cli: Cli, output_format: str) -> None:
    cli.emulator.heartbeat_interval = 0.05
    cli.emulator.add(
        Script(
            "inv",
            [State("running"), Log("before"), State("succeeded"), Log("after the end"), Pause(0.3),
             Log("much later")],
            fault=Fault(keep_open=True),
        )
    )
    run = cli.follow("inv", "--format", output_format)
    assert run.code == 0
    assert "after the end" not in run.out and "much later" not in run.out
    if output_format == "jsonl":
        last = objects(run.out)[-1]
        assert isinstance(last, dict) and last["event"] == "invocation_state"
    assert run.seconds < 5


def test_reader_of_stdout_goes_away(cli: Cli) -> None:
    """``kernel-sse follow ID | head -n 1``: once the pipe's reader is gone, stop quietly
    (like ``yes | head``), save the state, and exit 141; no plugin error, no traceback."""
    gate = Gate()
    invocation = cli.emulator.add(
        Script("inv", [State("running"), Log("working"), gate, *[Log(f"more {n}") for n in range(50)],
                       State("succeeded")])
    )
    state = cli.tmp_path / "inv.state"
    proc = subprocess.Popen(
        [*DEFAULT_FORM, *cli.follow_args("inv", "--state-file", str(state))],
        env=cli.env(), cwd=str(cli.tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        seen = b""
        ends = time.monotonic() + 10
        while b"working" not in seen and time.monotonic() < ends:
            seen += os.read(proc.stdout.fileno(), 4096)
        proc.stdout.close()  # the reader goes away, as head does
        gate.release()
        code = proc.wait(10)
        err = _decode(proc.stderr.read())
    finally:
        gate.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 141
    assert "Traceback" not in err and "plugin" not in err, err
    saved = json.loads(state.read_text())
    assert saved["checkpoint"]["since"] is not None
    assert invocation.attempts == 1


def test_errors_are_short_and_never_tracebacks(cli: Cli) -> None:
    ordinary(cli.emulator)
    cases = [
        # (missing key, refused key, no such invocation, bad --since: in the exit-code tests)
        cli.run(["follow", "inv", "--base-url", "ftp://example.com"]),
        cli.run(["follow", "inv", "--base-url", "http://192.0.2.1"]),  # the key never goes out over plain HTTP
        cli.run(["follow", "inv", "--base-url", f"http://127.0.0.1:{closed_port()}", "--max-retries", "0"]),
        cli.run(["follow", "inv\r\nX-Evil: 1", "--base-url", cli.emulator.url]),
    ]
    for run in cases:
        assert run.code in (2, 3, 4), run
        check_short_error(run)
        assert run.out == ""


def test_verbose_usage_error_shows_the_traceback(cli: Cli) -> None:
    run = cli.follow("inv", "-v", env=cli.env(key=None), traceback_ok=True)
    assert run.code == 2
    assert "Traceback" in run.err
    assert run.err_lines[-1].startswith("kernel-sse") and "KERNEL_API_KEY" in run.err_lines[-1]


def test_api_key_never_appears(cli: Cli) -> None:
    """The key, right or wrong, from the environment or a file, in no output whatever
    happens (check_clean does the looking on every run)."""
    ordinary(cli.emulator)
    key_file = cli.tmp_path / "key"
    key_file.write_text(WRONG_KEY)
    runs = [
        cli.follow("inv", "-v"),
        cli.follow("inv", "-v", "--format", "jsonl"),
        # -v shows tracebacks for errors (still without the key).
        cli.follow("inv", "-v", env=cli.env(key=WRONG_KEY), traceback_ok=True),
        cli.follow("inv", "-v", "--api-key-file", str(key_file), env=cli.env(key=None), traceback_ok=True),
        cli.follow("inv", "-v", env=cli.env(key=cli.key + "\x7fbad"), traceback_ok=True),
        cli.run(["follow", "inv", "-v", "--base-url", f"http://127.0.0.1:{closed_port()}", "--max-retries", "0"],
                traceback_ok=True),
    ]
    assert [run.code for run in runs] == [0, 0, 3, 3, 2, 4]


def test_environment_variables(cli: Cli) -> None:
    ordinary(cli.emulator)
    env = cli.env(KERNEL_BASE_URL=cli.emulator.url, KERNEL_PROJECT_ID="proj_123")
    run = cli.run(["follow", "inv"], env)
    assert run.code == 0 and "third line" in run.out
    assert cli.emulator.requests[0].header("X-Kernel-Project-Id") == "proj_123"
    # --base-url wins over KERNEL_BASE_URL.
    env = cli.env(KERNEL_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    assert cli.follow("inv", env=env).code == 0


def test_utf8_output_under_a_bare_c_locale(cli: Cli) -> None:
    ordinary(cli.emulator)
    run = cli.follow("inv", env=cli.env(LC_ALL="C", LANG=None))
    assert run.code == 0
    assert "caf\u00e9 \u2713" in run.out


# ---------------------------------------------------------------- constrained boxes


@pytest.mark.parametrize("python", [OLDEST_PYTHON, NEWEST_PYTHON], ids=["oldest", "newest"])
def test_lone_copy_with_only_the_standard_library(cli: Cli, python: str) -> None:
    if not os.path.exists(python):
        pytest.skip(f"{python} is not installed")
    invocation = ordinary(cli.emulator)
    box = cli.tmp_path / "box"
    box.mkdir()
    shutil.copy(MODULE_FILE, box / "kernel_sse.py")
    env = cron_env(KERNEL_API_KEY=cli.key, PYTHONPATH=None, KERNEL_SSE_DISABLE_PLUGIN_AUTOLOAD=None)
    command = [python, "-I", "kernel_sse.py"]

    text = cli.run(cli.follow_args("inv"), env, command=command, cwd=str(box))
    assert text.code == 0, text.err
    assert text.err == ""
    events = [kernel_sse.parse_event(kernel_sse.ServerSentEvent(data=e.data.decode())) for e in invocation.emitted()]
    lines = [line for line in (kernel_sse.format_text(event) for event in events) if line is not None]
    terminal = events[-1]
    assert isinstance(terminal, kernel_sse.InvocationStateEvent)
    assert text.out == "\n".join(lines + [kernel_sse.format_result(terminal.invocation)]) + "\n"

    jsonl = cli.run(cli.follow_args("inv", "--format", "jsonl"), env, command=command, cwd=str(box))
    assert jsonl.code == 0 and jsonl.err == ""
    assert objects(jsonl.out) == [event.json() for event in invocation.emitted()]

    if python != OLDEST_PYTHON:
        return
    # The rest once, on the oldest: the state file, the plugin listing, what needs more than one file.
    state = str(box / "inv.state")
    assert cli.run(cli.follow_args("inv", "--state-file", state), env, command=command, cwd=str(box)).code == 0
    again = cli.run(cli.follow_args("inv", "--state-file", state), env, command=command, cwd=str(box))
    assert again.code == 10 and again.out == ""

    listing = cli.run(["plugins", "--json"], env, command=command, cwd=str(box))
    assert listing.code == 0 and json.loads(listing.out) == []
    demo = cli.run(["demo"], env, command=command, cwd=str(box))
    assert demo.code == 2
    check_short_error(demo)
    assert "kernel_sse_emulator" in demo.err
    wants_plugin = cli.run(cli.follow_args("inv", "-p", "something"), env, command=command, cwd=str(box))
    assert wants_plugin.code == 2
    check_short_error(wants_plugin)
    assert "pip install pluggy" in wants_plugin.err
    assert sorted(p.name for p in box.iterdir()) == ["inv.state", "inv.state.lock", "kernel_sse.py"]


# ---------------------------------------------------------------- demo and plugins


def test_demo(cli: Cli) -> None:
    run = cli.run(["demo", "--speed", "20"], cli.env(key=None))
    assert run.code == 0, run.err
    messages = [step.message for step in demo_script().steps if isinstance(step, Log)]
    assert len(messages) > 30
    for message in messages:
        assert isinstance(message, str)
        assert run.out.count(message) == 1, message
    assert "selector_timeout" in run.out
    assert "succeeded" in run.out and "Epomaker TH80" in run.out
    # The path a user runs: the demo action was invoked (one line says so), then followed.
    assert re.fullmatch(r"kernel-sse: started invocation inv_\w+ \(demo run v1\) on a local emulator\n", run.err)
    assert run.seconds < 15


def test_demo_jsonl(cli: Cli) -> None:
    run = cli.run(["demo", "--speed", "40", "--format", "jsonl"], cli.env(key=None))
    assert run.code == 0
    got = objects(run.out)
    assert all(isinstance(o, dict) and "event" in o for o in got)
    last = got[-1]
    assert isinstance(last, dict) and last["invocation"]["status"] == "succeeded"


@needs_pluggy
def test_plugins_listing(cli: Cli) -> None:
    plugin = cli.plugin("mine", FAILING_PLUGIN)
    other = cli.plugin("from_env", MARKER_PLUGIN)
    env = cli.env(key=None, KERNEL_SSE_PLUGINS=other)
    text = cli.run(["plugins", "-p", plugin], env)
    assert text.code == 0
    assert "mine" in text.out and "from_env" in text.out
    listed = cli.run(["plugins", "--json", "-p", plugin], env)
    assert listed.code == 0
    infos = json.loads(listed.out)
    assert isinstance(infos, list)
    by_name = {info["name"]: info for info in infos}
    for info in infos:
        assert set(info) >= {"name", "source", "version", "hooks"}
        assert info["source"] in ("bundled", "entrypoint", "env", "-p", "builtin")
    assert by_name["mine"]["source"] == "-p" and by_name["mine"]["hooks"] == ["on_log"]
    assert by_name["from_env"]["source"] == "env" and by_name["from_env"]["hooks"] == ["on_finish"]
    for info in infos:
        if info["source"] == "bundled":
            assert info["name"] in kernel_sse.BUNDLED_PLUGINS
    blocked = cli.run(["plugins", "--json", "-p", plugin, "-p", "no:mine"], env)
    assert "mine" not in {info["name"] for info in json.loads(blocked.out)}


@needs_pluggy
def test_plugin_that_cannot_load_is_a_usage_error(cli: Cli) -> None:
    ordinary(cli.emulator)
    broken = cli.plugin("broken", "raise ImportError('no such dependency')\n")
    unknown_hook = cli.plugin("typo", "import kernel_sse\n\n@kernel_sse.hookimpl\ndef on_lgo(event):\n    pass\n")
    plugins = (broken, unknown_hook, str(cli.tmp_path / "missing.py"), "no_such_module_anywhere")
    for index, plugin in enumerate(plugins):
        run = cli.follow("inv", "-p", plugin, inprocess=index > 0)
        assert run.code == 2, plugin
        check_short_error(run)
    assert cli.emulator.requests == []


@needs_pluggy
def test_plugins_listing_with_every_plugin_blocked(cli: Cli) -> None:
    blocks = [arg for name in kernel_sse.BUNDLED_PLUGINS for arg in ("-p", f"no:{name}")]
    run = cli.run(["plugins", *blocks], cli.env(key=None))
    assert run.code == 0
    assert "not installed" not in run.out


@pytest.mark.parametrize("output_format", ["text", "jsonl"])
def test_lone_copy_loses_no_line_stdout_cannot_encode(cli: Cli, output_format: str) -> None:
    """The built-in output (no pluggy, no bundled plugins: python -S, a lone copy) under a
    locale that cannot show \u2713: the line is printed escaped, the exit code stays 0."""
    invocation = ordinary(cli.emulator)
    box = cli.tmp_path / "box"
    box.mkdir()
    shutil.copy(MODULE_FILE, box / "kernel_sse.py")
    env = cron_env(KERNEL_API_KEY=cli.key, PYTHONIOENCODING="ascii", PYTHONPATH=None)
    command = [sys.executable, "-S", "kernel_sse.py"]  # not -I, which would ignore PYTHONIOENCODING
    run = cli.run(cli.follow_args("inv", "--format", output_format), env, command=command, cwd=str(box))
    assert run.code == 0, run.err
    if output_format == "text":
        assert "second line \\u2013 caf\\xe9 \\u2713" in run.out
    else:
        assert objects(run.out) == [event.json() for event in invocation.emitted()]
