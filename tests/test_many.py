"""Several follows in one process: ``follow A B C``, ``watch``, ``run_follow``, the tag helpers.

Against the emulator on 127.0.0.1; scripts are held at :class:`Gate` s that a
helper opens once the client is connected, never on a timing guess.  Most runs
go through ``kernel_sse.main`` in-process; signals, and one plain run, through a
subprocess (``python kernel_sse.py``) with a cron-like environment.
"""

from __future__ import annotations

import contextlib
import gc
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

import kernel_sse
import plugin_support
from kernel_sse_emulator import EmulatedInvocation, Emulator, Error, Gate, Log, RequestRecord, Script, State

ROOT = Path(__file__).resolve().parent.parent
MODULE_FILE = str(ROOT / "kernel_sse.py")
START = "2025-06-20T12:00:00Z"

try:
    import pluggy  # noqa: F401

    HAS_PLUGGY = True
except ImportError:  # pragma: no cover - the CI installs it
    HAS_PLUGGY = False
needs_pluggy = pytest.mark.skipif(not HAS_PLUGGY, reason="plugins need pluggy")


# ---------------------------------------------------------------- plugins the tests load with -p

OUTCOMES_PLUGIN = '''
"""Appends one JSON line per on_finish to $TEST_OUTCOMES: the follow's outcome, and
what its state file (in $TEST_STATE_DIR) held at that moment."""
import json
import os

import kernel_sse


@kernel_sse.hookimpl
def on_finish(outcome, context):
    saved = None
    folder = os.environ.get("TEST_STATE_DIR")
    if folder:
        path = os.path.join(folder, context.invocation_id + ".state")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                saved = json.load(handle)
    with open(os.environ["TEST_OUTCOMES"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": context.invocation_id, "status": outcome.status,
                                 "exit_code": outcome.exit_code, "saved": saved}) + "\\n")
'''

FAIL_FOR_ONE_PLUGIN = '''
"""Raises in on_log, but only for the invocation named in $TEST_FAIL_ID."""
import os

import kernel_sse


@kernel_sse.hookimpl
def on_log(event, context):
    if context.invocation_id == os.environ["TEST_FAIL_ID"]:
        raise RuntimeError("boom for one follow")
'''


# ---------------------------------------------------------------- helpers


class Ran:
    """One finished run of the command line."""

    def __init__(self, code: int, out: str, err: str, seconds: float) -> None:
        self.code, self.out, self.err, self.seconds = code, out, err, seconds

    @property
    def lines(self) -> List[str]:
        return [line for line in self.out.splitlines() if line]

    def __repr__(self) -> str:
        return f"Ran(code={self.code}, out={self.out!r}, err={self.err!r})"


def run_main(args: Sequence[str]) -> Ran:
    """``kernel_sse.main(args)`` in-process, stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = kernel_sse.main(list(args))
    return Ran(code, out.getvalue(), err.getvalue(), time.monotonic() - started)


@pytest.fixture
def env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Emulator:
    """The emulator, with the environment of an in-process run pointing at it."""
    plugin_support.clean_environment(monkeypatch)
    assert emulator.api_key is not None
    monkeypatch.setenv("KERNEL_API_KEY", emulator.api_key)
    monkeypatch.setenv("KERNEL_BASE_URL", emulator.url)
    monkeypatch.setenv("KERNEL_SSE_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("TEST_OUTCOMES", str(tmp_path / "outcomes.jsonl"))
    return emulator


def plugins_path(tmp_path: Path) -> str:
    """A folder where ``kernel_sse_plugins`` is this checkout's ``plugins/`` (for subprocesses)."""
    folder = tmp_path / "pythonpath"
    if not folder.exists():
        folder.mkdir()
        if (ROOT / "plugins" / "__init__.py").is_file():
            (folder / "kernel_sse_plugins").symlink_to(ROOT / "plugins", target_is_directory=True)
    return str(folder)


def cron_env(emulator: Emulator, tmp_path: Path, **extra: str) -> Dict[str, str]:
    """A bare environment as cron gives, the emulator's key, this checkout's module and plugins."""
    assert emulator.api_key is not None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": os.pathsep.join([plugins_path(tmp_path), str(ROOT)]),
        "KERNEL_SSE_DISABLE_PLUGIN_AUTOLOAD": "1",
        "KERNEL_API_KEY": emulator.api_key,
        "KERNEL_BASE_URL": emulator.url,
        "TEST_OUTCOMES": str(tmp_path / "outcomes.jsonl"),
    }
    env.update(extra)
    return env


class Proc:
    """``python kernel_sse.py ARGS`` in the background, its output read as it comes."""

    def __init__(self, args: Sequence[str], env: Dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, MODULE_FILE, *args], env=env, cwd=str(cwd),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                         for stream, into in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[bytes], into: bytearray) -> None:
        while True:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return
            with self._lock:
                into += chunk

    def out(self) -> str:
        with self._lock:
            return self._out.decode("utf-8", "replace")

    def wait_for(self, *texts: str, timeout: float = 10.0) -> None:
        ends = time.monotonic() + timeout
        while not all(text in self.out() for text in texts):
            if self.proc.poll() is not None or time.monotonic() > ends:
                self.kill()
                raise AssertionError(f"not all of {texts!r} in the output: {self.out()!r}")
            time.sleep(0.01)

    def wait(self, timeout: float = 20.0) -> Ran:
        started = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        for reader in self._readers:
            reader.join(5)
        return Ran(code, self._out.decode("utf-8"), self._err.decode("utf-8"), time.monotonic() - started)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_subprocess(args: Sequence[str], env: Dict[str, str], cwd: Path, timeout: float = 30.0) -> Ran:
    return Proc(args, env, cwd).wait(timeout)


