"""Tests of starting invocations: ``invoke``, ``status``, ``list`` and the Python API.

Everything runs against the local emulator (``kernel_sse_emulator``) on 127.0.0.1:
through ``kernel_sse.main([...])`` in-process, and through the real program in a
subprocess where signals, standard input or a second run matter.

The heart of it is *exactly once*: whatever fails around ``POST /invocations`` (a
dropped connection, a 5xx after creating, a slow answer, a SIGTERM or a SIGKILL at
any step of the state-file protocol), the emulator must have started one invocation
(``emulator.invocations_created``) and every log line must be printed once across
the runs, or the run must say, with exit 4, that it cannot tell.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import pytest

import kernel_sse
import kernel_sse_emulator
from kernel_sse_emulator import Emulator, Gate, Log, PostFault, Script, State

MODULE_DIR = os.path.dirname(os.path.abspath(kernel_sse.__file__))
APP, ACTION, VERSION = "shop", "scrape", "2"
LINES = ("first line", "second line", "third line")
ID = re.compile(r"\binv_[0-9a-z]{20}\b")

# A subprocess form of the program whose settling time (how long an ambiguous POST is
# given to show up in the list) a test may shorten: the protocol is the same, only faster.
SETTLE_WRAPPER = (
    "import os, sys; import kernel_sse; "
    "kernel_sse._INVOKE_SETTLE = float(os.environ.get('TEST_INVOKE_SETTLE') or kernel_sse._INVOKE_SETTLE); "
    "sys.exit(kernel_sse.main())"
)
PROGRAM = [sys.executable, "-c", SETTLE_WRAPPER]
PROGRAM_M = [sys.executable, "-m", "kernel_sse"]


# ---------------------------------------------------------------- running the command line


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> List[str]:
        return self.err.splitlines()


def _env(emulator: Emulator, **extra: Optional[str]) -> Dict[str, str]:
    """A cron-like environment pointing at ``emulator``; None removes a name."""
    assert emulator.api_key is not None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": os.pathsep.join([MODULE_DIR, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]),
        "KERNEL_SSE_DISABLE_PLUGIN_AUTOLOAD": "1",
        "KERNEL_API_KEY": emulator.api_key,
        "KERNEL_BASE_URL": emulator.url,
    }
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    names = {name for name in os.environ if name.startswith("KERNEL_")} | {
        name for name in env if name not in ("PATH", "HOME", "PYTHONPATH")}
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


def _check_clean(run: Run, key: str) -> None:
    assert key not in run.out and key not in run.err, "the API key was printed"
    assert "Traceback" not in run.err, run.err


class Cli:
    def __init__(self, emulator: Emulator, tmp_path: Path) -> None:
        self.emulator = emulator
        self.tmp_path = tmp_path
        assert emulator.api_key is not None
        self.key = emulator.api_key

    def env(self, **extra: Optional[str]) -> Dict[str, str]:
        return _env(self.emulator, **extra)

    def run(self, *args: str, inprocess: bool = True, env: Optional[Mapping[str, str]] = None,
            stdin: Optional[str] = None, program: Sequence[str] = PROGRAM_M) -> Run:
        env = dict(self.env() if env is None else env)
        if inprocess:
            out, err = io.StringIO(), io.StringIO()
            saved_stdin = sys.stdin
            try:
                if stdin is not None:
                    sys.stdin = io.StringIO(stdin)
                with _environ(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = kernel_sse.main(list(args))
            finally:
                sys.stdin = saved_stdin
            run = Run(code, out.getvalue(), err.getvalue())
        else:
            result = subprocess.run([*program, *args], env=env, cwd=str(self.tmp_path),
                                    input=(stdin or "").encode("utf-8"), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, timeout=60)
            run = Run(result.returncode, result.stdout.decode("utf-8"), result.stderr.decode("utf-8"))
        _check_clean(run, self.key)
        return run

    def start(self, *args: str, env: Optional[Mapping[str, str]] = None,
              program: Sequence[str] = PROGRAM) -> Background:
        return Background([*program, *args], dict(self.env() if env is None else env), str(self.tmp_path))

    def invoke(self, *more: str, **kwargs: Any) -> Run:
        return self.run("invoke", APP, ACTION, "--version", VERSION, *more, **kwargs)


class Background:
    """A CLI process running while the test acts."""

    def __init__(self, argv: List[str], env: Dict[str, str], cwd: str) -> None:
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
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
            chunk = stream.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                return
            with self._lock:
                into += chunk

    def output(self) -> str:
        with self._lock:
            return self._out.decode("utf-8", "replace")

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        ends = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None or time.monotonic() > ends:
                self.kill()
                raise AssertionError(f"never {what}; stdout {self.output()!r}, stderr {bytes(self._err)!r}")
            time.sleep(0.01)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> Run:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        for reader in self._readers:
            reader.join(5)
        return Run(code, self._out.decode("utf-8"), self._err.decode("utf-8"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- fixtures and helpers


def steps(*logs: str, status: str = "succeeded", gate_at: Optional[int] = None,
          gate: Optional[Gate] = None) -> List[Any]:
    """running, the log lines (a gate before line ``gate_at``), then the final state."""
    result: List[Any] = [State("running")]
    for index, line in enumerate(logs):
        if gate is not None and index == gate_at:
            result.append(gate)
        result.append(Log(line))
    if gate is not None and gate_at == len(logs):
        result.append(gate)
    result.append(State(status, output={"done": status == "succeeded"}))
    return result


@pytest.fixture
def cli(emulator: Emulator, tmp_path: Path) -> Cli:
    emulator.register_action(APP, ACTION, VERSION, Script(steps=steps(*LINES)))
    return Cli(emulator, tmp_path)


@pytest.fixture
def short_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs: an ambiguous POST is given 1.5 s to show up, not 10."""
    monkeypatch.setattr(kernel_sse, "_INVOKE_SETTLE", 1.5)