def requests_for(emulator: Emulator, invocation_id: str) -> List[RequestRecord]:
    return [r for r in emulator.requests if r.invocation_id == invocation_id]


def list_requests(emulator: Emulator) -> List[RequestRecord]:
    return [r for r in emulator.requests if r.method == "GET" and r.path.split("?")[0].rstrip("/") == "/invocations"]


def when(condition: Callable[[], bool], then: Callable[[], None], delay: float = 0.0) -> threading.Thread:
    """In a thread: once ``condition()`` holds (polled), wait ``delay`` s, then ``then()``."""

    def wait_then() -> None:
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up and not condition():
            time.sleep(0.01)
        time.sleep(delay)
        then()

    thread = threading.Thread(target=wait_then, daemon=True)
    thread.start()
    return thread


def release_when_connected(emulator: Emulator, gate: Gate, invocation_id: str, delay: float = 0.1) -> None:
    when(lambda: bool(requests_for(emulator, invocation_id)), gate.release, delay)


def ordinary(emulator: Emulator, invocation_id: str, status: str = "succeeded", logs: int = 2,
             extra: Sequence[Any] = ()) -> EmulatedInvocation:
    """running, ``logs`` log lines named after the id, the terminal state."""
    steps: List[Any] = [State("queued"), State("running")]
    steps += [Log(f"{invocation_id} line {n}") for n in range(1, logs + 1)]
    steps += list(extra)
    steps.append(State(status, output={"id": invocation_id} if status == "succeeded" else None,
                       status_reason=None if status == "succeeded" else "it raised"))
    return emulator.add(Script(invocation_id, steps, start=START))


def gated(emulator: Emulator, invocation_id: str, gate: Gate, status: str = "succeeded") -> EmulatedInvocation:
    """Two lines, the gate, two more lines, the terminal state."""
    return emulator.add(Script(invocation_id, [
        State("running"), Log(f"{invocation_id} before 1"), Log(f"{invocation_id} before 2"), gate,
        Log(f"{invocation_id} after 1"), Log(f"{invocation_id} after 2"), State(status),
    ]))