def posts(emulator: Emulator) -> List[Any]:
    return [record for record in emulator.requests if record.method == "POST"]


def lists(emulator: Emulator) -> List[Any]:
    return [record for record in emulator.requests
            if record.method == "GET" and record.path.split("?")[0] == "/invocations"]


def printed_once(out: str, lines: Sequence[str] = LINES) -> None:
    for line in lines:
        assert out.count(line) == 1, f"{line!r} printed {out.count(line)} times:\n{out}"


def started_line(run_err: str, invocation_id: str) -> None:
    """stderr names the new id on one line of its own."""
    named = [line for line in run_err.splitlines() if "started invocation" in line]
    assert len(named) == 1 and invocation_id in named[0], run_err


def add_finished(emulator: Emulator, invocation_id: str, status: str, app: str = APP, action: str = ACTION,
                 version: str = VERSION, start: Optional[str] = None) -> None:
    script = Script(invocation_id, steps=[State("running"), Log("x"), State(status)], app_name=app,
                    action_name=action, version=version, start=start)
    assert emulator.add(script).wait_finished(5)


# ================================================================ 1. exit codes of invoke, status, list


@pytest.mark.parametrize("inprocess", [True, False], ids=["in-process", "subprocess"])
def test_invoke_succeeds_exit_0(cli: Cli, inprocess: bool) -> None:
    run = cli.invoke("--payload", '{"query": "keyboards"}', inprocess=inprocess)
    assert run.code == 0, run.err
    assert len(cli.emulator.invocations_created) == 1
    new_id = cli.emulator.invocations_created[0]
    started_line(run.err, new_id)
    printed_once(run.out)
    (post,) = posts(cli.emulator)
    body = json.loads(post.body)
    assert body == {"app_name": APP, "action_name": ACTION, "version": VERSION, "async": True,
                    "payload": '{"query": "keyboards"}'}
    assert cli.emulator.invocation(new_id).invocation()["payload"] == '{"query": "keyboards"}'


@pytest.mark.parametrize("inprocess", [True, False], ids=["in-process", "subprocess"])
def test_invoke_failed_action_exit_1(cli: Cli, inprocess: bool) -> None:
    cli.emulator.register_action(APP, "breaks", VERSION, Script(steps=steps("trying", status="failed")))
    run = cli.run("invoke", APP, "breaks", "--version", VERSION, inprocess=inprocess)
    assert run.code == 1, run.err
    assert len(cli.emulator.invocations_created) == 1
    assert run.out.count("trying") == 1


@pytest.mark.parametrize("which", ["app", "action", "version"])
def test_invoke_unknown_app_action_version_exit_3(cli: Cli, which: str) -> None:
    names = {"app": APP, "action": ACTION, "version": VERSION, which: "nope"}
    run = cli.run("invoke", names["app"], names["action"], "--version", names["version"])
    assert run.code == 3, run.err
    assert "No action" in run.err and "nope" in run.err
    assert cli.emulator.invocations_created == []
    assert len(posts(cli.emulator)) == 1  # a refusal is not retried


def test_invoke_unknown_action_subprocess_exit_3(cli: Cli) -> None:
    run = cli.run("invoke", APP, "missing", "--version", VERSION, inprocess=False)
    assert run.code == 3 and "No action" in run.err and len(run.err_lines) == 1, run.err


@pytest.mark.parametrize("inprocess", [True, False], ids=["in-process", "subprocess"])
@pytest.mark.parametrize("text, position", [("{", r"line 1 column 2\b"), ('{"a": 1,}', r"line 1 column [89]\b"),
                                            ("[1, 2]\nx", r"line 2 column 1\b")])
def test_invoke_bad_payload_exit_2_before_any_request(cli: Cli, inprocess: bool, text: str, position: str) -> None:
    # The position is the json module's: Python 3.13 points at the trailing comma, earlier ones after it.
    run = cli.invoke("--payload", text, inprocess=inprocess)
    assert run.code == 2, run.err
    assert "--payload is not valid JSON" in run.err and re.search(position, run.err), run.err
    assert cli.emulator.requests == []


def test_invoke_missing_version_exit_2(cli: Cli) -> None:
    for inprocess in (True, False):
        run = cli.run("invoke", APP, ACTION, inprocess=inprocess)
        assert run.code == 2 and "--version" in run.err, run.err
    assert cli.emulator.requests == []


@pytest.mark.parametrize("args", [["invoke", APP], ["invoke", APP, ACTION, "--version", VERSION, "--since", "5m"],
                                  ["invoke", APP, ACTION, "--version", VERSION, "--payload", "1",
                                   "--payload-file", "x"]])
def test_invoke_bad_arguments_exit_2(cli: Cli, args: List[str]) -> None:
    run = cli.run(*args)
    assert run.code == 2, run.err
    assert cli.emulator.requests == []


@pytest.mark.parametrize("inprocess", [True, False], ids=["in-process", "subprocess"])
def test_invoke_payload_file(cli: Cli, tmp_path: Path, inprocess: bool) -> None:
    path = tmp_path / "payload.json"
    path.write_text('{"from": "file", "n": [1, 2]}\n', encoding="utf-8")
    run = cli.invoke("--payload-file", str(path), inprocess=inprocess)
    assert run.code == 0, run.err
    assert json.loads(json.loads(posts(cli.emulator)[0].body)["payload"]) == {"from": "file", "n": [1, 2]}