def outcomes(tmp_path: Path) -> Dict[str, Dict[str, Any]]:
    """What the outcomes plugin recorded, by invocation id (each follow finishes once)."""
    path = tmp_path / "outcomes.jsonl"
    found: Dict[str, Dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            assert record["id"] not in found, f"on_finish called twice for {record['id']}"
            found[record["id"]] = record
    return found


def write_plugin(tmp_path: Path, name: str, source: str) -> str:
    return str(plugin_support.write_plugin(tmp_path, name, source))


def assert_tagged(lines: Sequence[str], ids: Sequence[str]) -> Dict[str, List[str]]:
    """Every line starts with one of ``ids`` padded to the longest, then two spaces; the lines by id."""
    width = max(len(i) for i in ids)
    by_id: Dict[str, List[str]] = {i: [] for i in ids}
    for line in lines:
        tags = [i for i in ids if line.startswith(i.ljust(width) + "  ")]
        assert len(tags) == 1, f"not tagged with one id: {line!r}"
        by_id[tags[0]].append(line[width + 2:])
    return by_id


# ---------------------------------------------------------------- 9. tagged_text, tagged_json


def test_tagged_text_pads_to_the_width() -> None:
    assert kernel_sse.tagged_text("2025 hello", "inv_a", 8) == "inv_a     2025 hello"
    assert kernel_sse.tagged_text("x", "inv_long_id", 3) == "inv_long_id  x"  # never cut
    assert kernel_sse.tagged_text("x", "inv") == "inv  x"
    assert kernel_sse.tagged_text("", "inv", 5) == "inv    "


def test_tagged_text_escapes_control_characters_in_the_id() -> None:
    line = kernel_sse.tagged_text("msg", "inv\x1b[31m\nred\r\x00", 4)
    assert "\x1b" not in line and "\n" not in line and "\r" not in line and "\x00" not in line
    assert line.endswith("  msg")
    assert line.startswith("inv\\x1b[31m")


@pytest.mark.parametrize("invocation_id", ["inv_a", "inv \"quoted\" \\ back", "inv\x1b[31m\n\x00", "caf\u00e9 \u2713",
                                           "lone \ud800 surrogate"])
def test_tagged_json_puts_the_id_first(invocation_id: str) -> None:
    event = '{"event":"log","timestamp":"2025-06-20T12:00:00.000000001Z","message":"hi"}'
    line = kernel_sse.tagged_json(event, invocation_id)
    assert "\n" not in line and "\x1b" not in line
    line.encode("utf-8")  # valid UTF-8: a lone surrogate is a \\u escape
    obj = json.loads(line)
    assert list(obj) == ["invocation_id", "event", "timestamp", "message"]
    assert obj["invocation_id"] == invocation_id
    assert {k: v for k, v in obj.items() if k != "invocation_id"} == json.loads(event)
    assert line.endswith(event[1:]), "the rest is exactly what the API sent"


def test_tagged_json_of_an_empty_object() -> None:
    assert kernel_sse.tagged_json("{}", "inv") == '{"invocation_id":"inv"}'
    assert json.loads(kernel_sse.tagged_json("{}", "a\nb")) == {"invocation_id": "a\nb"}


def test_tagged_json_of_real_events() -> None:
    sse = kernel_sse.ServerSentEvent("message", '{"event": "log", "timestamp": "2025-06-20T12:00:00Z", '
                                                '"message": "x"}', "", None)
    event = kernel_sse.parse_event(sse)
    line = kernel_sse.tagged_json(kernel_sse.format_json(event), "inv_1")
    assert json.loads(line) == {"invocation_id": "inv_1", **json.loads(sse.data)}


# ---------------------------------------------------------------- _combined_exit


@pytest.mark.parametrize("codes, interrupted, expected", [
    ([0, 0, 0], None, 0),
    ([], None, 0),
    ([0, 1, 0], None, 1),
    ([0, 3, 0], None, 3),
    ([1, 3], None, 1),
    ([3, 1, 70], None, 1),
    ([0, 5], None, 5),
    ([5, 1], None, 1),
    ([5, 3], None, 3),
    ([5, 10], None, 5),
    ([10, 10], None, 10),
    ([10, 11], None, 11),
    ([10, 0], None, 10),
    ([11, 1], None, 1),
    ([4, 3], None, 3),
    ([70, 3], None, 70),
    ([75, 2], None, 75),
    ([0, 1], 143, 143),
    ([0], 130, 130),
])
def test_combined_exit(codes: List[int], interrupted: Optional[int], expected: int) -> None:
    assert kernel_sse._combined_exit(codes, interrupted) == expected


# ---------------------------------------------------------------- 1. follow A B C


@needs_pluggy
def test_follow_several_text_each_line_once_tagged_and_aligned(env: Emulator) -> None:
    ordinary(env, "inv_a", logs=3)
    ordinary(env, "inv_bbbbbbbb", logs=2, extra=[Error("selector_timeout", "timed out")])
    ordinary(env, "inv_cc", logs=1)
    ran = run_main(["follow", "inv_a", "inv_bbbbbbbb", "inv_cc", "inv_a"])
    assert ran.code == 0, ran
    assert ran.err == ""
    by_id = assert_tagged(ran.lines, ["inv_a", "inv_bbbbbbbb", "inv_cc"])
    for invocation_id, logs in (("inv_a", 3), ("inv_bbbbbbbb", 2), ("inv_cc", 1)):
        body = "\n".join(by_id[invocation_id])
        for n in range(1, logs + 1):
            assert ran.out.count(f"{invocation_id} line {n}") == 1, "each line exactly once"
            assert f"{invocation_id} line {n}" in body
        # The result, tagged too (its output lines included), once.
        assert sum(line.startswith(f"invocation {invocation_id} ") for line in by_id[invocation_id]) == 1
        assert f'"id": "{invocation_id}"' in body
    assert "[error] selector_timeout: timed out" in "\n".join(by_id["inv_bbbbbbbb"])
    # A duplicate id is followed once.
    assert len([r for r in env.requests if r.invocation_id == "inv_a"]) == 1


@needs_pluggy
def test_follow_several_jsonl_is_what_the_api_sent_with_the_id_first(env: Emulator) -> None:
    env.heartbeat_interval = 0.1
    gate = Gate()
    release_when_connected(env, gate, "inv_b", 0.35)  # a quiet spell: heartbeats
    invocations = {
        "inv_a": ordinary(env, "inv_a", logs=2),
        "inv_b": env.add(Script("inv_b", [State("running"), Log("caf\u00e9 \u2713 \"q\""), gate,
                                          Error("e", "m", details=[{"code": "c", "message": "d"}]),
                                          State("failed", status_reason="boom")], start=START)),
    }
    ran = run_main(["follow", "inv_a", "inv_b", "--format", "jsonl"])
    assert ran.code == 1, ran
    got: Dict[str, List[object]] = {"inv_a": [], "inv_b": []}
    beats = 0
    for line in ran.lines:
        assert line.startswith('{"invocation_id":"inv_')
        obj = json.loads(line)
        assert list(obj)[0] == "invocation_id"
        rest = {k: v for k, v in obj.items() if k != "invocation_id"}
        if rest.get("event") == "sse_heartbeat":
            beats += 1
            assert set(rest) == {"event", "timestamp"}
            continue
        got[obj["invocation_id"]].append(rest)
    for invocation_id, invocation in invocations.items():
        assert got[invocation_id] == [event.json() for event in invocation.emitted()]
    assert beats >= 1
    assert "invocation inv_" not in ran.out, "no result text in JSON lines"


@needs_pluggy
@pytest.mark.parametrize("statuses, expected", [
    (("succeeded", "succeeded", "succeeded"), 0),
    (("succeeded", "failed", "succeeded"), 1),
    (("succeeded", "404", "succeeded"), 3),
    (("failed", "404", "succeeded"), 1),
    (("404", "404", "404"), 3),
])
def test_follow_several_combined_exit(env: Emulator, statuses: Tuple[str, ...], expected: int) -> None:
    ids = [f"inv_{n}" for n in range(len(statuses))]
    for invocation_id, status in zip(ids, statuses):
        if status != "404":
            ordinary(env, invocation_id, status)
    ran = run_main(["follow", *ids])
    assert ran.code == expected, ran
    for invocation_id, status in zip(ids, statuses):
        if status == "404":
            assert f"{invocation_id}: the API answered 404" in ran.err
        else:
            assert ran.out.count(f"{invocation_id} line 1") == 1


def test_follow_several_subprocess(emulator: Emulator, tmp_path: Path) -> None:
    ordinary(emulator, "inv_one", "succeeded")
    ordinary(emulator, "inv_three", "failed")
    ran = run_subprocess(["follow", "inv_one", "inv_three", "inv_four"], cron_env(emulator, tmp_path), tmp_path)
    assert ran.code == 1, ran  # a failed plus a 404
    by_id = assert_tagged(ran.lines, ["inv_one", "inv_three", "inv_four"])
    assert by_id["inv_four"] == []
    for invocation_id in ("inv_one", "inv_three"):
        assert ran.out.count(f"{invocation_id} line 1") == 1 and ran.out.count(f"{invocation_id} line 2") == 1
    assert "inv_four: the API answered 404" in ran.err
    assert "Traceback" not in ran.err and "\x1b" not in ran.out


# ---------------------------------------------------------------- 2. --state-file FOLDER


def test_state_folder_missing_is_a_usage_error_before_any_request(env: Emulator, tmp_path: Path) -> None:
    ordinary(env, "inv_a")
    ordinary(env, "inv_b")
    missing = tmp_path / "nope"
    ran = run_main(["follow", "inv_a", "inv_b", "--state-file", str(missing)])
    assert ran.code == 2
    assert "must name a folder" in ran.err and str(missing) in ran.err
    assert ran.out == ""
    assert env.requests == []
    assert not missing.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    ran = run_main(["follow", "inv_a", "inv_b", "--state-file", str(a_file)])
    assert ran.code == 2 and "must name a folder" in ran.err
    assert env.requests == []


@needs_pluggy
@pytest.mark.parametrize("second, remembered", [("succeeded", 10), ("failed", 11)])
def test_state_folder_resume_after_deadline_then_remembered(
    env: Emulator, tmp_path: Path, second: str, remembered: int
) -> None:
    folder = tmp_path / "states"
    folder.mkdir()
    gates = {"inv_a": Gate(), "inv_b": Gate()}
    for invocation_id, gate in gates.items():
        gated(env, invocation_id, gate, "succeeded" if invocation_id == "inv_a" else second)
    first = run_main(["follow", "inv_a", "inv_b", "--state-file", str(folder), "--deadline", "1"])
    assert first.code == 4, first
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == ["inv_a.state", "inv_b.state"]
    for invocation_id in gates:
        assert first.out.count(f"{invocation_id} before 2") == 1
        saved = json.loads((folder / f"{invocation_id}.state").read_text())
        assert saved["invocation_id"] == invocation_id and saved["finished_status"] is None
        assert saved["checkpoint"]["since"] is not None
    for gate in gates.values():
        gate.release()
    again = run_main(["follow", "inv_a", "inv_b", "--state-file", str(folder)])
    assert again.code == (0 if second == "succeeded" else 1), again
    for invocation_id in gates:
        assert f"{invocation_id} before" not in again.out, "resumed: nothing printed twice"
        assert again.out.count(f"{invocation_id} after 1") == 1 and again.out.count(f"{invocation_id} after 2") == 1
    third = run_main(["follow", "inv_a", "inv_b", "--state-file", str(folder)])
    assert third.code == remembered, third
    assert third.out == ""
    assert "inv_a already succeeded" in third.err and f"inv_b already {second}" in third.err


# ---------------------------------------------------------------- 3. signals (subprocess)


@needs_pluggy
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_stops_every_follow_state_saved_on_finish_called(
    emulator: Emulator, tmp_path: Path, signum: int, code: int
) -> None:
    folder = tmp_path / "states"
    folder.mkdir()
    gates = {"inv_a": Gate(), "inv_bb": Gate()}
    invocations = {i: gated(emulator, i, gate) for i, gate in gates.items()}
    plugin = write_plugin(tmp_path, "outcomes", OUTCOMES_PLUGIN)
    env = cron_env(emulator, tmp_path, TEST_STATE_DIR=str(folder))
    proc = Proc(["follow", "inv_a", "inv_bb", "--state-file", str(folder), "-p", plugin], env, tmp_path)
    proc.wait_for("inv_a before 2", "inv_bb before 2")
    time.sleep(0.2)  # into the wait for the next event
    sent = time.monotonic()
    proc.proc.send_signal(signum)
    ran = proc.wait(timeout=10)
    assert ran.code == code, ran
    assert time.monotonic() - sent < 2.0
    assert "Traceback" not in ran.err
    assert signal.Signals(signum).name in ran.err
    recorded = outcomes(tmp_path)
    assert sorted(recorded) == ["inv_a", "inv_bb"], "on_finish for each follow"
    for invocation_id, record in recorded.items():
        assert record["status"] == "interrupted" and record["exit_code"] == code, record
        # Saved before on_finish ran, up to the last line printed.
        last = invocations[invocation_id].emitted()[2]
        assert record["saved"]["checkpoint"]["since"] == last.timestamp
    for gate in gates.values():
        gate.release()
    again = run_subprocess(["follow", "inv_a", "inv_bb", "--state-file", str(folder)], env, tmp_path)
    assert again.code == 0, again
    for invocation_id in gates:
        assert f"{invocation_id} before" not in again.out
        assert again.out.count(f"{invocation_id} after 1") == 1


# ---------------------------------------------------------------- 4. --deadline


@needs_pluggy
def test_deadline_with_several_follows(env: Emulator, tmp_path: Path) -> None:
    folder = tmp_path / "states"
    folder.mkdir()
    monkey_plugin = write_plugin(tmp_path, "outcomes_deadline", OUTCOMES_PLUGIN)
    os.environ["TEST_STATE_DIR"] = str(folder)
    try:
        gates = [Gate(), Gate(), Gate()]
        for n, gate in enumerate(gates):
            gated(env, f"inv_{n}", gate)
        ran = run_main(["follow", "inv_0", "inv_1", "inv_2", "--state-file", str(folder), "--deadline", "1",
                        "-p", monkey_plugin])
    finally:
        del os.environ["TEST_STATE_DIR"]
        for gate in gates:
            gate.release()
    assert ran.code == 4, ran
    assert ran.seconds < 1 + 1.5
    recorded = outcomes(tmp_path)
    assert sorted(recorded) == ["inv_0", "inv_1", "inv_2"]
    for n in range(3):
        assert recorded[f"inv_{n}"]["status"] == "deadline" and recorded[f"inv_{n}"]["exit_code"] == 4
        saved = json.loads((folder / f"inv_{n}.state").read_text())
        assert saved["checkpoint"]["since"] is not None and saved["finished_status"] is None
        assert f"inv_{n}: " in ran.err and "deadline" in ran.err


# ---------------------------------------------------------------- 5. a plugin error in one follow


@needs_pluggy
@pytest.mark.parametrize("other, expected", [("succeeded", 5), ("failed", 1), ("404", 3)])
def test_plugin_error_in_one_follow(
    env: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: str, expected: int
) -> None:
    monkeypatch.setenv("TEST_FAIL_ID", "inv_bad")
    ordinary(env, "inv_bad")
    ordinary(env, "inv_good")
    if other != "404":
        ordinary(env, "inv_other", other)
    failing = write_plugin(tmp_path, "fail_for_one", FAIL_FOR_ONE_PLUGIN)
    recorder = write_plugin(tmp_path, "outcomes", OUTCOMES_PLUGIN)
    finished: Dict[str, kernel_sse.Outcome] = {}
    finish = kernel_sse._finish_follow

    def recording(
        state: Any, hooks: Any, context: kernel_sse.FollowContext, *rest: Any
    ) -> Tuple[kernel_sse.Outcome, Optional[KeyboardInterrupt]]:
        outcome, stopped = finish(state, hooks, context, *rest)
        finished[context.invocation_id] = outcome
        return outcome, stopped

    monkeypatch.setattr(kernel_sse, "_finish_follow", recording)
    ran = run_main(["follow", "inv_bad", "inv_good", "inv_other", "-p", failing, "-p", recorder])
    assert ran.code == expected, ran
    assert ran.err.count("boom for one follow") == 1, "reported once"
    # Each follow's own ending: only the one whose plugin failed is a plugin error.
    assert (finished["inv_bad"].status, finished["inv_bad"].exit_code) == ("plugin_error", 5)
    assert (finished["inv_good"].status, finished["inv_good"].exit_code) == ("succeeded", 0)
    if other != "404":
        assert finished["inv_other"].status == other
    # on_finish saw each invocation's own outcome (a plugin's failure is the exit status's business).
    recorded = outcomes(tmp_path)
    assert recorded["inv_bad"]["status"] == "succeeded" and recorded["inv_good"]["status"] == "succeeded"
    # The failing plugin did not keep the others from the events.
    assert ran.out.count("inv_bad line 1") == 1 and ran.out.count("inv_bad line 2") == 1


# ---------------------------------------------------------------- 6. plugins see per-follow state


class _Webhooks(http.server.ThreadingHTTPServer):
    bodies: List[Dict[str, Any]]


class _WebhookHandler(http.server.BaseHTTPRequestHandler):
    server: _Webhooks

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", "0"))
        self.server.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhooks() -> Iterator[_Webhooks]:
    server = _Webhooks(("127.0.0.1", 0), _WebhookHandler)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@needs_pluggy
def test_bundled_plugins_keep_per_follow_counts(env: Emulator, tmp_path: Path, webhooks: _Webhooks) -> None:
    ordinary(env, "inv_a", logs=3)
    ordinary(env, "inv_b", "failed", 1, [Error("x", "one"), Error("y", "two")])
    jsonl_file = tmp_path / "events.jsonl"
    prom_file = tmp_path / "metrics.prom"
    url = f"http://127.0.0.1:{webhooks.server_address[1]}/hook"
    ran = run_main(["follow", "inv_a", "inv_b", "--webhook-url", url, "--webhook-retries", "0",
                    "--jsonl-file", str(jsonl_file), "--prometheus-file", str(prom_file)])
    assert ran.code == 1, ran
    by_id = {body["id"]: body for body in webhooks.bodies}
    assert sorted(by_id) == ["inv_a", "inv_b"]
    assert (by_id["inv_a"]["log_count"], by_id["inv_a"]["error_count"], by_id["inv_a"]["status"]) == (3, 0, "succeeded")
    assert (by_id["inv_b"]["log_count"], by_id["inv_b"]["error_count"], by_id["inv_b"]["status"]) == (1, 2, "failed")
    assert [line.split(" ", 1)[1] for line in by_id["inv_a"]["logs"]] == [f"inv_a line {n}" for n in (1, 2, 3)]
    assert [line.split(" ", 1)[1] for line in by_id["inv_b"]["logs"]] == ["inv_b line 1"]
    # The jsonl file: every event of both, each once, tagged.
    objs = [json.loads(line) for line in jsonl_file.read_text().splitlines()]
    for invocation_id, count in (("inv_a", 6), ("inv_b", 6)):
        mine = [o for o in objs if o["invocation_id"] == invocation_id and o["event"] != "sse_heartbeat"]
        assert len(mine) == count
        assert len({json.dumps(o, sort_keys=True) for o in mine}) == count
    # Prometheus: one file, written by whichever follow ended last, with that follow's own counts.
    text = prom_file.read_text()
    logs = [line for line in text.splitlines() if line.startswith("kernel_sse_log_events_total")]
    assert len(logs) == 1
    if 'invocation_id="inv_a"' in logs[0]:
        assert logs[0].endswith(" 3")
    else:
        assert 'invocation_id="inv_b"' in logs[0] and logs[0].endswith(" 1")


def test_state_for_is_per_context() -> None:
    class Counts:
        def __init__(self) -> None:
            self.n = 0

    one = kernel_sse.FollowContext(kernel_sse.Follower("inv_1", api_key="k", base_url="http://127.0.0.1:9"), {})
    two = kernel_sse.FollowContext(kernel_sse.Follower("inv_2", api_key="k", base_url="http://127.0.0.1:9"), {})
    one.state_for(Counts).n += 2
    two.state_for(Counts).n += 1
    assert one.state_for(Counts).n == 2 and two.state_for(Counts).n == 1
    assert one.state_for(Counts) is one.state_for(Counts)


def test_failures_are_counted_per_follow_even_when_a_context_is_gone() -> None:
    """A finished follow's failures never count for a later follow (watch makes
    contexts for hours: one freed may leave its address to the next)."""

    def boom(context: kernel_sse.FollowContext) -> None:
        if context.invocation_id == "inv_bad":
            raise RuntimeError("boom")

    hooks = kernel_sse.Hooks({"on_start": [kernel_sse._Impl("p", boom, ("context",))]})
    inherited = 0
    with contextlib.redirect_stderr(io.StringIO()):
        for n in range(200):  # as watch does: a follower and a context per invocation, freed after it
            invocation_id = "inv_bad" if n % 2 else f"inv_ok_{n}"
            context = kernel_sse.FollowContext(
                kernel_sse.Follower(invocation_id, api_key="k", base_url="http://127.0.0.1:9"), {})
            hooks.on_start(context)
            inherited += hooks.failures_in(context) != (1 if n % 2 else 0)
            del context
            if n % 10 == 0:
                gc.collect()
    assert inherited == 0
    assert hooks.failures == 100


# ---------------------------------------------------------------- 7. watch


def watch_args(emulator: Emulator, *more: str) -> List[str]:
    return ["watch", "--base-url", emulator.url, *more]


@needs_pluggy
def test_watch_follows_running_queued_and_later_ones_until_the_deadline(env: Emulator) -> None:
    gate_r, gate_q, gate_late, stuck = Gate(), Gate(), Gate(), Gate()
    env.add(Script("inv_running", [State("running"), Log("r before"), gate_r, Log("r after"), State("succeeded")]))
    env.add(Script("inv_queued", [State("queued"), gate_q, State("running"), Log("q ran"), State("succeeded")]))
    env.add(Script("inv_stuck", [State("running"), Log("s before"), stuck, Log("never")]))
    ordinary(env, "inv_done")  # finished before the watch: not followed
    for gate, invocation_id in ((gate_r, "inv_running"), (gate_q, "inv_queued"), (gate_late, "inv_late")):
        release_when_connected(env, gate, invocation_id, 0.1)
    late = Script("inv_late", [State("running"), Log("late before"), gate_late, Log("late after"), State("succeeded")])
    when(lambda: len(list_requests(env)) >= 1, lambda: None if env.add(late) else None)
    try:
        ran = run_main(watch_args(env, "--deadline", "2.5", "--poll", "0.2"))
    finally:
        stuck.release()
    assert ran.code == 0, ran
    assert ran.seconds < 2.5 + 1.5
    ids = ["inv_running", "inv_queued", "inv_stuck", "inv_late"]
    by_id = assert_tagged(ran.lines, [i.ljust(24) for i in ids])
    for text in ("r before", "r after", "q ran", "s before", "late before", "late after"):
        assert ran.out.count(text) == 1, text
    assert "never" not in ran.out
    for invocation_id in ("inv_running", "inv_queued", "inv_late"):
        assert any(line.startswith(f"invocation {invocation_id} ") for line in by_id[invocation_id.ljust(24)])
    assert not requests_for(env, "inv_done")
    assert "still running at the deadline: inv_stuck" in ran.err
    for invocation_id in ("inv_running", "inv_queued", "inv_late"):
        assert len([r for r in requests_for(env, invocation_id) if r.path.endswith("/events") or "/events?" in r.path]) == 1


@needs_pluggy
def test_watch_picks_up_a_posted_invocation(env: Emulator) -> None:
    gate = Gate()
    env.register_action("shop", "scrape", "2", Script(steps=[State("running"), Log("posted runs"), gate,
                                                             State("succeeded")]))

    def post() -> None:
        kernel_sse.invoke("shop", "scrape", version="2", api_key=env.api_key, base_url=env.url)

    when(lambda: len(list_requests(env)) >= 1, post)
    when(lambda: any((r.invocation_id or "").startswith("inv_") and r.path.endswith("/events")
                     or "/events?" in r.path for r in env.requests), gate.release, 0.1)
    ran = run_main(watch_args(env, "--deadline", "2", "--poll", "0.2"))
    assert ran.code == 0, ran
    assert ran.out.count("posted runs") == 1
    created = env.invocations_created
    assert len(created) == 1 and ran.out.startswith(created[0].ljust(24) + "  ")


@needs_pluggy
def test_watch_filters(env: Emulator) -> None:
    gates = []
    for invocation_id, app, action, version in (
        ("inv_match", "shop", "scrape", "2"), ("inv_app", "other", "scrape", "2"),
        ("inv_action", "shop", "index", "2"), ("inv_version", "shop", "scrape", "1"),
    ):
        gate = Gate()
        gates.append(gate)
        env.add(Script(invocation_id, [State("running"), Log(f"{invocation_id} says"), gate, State("succeeded")],
                       app_name=app, action_name=action, version=version))
        release_when_connected(env, gate, invocation_id, 0.1)
    try:
        ran = run_main(watch_args(env, "--deadline", "1.5", "--poll", "0.2", "--app", "shop", "--action", "scrape",
                                  "--version", "2"))
    finally:
        for gate in gates:
            gate.release()
    assert ran.code == 0, ran
    assert "inv_match says" in ran.out
    for other in ("inv_app", "inv_action", "inv_version"):
        assert other not in ran.out and not requests_for(env, other)
    for record in list_requests(env):
        assert record.query.get("app_name") == ["shop"] and record.query.get("action_name") == ["scrape"]
        assert record.query.get("version") == ["2"]


@needs_pluggy
def test_watch_exit_1_when_a_followed_invocation_failed(env: Emulator) -> None:
    gate = Gate()
    env.add(Script("inv_fails", [State("running"), Log("trying"), gate, State("failed")]))
    ordinary(env, "inv_ok_before")  # finished: not followed, not counted
    release_when_connected(env, gate, "inv_fails", 0.1)
    ran = run_main(watch_args(env, "--deadline", "1.5", "--poll", "0.2"))
    assert ran.code == 1, ran
    assert "trying" in ran.out


def test_watch_exit_3_when_the_list_is_refused(env: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_API_KEY", "wrong-key-SECRET-0123")
    ran = run_main(watch_args(env, "--deadline", "5", "--poll", "0.2"))
    assert ran.code == 3, ran
    assert ran.seconds < 3
    assert "401" in ran.err and "wrong-key-SECRET-0123" not in ran.err


def test_watch_polls_with_backoff(env: Emulator) -> None:
    ran = run_main(watch_args(env, "--deadline", "3", "--poll", "0.2"))
    assert ran.code == 0, ran
    rounds = len(list_requests(env)) / 2  # running, then queued
    # Without backoff: ~15 rounds; doubling from 0.2 s: 0, 0.4, 1.2, 2.8 (about 4).
    assert 2 <= rounds <= 5, rounds


def test_watch_poll_above_the_cap_is_never_shortened(env: Emulator) -> None:
    """--poll 60: with nothing new, the next look comes no sooner (the 30 s cap is for the backoff)."""
    ran = run_main(watch_args(env, "--deadline", "1.5", "--poll", "60"))
    assert ran.code == 0, ran
    assert len(list_requests(env)) == 2, "one round only"


@needs_pluggy
def test_watch_sigint_is_130(emulator: Emulator, tmp_path: Path) -> None:
    gate = Gate()
    emulator.add(Script("inv_w", [State("running"), Log("watch me"), gate, State("succeeded")]))
    plugin = write_plugin(tmp_path, "outcomes", OUTCOMES_PLUGIN)
    proc = Proc(watch_args(emulator, "--poll", "0.2", "-p", plugin), cron_env(emulator, tmp_path), tmp_path)
    try:
        proc.wait_for("watch me")
        time.sleep(0.2)
        proc.proc.send_signal(signal.SIGINT)
        ran = proc.wait(timeout=10)
    finally:
        gate.release()
    assert ran.code == 130, ran
    assert "Traceback" not in ran.err
    assert outcomes(tmp_path)["inv_w"]["status"] == "interrupted"


# ---------------------------------------------------------------- 8. run_follow from Python


class Recorder:
    """A plain plugin object (no hookimpl marks)."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, object]] = []
        self.outcome: Optional[kernel_sse.Outcome] = None

    def on_start(self, context: kernel_sse.FollowContext) -> None:
        self.calls.append(("on_start", context.invocation_id))

    def on_log(self, event: kernel_sse.LogEvent) -> None:
        self.calls.append(("on_log", event.message))

    def on_state(self, event: kernel_sse.InvocationStateEvent) -> None:
        self.calls.append(("on_state", event.invocation.status))

    def on_error(self, event: kernel_sse.ErrorEvent) -> None:
        self.calls.append(("on_error", event.error.code))

    def on_terminal(self, invocation: kernel_sse.Invocation) -> None:
        self.calls.append(("on_terminal", invocation.status))

    def on_finish(self, outcome: kernel_sse.Outcome, context: kernel_sse.FollowContext) -> None:
        self.outcome = outcome
        self.calls.append(("on_finish", outcome.status))

    def names(self) -> List[str]:
        return [name for name, _ in self.calls]


def follower(emulator: Emulator, invocation_id: str, **kwargs: Any) -> kernel_sse.Follower:
    return kernel_sse.Follower(invocation_id, api_key=emulator.api_key, base_url=emulator.url, **kwargs)


def marked_module(calls: List[str]) -> types.ModuleType:
    module = types.ModuleType("marked_plugin")
    hookimpl = kernel_sse.hookimpl

    @hookimpl
    def on_log(event: kernel_sse.LogEvent, context: kernel_sse.FollowContext) -> None:
        calls.append(f"{context.invocation_id}:{event.message}")

    @hookimpl
    def on_finish(outcome: kernel_sse.Outcome) -> None:
        calls.append(f"finish:{outcome.status}")

    module.on_log = on_log  # type: ignore[attr-defined]
    module.on_finish = on_finish  # type: ignore[attr-defined]
    return module


@needs_pluggy
def test_run_follow_calls_plain_objects_and_marked_modules(emulator: Emulator) -> None:
    ordinary(emulator, "inv_p", logs=2, extra=[Error("oops", "non terminal")])
    recorder = Recorder()
    calls: List[str] = []
    saves: List[Tuple[kernel_sse.Checkpoint, Optional[str]]] = []
    outcome = kernel_sse.run_follow(follower(emulator, "inv_p"), [recorder, marked_module(calls)],
                                    save=lambda checkpoint, status: saves.append((checkpoint, status)))
    assert outcome.status == "succeeded" and outcome.exit_code == 0
    assert outcome.invocation is not None and outcome.invocation.id == "inv_p"
    assert recorder.calls == [
        ("on_start", "inv_p"), ("on_state", "queued"), ("on_state", "running"), ("on_log", "inv_p line 1"),
        ("on_log", "inv_p line 2"), ("on_error", "oops"), ("on_state", "succeeded"), ("on_terminal", "succeeded"),
        ("on_finish", "succeeded"),
    ]
    assert recorder.outcome == outcome
    assert calls == ["inv_p:inv_p line 1", "inv_p:inv_p line 2", "finish:succeeded"]
    assert saves and saves[-1][1] == "succeeded"
    assert saves[-1][0].since is not None


def test_run_follow_without_plugins_and_options(emulator: Emulator) -> None:
    ordinary(emulator, "inv_f", "failed")
    seen: List[object] = []

    class Opts:
        def on_start(self, context: kernel_sse.FollowContext) -> None:
            seen.append(dict(context.options))

    outcome = kernel_sse.run_follow(follower(emulator, "inv_f"), [Opts()], options={"jsonl_file": None, "x": 1})
    assert (outcome.status, outcome.exit_code) == ("failed", 1)
    assert seen == [{"jsonl_file": None, "x": 1}]


@pytest.mark.parametrize("case, status, code", [
    ("refused", "refused", 3), ("deadline", "deadline", 4), ("gave_up", "gave_up", 4),
])
def test_run_follow_outcomes_without_a_terminal_state(
    emulator: Emulator, case: str, status: str, code: int
) -> None:
    gate = Gate()
    recorder = Recorder()
    if case == "refused":
        made = follower(emulator, "inv_nowhere")
    elif case == "deadline":
        gated(emulator, "inv_d", gate)
        made = follower(emulator, "inv_d", deadline=0.5)
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        made = kernel_sse.Follower("inv_x", api_key="k", base_url=f"http://127.0.0.1:{port}", max_retries=0)
    try:
        outcome = kernel_sse.run_follow(made, [recorder])
    finally:
        gate.release()
    assert (outcome.status, outcome.exit_code) == (status, code)
    assert outcome.message
    assert recorder.names()[0] == "on_start" and recorder.names()[-1] == "on_finish"
    assert "on_terminal" not in recorder.names()
    assert recorder.outcome == outcome


class Raising:
    def __init__(self, hook: str = "on_log", error: BaseException = RuntimeError("plugin bug")) -> None:
        self.hook, self.error, self.count = hook, error, 0

    def on_log(self) -> None:
        self.count += 1
        if self.hook == "on_log":
            raise self.error

    def on_finish(self) -> None:
        if self.hook == "on_finish":
            raise self.error


@pytest.mark.parametrize("status, code", [("succeeded", 5), ("failed", 1)])
def test_run_follow_isolates_a_raising_plugin(
    emulator: Emulator, capsys: pytest.CaptureFixture[str], status: str, code: int
) -> None:
    ordinary(emulator, "inv_r", status, 3)
    raising, recorder = Raising(), Recorder()
    outcome = kernel_sse.run_follow(follower(emulator, "inv_r"), [raising, recorder])
    assert outcome.exit_code == code
    assert outcome.status == ("plugin_error" if status == "succeeded" else "failed")
    assert raising.count == 3, "called for every event"
    assert [c for c in recorder.calls if c[0] == "on_log"] == [("on_log", f"inv_r line {n}") for n in (1, 2, 3)]
    assert recorder.outcome is not None and recorder.outcome.status == status
    assert capsys.readouterr().err.count("plugin bug") == 1


def test_run_follow_a_raising_on_finish_is_a_plugin_error(emulator: Emulator) -> None:
    ordinary(emulator, "inv_rf")
    outcome = kernel_sse.run_follow(follower(emulator, "inv_rf"), [Raising("on_finish")])
    assert (outcome.status, outcome.exit_code) == ("plugin_error", 5)


def test_run_follow_strict_stops_at_the_first_error(emulator: Emulator) -> None:
    ordinary(emulator, "inv_s", logs=3)
    raising, recorder = Raising(), Recorder()
    outcome = kernel_sse.run_follow(follower(emulator, "inv_s"), [raising, recorder], strict_plugins=True)
    assert (outcome.status, outcome.exit_code) == ("plugin_error", 5)
    assert raising.count == 1
    assert "on_terminal" not in recorder.names() and recorder.names()[-1] == "on_finish"
    assert recorder.outcome is not None and recorder.outcome.status == "plugin_error"
    assert outcome.message is not None and "plugin bug" in outcome.message


def test_run_follow_keyboard_interrupt_runs_on_finish_then_propagates(emulator: Emulator) -> None:
    ordinary(emulator, "inv_k", logs=3)
    recorder = Recorder()
    saves: List[Tuple[kernel_sse.Checkpoint, Optional[str]]] = []
    raising = Raising(error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        kernel_sse.run_follow(follower(emulator, "inv_k"), [raising, recorder],
                              save=lambda checkpoint, status: saves.append((checkpoint, status)))
    assert raising.count == 1
    assert recorder.outcome is not None
    assert (recorder.outcome.status, recorder.outcome.exit_code) == ("interrupted", 130)
    assert saves and saves[-1][1] is None
    # The interrupted line was not counted as delivered: a resume hands it over again.
    again = Recorder()
    resumed = kernel_sse.run_follow(follower(emulator, "inv_k", checkpoint=saves[-1][0]), [again])
    assert resumed.status == "succeeded"
    assert [c for c in again.calls if c[0] == "on_log"][0] == ("on_log", "inv_k line 1")


def test_run_follow_keyboard_interrupt_in_on_finish_propagates(emulator: Emulator) -> None:
    """Ctrl-C while a plugin finishes (a slow webhook, say): the other plugins'
    on_finish was given its chance, the state is saved, and the caller sees it."""
    ordinary(emulator, "inv_kf")
    saves: List[Tuple[kernel_sse.Checkpoint, Optional[str]]] = []
    with pytest.raises(KeyboardInterrupt):
        kernel_sse.run_follow(follower(emulator, "inv_kf"), [Raising("on_finish", KeyboardInterrupt())],
                              save=lambda checkpoint, status: saves.append((checkpoint, status)))
    assert saves and saves[-1][1] == "succeeded"


def test_watch_deadline_bounds_the_list_requests_too(env: Emulator) -> None:
    """The API unreachable: the retried list requests end at --deadline too (exit 4: nothing could be watched)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ran = run_main(["watch", "--base-url", f"http://127.0.0.1:{port}", "--deadline", "1.5", "--poll", "0.2"])
    assert ran.code == 4, ran
    assert ran.seconds < 1.5 + 1.5
    assert "Traceback" not in ran.err