@pytest.mark.parametrize("inprocess", [True, False], ids=["in-process", "subprocess"])
def test_invoke_payload_from_stdin(cli: Cli, inprocess: bool) -> None:
    run = cli.invoke("--payload-file", "-", stdin='{"from": "stdin"}', inprocess=inprocess)
    assert run.code == 0, run.err
    assert json.loads(json.loads(posts(cli.emulator)[0].body)["payload"]) == {"from": "stdin"}


def test_invoke_bad_payload_file_exit_2(cli: Cli, tmp_path: Path) -> None:
    missing = cli.invoke("--payload-file", str(tmp_path / "missing.json"))
    assert missing.code == 2 and "cannot read --payload-file" in missing.err, missing.err
    (tmp_path / "bad.json").write_text("{nope}", encoding="utf-8")
    bad = cli.invoke("--payload-file", str(tmp_path / "bad.json"))
    assert bad.code == 2 and "is not valid JSON" in bad.err and "line 1 column 2" in bad.err, bad.err
    stdin = cli.invoke("--payload-file", "-", stdin="", inprocess=False)
    assert stdin.code == 2 and "--payload-file - is not valid JSON" in stdin.err, stdin.err
    assert cli.emulator.requests == []


@pytest.mark.parametrize("value", ["9", "3601", "0", "-5", "ten", "1.5"])
def test_invoke_async_timeout_out_of_range_exit_2(cli: Cli, value: str) -> None:
    run = cli.invoke("--async-timeout", value)
    assert run.code == 2 and "--async-timeout" in run.err, run.err
    assert cli.emulator.requests == []


@pytest.mark.parametrize("value", ["10", "3600"])
def test_invoke_async_timeout_is_sent(cli: Cli, value: str) -> None:
    run = cli.invoke("--async-timeout", value)
    assert run.code == 0, run.err
    assert json.loads(posts(cli.emulator)[0].body)["async_timeout_seconds"] == int(value)


def test_invoke_no_api_key_exit_2(cli: Cli) -> None:
    run = cli.invoke(env=cli.env(KERNEL_API_KEY=None), inprocess=False)
    assert run.code == 2 and "KERNEL_API_KEY" in run.err, run.err
    assert cli.emulator.requests == []


def test_invoke_wrong_api_key_exit_3(cli: Cli) -> None:
    run = cli.invoke(env=cli.env(KERNEL_API_KEY="wrong-key-0123456789"))
    assert run.code == 3 and cli.emulator.invocations_created == [], run.err
    assert "wrong-key-0123456789" not in run.err


def test_invoke_jsonl_output(cli: Cli) -> None:
    run = cli.invoke("--format", "jsonl")
    assert run.code == 0, run.err
    objects = [json.loads(line) for line in run.out.splitlines()]
    assert [obj["message"] for obj in objects if obj["event"] == "log"] == list(LINES)
    assert objects[-1]["event"] == "invocation_state" and objects[-1]["invocation"]["status"] == "succeeded"


# ---------------------------------------------------------------- status


@pytest.mark.parametrize("inprocess", [True, False], ids=["in-process", "subprocess"])
def test_status_exit_codes(cli: Cli, inprocess: bool) -> None:
    add_finished(cli.emulator, "inv_ok", "succeeded")
    add_finished(cli.emulator, "inv_bad", "failed")
    gate = Gate()
    cli.emulator.add(Script("inv_running", steps=[State("running"), gate, State("succeeded")]))
    queued_gate = Gate()
    cli.emulator.add(Script("inv_queued", steps=[State("queued"), queued_gate, State("succeeded")]))
    try:
        assert gate.reached.wait(5) and queued_gate.reached.wait(5)
        expected = {"inv_ok": (0, "succeeded"), "inv_bad": (1, "failed"), "inv_running": (6, "running"),
                    "inv_queued": (6, "queued")}
        for invocation_id, (code, status) in expected.items():
            run = cli.run("status", invocation_id, inprocess=inprocess)
            assert run.code == code, (invocation_id, run.err)
            (line,) = run.out.splitlines()
            assert line.split()[0] == invocation_id and status in line.split()
            as_json = cli.run("status", invocation_id, "--format", "jsonl", inprocess=inprocess)
            assert as_json.code == code
            obj = json.loads(as_json.out)
            assert obj["id"] == invocation_id and obj["status"] == status
        missing = cli.run("status", "inv_missing", inprocess=inprocess)
        assert missing.code == 3 and "not found" in missing.err.lower(), missing.err
        assert missing.out == ""
    finally:
        gate.release()
        queued_gate.release()


def test_status_row_has_duration_when_finished(cli: Cli) -> None:
    cli.emulator.add(Script("inv_timed", start="2025-06-20T12:00:00Z",
                            steps=[State("running", at=0.5), State("succeeded", at=2.5)])).wait_finished(5)
    run = cli.run("status", "inv_timed")
    assert run.out.split() == ["inv_timed", "emulated-app", "run", "v1.0.0", "succeeded",
                               "2025-06-20T12:00:00.000Z", "2.5s"]


# ---------------------------------------------------------------- list


def _seven(emulator: Emulator) -> List[str]:
    """Seven finished invocations, one second apart (newest last); their ids newest first."""
    ids = []
    for number in range(7):
        app = APP if number % 2 == 0 else "other"
        status = "succeeded" if number % 3 else "failed"
        invocation_id = f"inv_{number}"
        add_finished(emulator, invocation_id, status, app=app, start=f"2025-06-20T12:00:0{number}Z")
        ids.append(invocation_id)
    return ids[::-1]


def _listed_ids(run: Run, jsonl: bool = False) -> List[str]:
    if jsonl:
        return [json.loads(line)["id"] for line in run.out.splitlines()]
    return [line.split()[0] for line in run.out.splitlines()]


@pytest.mark.parametrize("inprocess", [True, False], ids=["in-process", "subprocess"])
def test_list_pages_through_three_pages_or_more(cli: Cli, inprocess: bool) -> None:
    newest_first = _seven(cli.emulator)
    cli.emulator.page_size = 2
    run = cli.run("list", inprocess=inprocess)
    assert run.code == 0, run.err
    assert _listed_ids(run) == newest_first
    offsets = [record.query.get("offset", ["0"])[0] for record in lists(cli.emulator)]
    assert offsets == ["0", "2", "4", "6"]


def test_list_text_is_aligned(cli: Cli) -> None:
    _seven(cli.emulator)
    add_finished(cli.emulator, "inv_with_a_much_longer_id", "succeeded", app="an-app-with-a-long-name")
    run = cli.run("list")
    lines = run.out.splitlines()
    assert len(lines) == 8
    for word in (1, 2, 4):  # app, action+version, status begin in the same column on every line
        starts = {[match.start() for match in re.finditer(r"\S+", line)][word] for line in lines}
        assert len(starts) == 1, run.out
    assert all(not line.endswith(" ") for line in lines)


@pytest.mark.parametrize("inprocess", [True, False], ids=["in-process", "subprocess"])
def test_list_jsonl(cli: Cli, inprocess: bool) -> None:
    newest_first = _seven(cli.emulator)
    cli.emulator.page_size = 3
    run = cli.run("list", "--format", "jsonl", inprocess=inprocess)
    assert run.code == 0
    objects = [json.loads(line) for line in run.out.splitlines()]
    assert [obj["id"] for obj in objects] == newest_first
    assert {"id", "app_name", "action_name", "version", "status", "started_at", "finished_at"} <= set(objects[0])


def test_list_has_more_without_offset_exit_3(cli: Cli) -> None:
    _seven(cli.emulator)
    cli.emulator.page_size = 2
    cli.emulator.list_fault = "has_more_without_offset"
    run = cli.run("list")
    assert run.code == 3, run.err
    assert "X-Has-More: true" in run.err and "X-Next-Offset" in run.err, run.err
    assert len(lists(cli.emulator)) == 1
    subprocess_run = cli.run("list", "--format", "jsonl", inprocess=False)
    assert subprocess_run.code == 3 and len(subprocess_run.err_lines) == 1, subprocess_run.err


@pytest.mark.parametrize("fault, attempts, pages", [
    ("repeat_offset", [None, "repeat_offset"], 2),  # page 2 points at itself: stop after it
    ("repeat_offset", ["repeat_offset"], 1),  # page 1 (offset 0) says 0: the last page
    ("zero_offset", [None, None, "zero_offset"], 3),
    ("no_has_more", ["no_has_more"] * 10, 4),  # the offsets alone tell: all four pages
])
def test_list_pagination_faults_stop_correctly(cli: Cli, fault: str, attempts: List[Optional[str]],
                                               pages: int) -> None:
    newest_first = _seven(cli.emulator)
    cli.emulator.page_size = 2
    cli.emulator.list_attempts = attempts
    run = cli.run("list")
    assert run.code == 0, run.err
    assert len(lists(cli.emulator)) == pages
    assert _listed_ids(run) == newest_first[: min(7, pages * 2)]


def test_list_limit(cli: Cli) -> None:
    newest_first = _seven(cli.emulator)
    cli.emulator.page_size = 2
    run = cli.run("list", "--limit", "3")
    assert _listed_ids(run) == newest_first[:3]
    (request,) = lists(cli.emulator)
    assert request.query["limit"] == ["3"]
    cli.emulator.clear_requests()
    run = cli.run("list", "--limit", "150", "--format", "jsonl")
    assert _listed_ids(run, jsonl=True) == newest_first
    assert lists(cli.emulator)[0].query["limit"] == ["100"]
    zero = cli.run("list", "--limit", "0")
    assert zero.code == 2 and "--limit" in zero.err


def test_list_filters(cli: Cli) -> None:
    newest_first = _seven(cli.emulator)
    run = cli.run("list", "--app", APP, "--action", ACTION, "--version", VERSION, "--status", "failed")
    assert run.code == 0
    assert _listed_ids(run) == ["inv_6", "inv_0"]
    (request,) = lists(cli.emulator)
    assert {name: values[0] for name, values in request.query.items()} == {
        "app_name": APP, "action_name": ACTION, "version": VERSION, "status": "failed"}
    since = cli.run("list", "--since", "2025-06-20T12:00:05Z", "--format", "jsonl")
    assert _listed_ids(since, jsonl=True) == newest_first[:2]
    none = cli.run("list", "--app", "nothing-here")
    assert none.code == 0 and none.out == "" and "no invocation matches" in none.err
    days = cli.run("list", "--since", "2d")
    assert lists(cli.emulator)[-1].query["since"] == ["48h"] and days.code == 0


@pytest.mark.parametrize("args", [["--status", "done"], ["--since", "yesterday"], ["--limit", "-1"]])
def test_list_bad_arguments_exit_2(cli: Cli, args: List[str]) -> None:
    run = cli.run("list", *args)
    assert run.code == 2, run.err
    assert cli.emulator.requests == []


# ================================================================ 2. exactly once under POST faults


def _one_invocation_followed(cli: Cli, run: Run) -> None:
    assert run.code == 0, run.err
    assert len(cli.emulator.invocations_created) == 1, cli.emulator.invocations_created
    printed_once(run.out)
    new_id = cli.emulator.invocations_created[0]
    assert new_id in run.err


@pytest.mark.parametrize("fault", [PostFault(drop=True, create=True), PostFault(status=500, create=True),
                                   PostFault(status=502, create=True),
                                   PostFault(status=503, create=True),  # 503 without Retry-After: maybe sent
                                   PostFault(drop=True, create=True, delay=0.3)],
                         ids=["drop-after-create", "500-after-create", "502-after-create", "503-after-create",
                              "slow-drop-after-create"])
def test_ambiguous_post_that_created_is_found_not_resent(cli: Cli, fault: PostFault, short_settle: None) -> None:
    cli.emulator.post_attempts = [fault]
    run = cli.invoke("--payload", '{"n": 1}')
    _one_invocation_followed(cli, run)
    assert len(posts(cli.emulator)) == 1, "an ambiguous POST was sent again"
    assert lists(cli.emulator), "the list was not asked"
    assert lists(cli.emulator)[0].query["app_name"] == [APP]


@pytest.mark.parametrize("fault", [PostFault(drop=True), PostFault(status=500), PostFault(status=504)],
                         ids=["drop", "500", "504"])
def test_ambiguous_post_that_did_not_create_is_reported_exit_4(cli: Cli, fault: PostFault,
                                                                short_settle: None) -> None:
    cli.emulator.post_attempts = [fault]
    run = cli.invoke("--payload", '{"n": 1}')
    assert run.code == 4, run.err
    assert cli.emulator.invocations_created == []
    assert len(posts(cli.emulator)) == 1, "an ambiguous POST was sent again"
    assert "may have reached the API" in run.err and "none is listed" in run.err
    assert "not sent again" in run.err
    assert f"kernel-sse list --app {APP} --action {ACTION} --version {VERSION} --since 20" in run.err
    assert len(lists(cli.emulator)) >= 2, "the list was given no time to settle"


@pytest.mark.parametrize("status", [429, 503])
def test_refusal_with_retry_after_is_retried_once_started(cli: Cli, status: int) -> None:
    cli.emulator.post_attempts = [PostFault(status=status, retry_after="1"),
                                  PostFault(status=status, retry_after="0")]
    started = time.monotonic()
    run = cli.invoke()
    _one_invocation_followed(cli, run)
    assert len(posts(cli.emulator)) == 3
    assert time.monotonic() - started >= 0.9, "Retry-After was not honoured"


def test_refusal_with_retry_after_until_max_retries_exit_4(cli: Cli) -> None:
    cli.emulator.post_fault = PostFault(status=429, retry_after="0")
    run = cli.invoke("--max-retries", "2")
    assert run.code == 4, run.err
    assert "failed 3 times in a row" in run.err and "429" in run.err
    assert len(posts(cli.emulator)) == 3 and cli.emulator.invocations_created == []


def test_not_sent_is_retried(cli: Cli, emulator: Emulator) -> None:
    """Connection refused: nothing was sent; retried, never listed, exit 4 at the end."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = cli.invoke("--max-retries", "1", env=cli.env(KERNEL_BASE_URL=f"http://127.0.0.1:{port}"))
    assert run.code == 4 and "failed 2 times in a row" in run.err, run.err


def test_slow_post_beyond_a_short_timeout_is_found(emulator: Emulator, short_settle: None) -> None:
    """Python API: the answer comes after the timeout; the invocation was created: found in the list."""
    emulator.register_action(APP, ACTION, VERSION, Script(steps=steps(*LINES)))
    emulator.post_attempts = [PostFault(delay=2.0)]
    invocation = kernel_sse.invoke(APP, ACTION, version=VERSION, payload={"slow": True}, timeout=0.5,
                                   api_key=emulator.api_key, base_url=emulator.url)
    assert emulator.invocations_created == [invocation.id]
    assert len(posts(emulator)) == 1
    assert invocation.payload == '{"slow": true}'


def test_slow_post_beyond_the_deadline_exit_4_then_rerun_finds_it(cli: Cli, tmp_path: Path) -> None:
    """CLI: --deadline passes during the POST (created, answer late): exit 4 saying how to look;
    the rerun with the state file finds the invocation and follows it."""
    cli.emulator.post_attempts = [PostFault(delay=3.0)]
    state = str(tmp_path / "state.json")
    first = cli.invoke("--deadline", "1", "--state-file", state, inprocess=False)
    assert first.code == 4, first.err
    assert "may have reached the API" in first.err and "deadline" in first.err, first.err
    assert len(cli.emulator.invocations_created) == 1
    second = cli.invoke("--state-file", state, inprocess=False, program=PROGRAM,
                        env=cli.env(TEST_INVOKE_SETTLE="6"))
    assert second.code == 0, second.err
    assert len(cli.emulator.invocations_created) == 1 and len(posts(cli.emulator)) == 1
    assert f"found invocation {cli.emulator.invocations_created[0]}" in second.err
    printed_once(first.out + second.out)


def test_several_matches_are_reported_not_guessed(cli: Cli, short_settle: None) -> None:
    """Another identical invocation started just before: two match, exit 4."""
    assert cli.invoke("--payload", '{"same": 1}').code == 0
    cli.emulator.post_attempts = [PostFault(), PostFault(drop=True, create=True)]
    run = cli.invoke("--payload", '{"same": 1}')
    assert run.code == 4, run.err
    assert "2 invocations match" in run.err
    assert len(cli.emulator.invocations_created) == 2 and len(posts(cli.emulator)) == 2


def test_payload_decides_which_invocation_is_ours(cli: Cli, short_settle: None) -> None:
    """An invocation of the same action with another payload is not taken for ours."""
    assert cli.invoke("--payload", '{"other": 1}').code == 0
    cli.emulator.post_attempts = [PostFault(), PostFault(drop=True, create=True)]
    run = cli.invoke("--payload", '{"mine": 2}')
    assert run.code == 0, run.err
    assert cli.emulator.invocations_created[1] in run.err
    assert len(posts(cli.emulator)) == 2


# ================================================================ 3. signals at every step of the state file


def _state(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data: Dict[str, Any] = json.load(handle)
            return data
    except (OSError, ValueError):
        return {}


def _requested(path: str) -> bool:
    return bool((_state(path).get("invoke") or {}).get("requested_at"))


class Steps:
    """An action whose invocations wait at a gate after the first two lines."""

    def __init__(self, emulator: Emulator, status: str = "succeeded", gate_at: int = 2) -> None:
        self.gate = Gate()
        emulator.register_action(APP, ACTION, VERSION,
                                 Script(steps=steps(*LINES, status=status, gate_at=gate_at, gate=self.gate)))


class SlowGet:
    seconds = 0.0
    reached: threading.Event

    def __init__(self) -> None:
        self.reached = threading.Event()


@pytest.fixture
def slow_get(monkeypatch: pytest.MonkeyPatch) -> SlowGet:
    """Emulator patch: ``GET /invocations/{id}`` waits ``seconds`` before answering
    (``reached`` is set when one waits)."""
    delay = SlowGet()
    original = kernel_sse_emulator._Handler.do_GET

    def do_get(self: Any) -> None:
        parts = self.path.split("?")[0].split("/")
        if len(parts) == 3 and parts[1] == "invocations" and delay.seconds:
            delay.reached.set()
            self.server.emulator._stopping.wait(delay.seconds)
        original(self)

    monkeypatch.setattr(kernel_sse_emulator._Handler, "do_GET", do_get)
    return delay


STEPS = ["refused-before-post", "in-flight-not-created", "in-flight-created", "answered-not-recorded",
         "recorded", "mid-follow"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("step", STEPS)
def test_signal_at_every_step_of_the_state_file(cli: Cli, tmp_path: Path, slow_get: SlowGet,
                                                 step: str, signum: int) -> None:
    emulator = cli.emulator
    action = Steps(emulator, gate_at=2 if step == "mid-follow" else 0)
    state = str(tmp_path / "state.json")
    env = cli.env(TEST_INVOKE_SETTLE="6")
    args = ["invoke", APP, ACTION, "--version", VERSION, "--payload", '{"k": 1}', "--state-file", state]

    if step == "refused-before-post":  # the first POST is refused; the run waits for Retry-After
        emulator.post_attempts = [PostFault(status=503, retry_after="20")]
    elif step == "in-flight-not-created":
        emulator.post_attempts = [PostFault(drop=True, delay=20)]
    elif step == "in-flight-created":
        emulator.post_attempts = [PostFault(delay=20)]
    elif step == "answered-not-recorded":
        slow_get.seconds = 20
    first = cli.start(*args, env=env)
    try:
        if step in ("refused-before-post", "in-flight-not-created"):
            first.wait_until(lambda: _requested(state) and len(posts(emulator)) == 1, "sent the first POST")
            time.sleep(0.2)
        elif step == "in-flight-created":
            first.wait_until(lambda: _requested(state) and len(emulator.invocations_created) == 1, "created it")
        elif step == "answered-not-recorded":
            first.wait_until(slow_get.reached.is_set, "asked for the new invocation")
        elif step == "recorded":
            first.wait_until(lambda: bool(_state(state).get("invocation_id")), "recorded the id")
        else:
            first.wait_until(lambda: LINES[1] in first.output() and action.gate.reached.is_set(), "printed line 2")
            if signum == signal.SIGKILL:  # only what a checkpoint saved survives a SIGKILL: wait for one
                (emulated,) = emulator.invocations()
                second_ts = [event.timestamp for event in emulated.emitted() if event.kind == "log"][1]
                first.wait_until(lambda: (_state(state).get("checkpoint") or {}).get("since") == second_ts,
                                 "saved the checkpoint")
        recorded_before = _state(state)
        first.signal(signum)
        killed = first.wait()
    finally:
        first.kill()
    assert killed.code == (143 if signum == signal.SIGTERM else -signal.SIGKILL), killed.err
    if step in ("refused-before-post", "in-flight-not-created", "in-flight-created", "answered-not-recorded"):
        assert recorded_before.get("invocation_id") is None and _requested(state)
    if signum == signal.SIGTERM:
        assert "Traceback" not in killed.err

    emulator.post_attempts = []
    slow_get.seconds = 0
    action.gate.release()
    second = Background([*PROGRAM, *args], env, str(tmp_path))
    rerun = second.wait()
    assert rerun.code == 0, rerun.err
    assert len(emulator.invocations_created) == 1, emulator.invocations_created
    new_id = emulator.invocations_created[0]
    assert new_id in rerun.err
    printed_once(killed.out + rerun.out)
    assert _state(state).get("invocation_id") == new_id and _state(state).get("finished_status") == "succeeded"
    if step in ("in-flight-created", "answered-not-recorded"):
        assert len(posts(emulator)) == 1 and f"found invocation {new_id}" in rerun.err
    if step in ("refused-before-post", "in-flight-not-created"):
        assert len(posts(emulator)) == 2 and f"started invocation {new_id}" in rerun.err

    again = cli.run(*args, inprocess=False, env=env)
    assert again.code == 10 and "already succeeded" in again.err, again.err
    assert again.out == ""
    assert len(emulator.invocations_created) == 1


def test_sigint_mid_follow_then_rerun_failed_action(cli: Cli, tmp_path: Path) -> None:
    action = Steps(cli.emulator, status="failed", gate_at=2)
    state = str(tmp_path / "state.json")
    args = ["invoke", APP, ACTION, "--version", VERSION, "--state-file", state]
    first = cli.start(*args)
    try:
        first.wait_until(lambda: LINES[1] in first.output(), "printed line 2")
        first.signal(signal.SIGINT)
        interrupted = first.wait()
    finally:
        first.kill()
    assert interrupted.code == 130, interrupted.err
    action.gate.release()
    rerun = cli.run(*args, inprocess=False)
    assert rerun.code == 1 and "following invocation" in rerun.err, rerun.err
    printed_once(interrupted.out + rerun.out)
    remembered = cli.run(*args)
    assert remembered.code == 11 and "already failed" in remembered.err
    assert len(cli.emulator.invocations_created) == 1


def test_state_file_of_another_action_is_refused(cli: Cli, tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    assert cli.invoke("--state-file", state).code == 0
    cli.emulator.register_action(APP, "other", VERSION, Script(steps=steps("x")))
    run = cli.run("invoke", APP, "other", "--version", VERSION, "--state-file", state)
    assert run.code == 2 and "use another --state-file" in run.err, run.err
    assert len(cli.emulator.invocations_created) == 1


def test_refused_post_clears_requested_at(cli: Cli, tmp_path: Path) -> None:
    """A 404 starts nothing: the state file does not send a rerun looking for it."""
    state = str(tmp_path / "state.json")
    run = cli.run("invoke", APP, "missing", "--version", VERSION, "--state-file", state)
    assert run.code == 3
    assert _state(state)["invoke"]["requested_at"] is None and _state(state)["invocation_id"] is None


# ================================================================ 4. --cancel-on-exit


@pytest.mark.parametrize("cancel", [True, False], ids=["cancel-on-exit", "no-flag"])
def test_cancel_on_exit_with_deadline(cli: Cli, cancel: bool) -> None:
    action = Steps(cli.emulator, gate_at=1)
    try:
        run = cli.invoke("--deadline", "1.5", *(["--cancel-on-exit"] if cancel else []))
        assert run.code == 4, run.err
        assert "deadline" in run.err
        (new_id,) = cli.emulator.invocations_created
        patches = [record for record in cli.emulator.requests if record.method == "PATCH"]
        status = cli.emulator.invocation(new_id).invocation()["status"]
        if cancel:
            assert len(patches) == 1 and json.loads(patches[0].body) == {"status": "failed"}
            assert status == "failed"
            assert f"cancelled invocation {new_id} (--cancel-on-exit)" in run.err
        else:
            assert patches == [] and status == "running" and "cancel" not in run.err
    finally:
        action.gate.release()


def test_cancel_on_exit_on_sigterm(cli: Cli) -> None:
    action = Steps(cli.emulator, gate_at=1)
    first = cli.start("invoke", APP, ACTION, "--version", VERSION, "--cancel-on-exit")
    try:
        first.wait_until(lambda: LINES[0] in first.output(), "printed line 1")
        first.signal(signal.SIGTERM)
        run = first.wait()
    finally:
        first.kill()
        action.gate.release()
    assert run.code == 143, run.err
    (new_id,) = cli.emulator.invocations_created
    assert cli.emulator.invocation(new_id).invocation()["status"] == "failed"
    assert "cancelled invocation" in run.err and "Traceback" not in run.err


def test_cancel_on_exit_not_after_the_terminal_state(cli: Cli, tmp_path: Path) -> None:
    """A plugin error after success (exit 5) leaves the finished invocation alone."""
    plugin = tmp_path / "boom.py"
    plugin.write_text("import kernel_sse\n\n@kernel_sse.hookimpl\ndef on_log(event, context):\n"
                      "    raise RuntimeError('boom')\n", encoding="utf-8")
    run = cli.invoke("--cancel-on-exit", "-p", str(plugin), inprocess=False)
    assert run.code == 5, run.err
    assert not [record for record in cli.emulator.requests if record.method == "PATCH"]
    assert "cancel" not in run.err


# ================================================================ 5. the Python API


def test_python_api(emulator: Emulator) -> None:
    emulator.register_action(APP, ACTION, VERSION, Script(steps=steps(*LINES)))
    settings: Dict[str, Any] = dict(api_key=emulator.api_key, base_url=emulator.url)
    invocation = kernel_sse.invoke(APP, ACTION, version=VERSION, payload={"q": "x"}, async_timeout=60, **settings)
    assert isinstance(invocation, kernel_sse.Invocation)
    assert (invocation.app_name, invocation.action_name, invocation.version) == (APP, ACTION, VERSION)
    assert invocation.id == emulator.invocations_created[0]
    assert invocation.payload == '{"q": "x"}'
    assert json.loads(posts(emulator)[0].body)["async_timeout_seconds"] == 60

    events = list(kernel_sse.Follower(invocation.id, **settings))
    assert [event.message for event in events if isinstance(event, kernel_sse.LogEvent)] == list(LINES)
    final = kernel_sse.get_invocation(invocation.id, **settings)
    assert final.status == "succeeded" and final.is_terminal and final.finished_at is not None

    for number in range(4):
        kernel_sse.invoke(APP, ACTION, version=VERSION, payload_json=f'{{"n": {number}}}', **settings)
    pages = list(kernel_sse.list_invocations(app=APP, limit=2, **settings))
    assert len(pages) == 3 and all(isinstance(page, kernel_sse.InvocationsPage) for page in pages)
    assert [page.has_more for page in pages] == [True, True, False]
    assert [page.next_offset for page in pages] == [2, 4, 0]
    listed = [inv.id for page in pages for inv in page.invocations]
    assert listed == emulator.invocations_created[::-1]
    assert all(isinstance(inv, kernel_sse.Invocation) for page in pages for inv in page.invocations)


def test_python_api_cancel(emulator: Emulator) -> None:
    gate = Gate()
    emulator.register_action(APP, ACTION, VERSION, Script(steps=steps(*LINES, gate_at=1, gate=gate)))
    settings: Dict[str, Any] = dict(api_key=emulator.api_key, base_url=emulator.url)
    try:
        invocation = kernel_sse.invoke(APP, ACTION, version=VERSION, **settings)
        assert gate.reached.wait(5)
        cancelled = kernel_sse.cancel_invocation(invocation.id, output='"stop"', **settings)
        assert cancelled.status == "failed" and cancelled.status_reason == "Invocation was cancelled"
        assert json.loads([r for r in emulator.requests if r.method == "PATCH"][0].body) == {
            "status": "failed", "output": '"stop"'}
        events = list(kernel_sse.follow(invocation.id, **settings))
        assert isinstance(events[-1], kernel_sse.InvocationStateEvent)
        assert events[-1].invocation.status == "failed"
    finally:
        gate.release()


def test_python_api_errors(emulator: Emulator, short_settle: None) -> None:
    settings: Dict[str, Any] = dict(api_key=emulator.api_key, base_url=emulator.url)
    with pytest.raises(kernel_sse.NotFoundError):
        kernel_sse.get_invocation("inv_missing", **settings)
    with pytest.raises(kernel_sse.NotFoundError):
        kernel_sse.cancel_invocation("inv_missing", **settings)
    with pytest.raises(kernel_sse.NotFoundError):
        kernel_sse.invoke("nope", "run", version="1", **settings)
    with pytest.raises(kernel_sse.ConfigurationError, match="not valid JSON"):
        kernel_sse.invoke("demo", "run", version="1", payload_json="{", **settings)
    with pytest.raises(kernel_sse.ConfigurationError, match="not both"):
        kernel_sse.invoke("demo", "run", version="1", payload=1, payload_json="1", **settings)
    with pytest.raises(kernel_sse.ConfigurationError, match="version"):
        kernel_sse.invoke("demo", "run", version="", **settings)
    with pytest.raises(kernel_sse.ConfigurationError, match="async_timeout"):
        kernel_sse.invoke("demo", "run", version="1", async_timeout=5, **settings)
    with pytest.raises(kernel_sse.ConfigurationError, match="cannot be sent as JSON"):
        kernel_sse.invoke("demo", "run", version="1", payload=object(), **settings)
    assert emulator.invocations_created == [] and len(posts(emulator)) == 1  # only the 404
    emulator.clear_requests()
    emulator.post_fault = PostFault(drop=True)
    with pytest.raises(kernel_sse.InvokeUncertain) as caught:
        kernel_sse.invoke("demo", "run", version="1", payload={"speed": 20}, **settings)
    assert (caught.value.app, caught.value.action, caught.value.version) == ("demo", "run", "1")
    assert isinstance(caught.value, kernel_sse.KernelSSEError)
    assert len(posts(emulator)) == 1


def test_python_api_deadline_bounds_retries(emulator: Emulator) -> None:
    emulator.post_fault = PostFault(status=503, retry_after="5")
    started = time.monotonic()
    with pytest.raises(kernel_sse.DeadlineExceeded):
        kernel_sse.invoke("demo", "run", version="1", deadline=1.0, api_key=emulator.api_key, base_url=emulator.url)
    assert time.monotonic() - started < 4
    assert emulator.invocations_created == []


def test_list_invocations_pagination_faults(emulator: Emulator) -> None:
    settings: Dict[str, Any] = dict(api_key=emulator.api_key, base_url=emulator.url)
    _seven(emulator)
    emulator.list_fault = "has_more_without_offset"
    with pytest.raises(kernel_sse.APIStatusError, match="X-Next-Offset"):
        list(kernel_sse.list_invocations(limit=2, **settings))
    emulator.list_fault = "no_has_more"
    pages = list(kernel_sse.list_invocations(limit=3, **settings))
    assert [len(page.invocations) for page in pages] == [3, 3, 1]


# ================================================================ a lone kernel_sse.py (standard library only)


@pytest.mark.parametrize("command", [["status", "inv_ok"], ["list"]])
def test_status_and_list_from_a_lone_copy(cli: Cli, command: List[str]) -> None:
    add_finished(cli.emulator, "inv_ok", "succeeded")
    lone = [sys.executable, "-S", os.path.join(MODULE_DIR, "kernel_sse.py")]  # -S: no site, no pluggy, no plugins
    run = cli.run(*command, inprocess=False, program=lone)
    assert run.code == 0, run.err
    assert run.out.split()[0] == "inv_ok"


def test_invoke_from_a_lone_copy(cli: Cli) -> None:
    lone = [sys.executable, "-S", os.path.join(MODULE_DIR, "kernel_sse.py")]
    run = cli.invoke("--state-file", str(cli.tmp_path / "s.json"), inprocess=False, program=lone)
    assert run.code == 0, run.err
    printed_once(run.out)
