"""Edge cases of the follow loop and the command line, run in-process.

The subprocess tests in ``test_cli.py`` prove the same contracts end to end;
these reach the corners (signals, broken pipes, state-file failures, odd
timestamps and bodies) where a test in the same process is simpler.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, List

import pytest

import kernel_sse
from kernel_sse import Checkpoint, ConfigurationError, Follower, LogEvent
from kernel_sse_emulator import Emulator, Fault, Log, Script, State, Step
from plugin_support import basic_script, clean_environment, follow, write_plugin


@pytest.fixture(autouse=True)
def environment(emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Key and base URL from the emulator; no plugin settings from the machine."""
    clean_environment(monkeypatch)
    yield


def messages(events: List[kernel_sse.KernelEvent]) -> List[str]:
    """The messages of the log events."""
    return [event.message for event in events if isinstance(event, LogEvent)]


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    "bad",
    [[], {"since": 5}, {"since": None, "seen": "x"}, {"since": None, "seen": [1]}, {"since": "yesterday"}],
)
def test_checkpoint_from_json_refuses_what_it_did_not_write(bad: object) -> None:
    with pytest.raises(ValueError):
        Checkpoint.from_json(bad)


def test_checkpoint_round_trip() -> None:
    stamp = "2025-06-20T12:00:00Z"
    point = Checkpoint(stamp, ((stamp, "aa"), (stamp, "aa"), (stamp, "bb")), ("cc",), "2025-06-20T11:00:00Z")
    assert Checkpoint.from_json(json.loads(json.dumps(point.to_json()))) == point


def test_checkpoint_of_the_older_form_still_loads() -> None:
    """A state file written before fingerprints: ``seen`` held the data delivered at ``since``."""
    stamp = "2025-06-20T12:00:00Z"
    point = Checkpoint.from_json({"since": stamp, "seen": ["a", "a", "b"]})
    assert point.since == stamp
    assert [when for when, _print in point.seen] == [stamp] * 3
    assert point.seen[0] == point.seen[1] != point.seen[2]


def test_resume_across_timestamp_shapes(emulator: Emulator) -> None:
    """The boundary and the replay may spell time differently (offsets, fewer
    digits): the order is still by time, with nanoseconds."""
    steps: List[Step] = [
        Log("one", at="2025-06-20T12:00:00.100000001Z"),
        Log("two", at="2025-06-20T14:00:00.100000002+02:00"),
        Log("three", at="2025-06-20T12:00:00.2Z"),
        State("succeeded", at="2025-06-20T12:00:01Z"),
    ]
    emulator.add(Script("inv_shapes", steps, attempts=[Fault(drop_after=2)]))
    follower = Follower("inv_shapes", backoff_base=0.001, idle_timeout=5)
    assert messages(list(follower)) == ["one", "two", "three"]
    assert follower.reconnects == 1


def test_checkpoint_of_another_shape_resumes_without_repeats(emulator: Emulator) -> None:
    steps: List[Step] = [
        Log("one", at="2025-06-20T12:00:00.1Z"),
        Log("two", at="2025-06-20T12:00:00.2Z"),
        State("succeeded", at="2025-06-20T12:00:00.3Z"),
    ]
    emulator.add(Script("inv_ckpt", steps))
    first = Follower("inv_ckpt", idle_timeout=5)
    list(first)
    # The same instant written with an offset: nothing before it comes again.
    since = "2025-06-20T14:00:00.1+02:00"
    data = [event.data for event in emulator.invocation("inv_ckpt").emitted() if "one" in event.data.decode()]
    older_form = Checkpoint.from_json({"since": since, "seen": [data[0].decode()]})
    resumed = Follower("inv_ckpt", idle_timeout=5, checkpoint=older_form)
    assert messages(list(resumed)) == ["two"]


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"invocation_id": ""}, "empty"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"project_id": "p\u20ac"}, "header"),
        ({"base_url": "ftp://example.com"}, "http(s)"),
    ],
)
def test_bad_configuration_is_refused_before_any_request(
    emulator: Emulator, kwargs: dict, words: str  # type: ignore[type-arg]
) -> None:
    arguments = {"invocation_id": "inv", **kwargs}
    invocation_id = arguments.pop("invocation_id")
    with pytest.raises(ConfigurationError) as caught:
        Follower(invocation_id, **arguments)
    assert words in str(caught.value)
    assert emulator.requests == []


def test_project_id_header_is_sent(emulator: Emulator) -> None:
    emulator.add(basic_script("inv_project"))
    list(Follower("inv_project", project_id="proj_1", idle_timeout=5))
    assert emulator.requests[0].header("X-Kernel-Project-Id") == "proj_1"


# ---------------------------------------------------------------- HTTP details


def test_retry_after_as_an_http_date_is_honoured(emulator: Emulator) -> None:
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=1), usegmt=True)
    emulator.add(basic_script("inv_date", attempts=[Fault(status=503, retry_after=when)]))
    follower = Follower("inv_date", idle_timeout=5, backoff_base=0.001)
    delays: List[float] = []
    follower.on_retry = lambda attempt, delay, reason: delays.append(delay)
    assert messages(list(follower)) == ["hello", "world"]
    assert len(delays) == 1 and 0.0 <= delays[0] <= 1.5


def test_a_garbled_retry_after_falls_back_to_backoff(emulator: Emulator) -> None:
    emulator.add(basic_script("inv_garbled", attempts=[Fault(status=503, retry_after="soon, maybe")]))
    follower = Follower("inv_garbled", idle_timeout=5, backoff_base=0.001)
    assert messages(list(follower)) == ["hello", "world"]
    assert follower.reconnects == 1


def test_a_refused_key_says_which_variable_to_check(make_emulator: object) -> None:
    emulator = make_emulator(api_key="the-right-key")  # type: ignore[operator]
    emulator.add(basic_script("inv_auth"))
    follower = Follower("inv_auth", api_key="a-wrong-key", base_url=emulator.url, idle_timeout=5)
    with pytest.raises(kernel_sse.AuthenticationError) as caught:
        list(follower)
    assert caught.value.status == 401 and "KERNEL_API_KEY" in str(caught.value)


def test_error_body_parsing() -> None:
    assert kernel_sse._error_body(404, b'{"code": "not_found", "message": "no"}') == ("not_found", "no")
    assert kernel_sse._error_body(404, b"<html>nope</html>") == ("not_found", "Not Found")
    assert kernel_sse._error_body(499, b"[") == ("error", "error")


# ---------------------------------------------------------------- output functions


def test_format_result_without_finish_time_and_with_plain_output() -> None:
    started = datetime(2025, 6, 20, tzinfo=timezone.utc)
    invocation = kernel_sse.Invocation("inv", "app", "1", "run", started, "failed", output="not json")
    text = kernel_sse.format_result(invocation, elapsed=2.5)
    assert "followed for 2.5s" in text and "output: not json" in text


def test_a_line_stdout_cannot_encode_is_escaped_not_lost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with open(path, "w", encoding="ascii") as stream:
        monkeypatch.setattr(sys, "stdout", stream)
        kernel_sse.print_line("caf\u00e9 \u2713")
        event = kernel_sse.parse_event(
            kernel_sse.ServerSentEvent(data='{"event":"log","timestamp":"2025-06-20T12:00:00Z","message":"\u2713"}')
        )
        kernel_sse.print_line(kernel_sse.format_json(event), event)
    written = path.read_text(encoding="ascii").splitlines()
    assert written[0] == "caf\\xe9 \\u2713"
    assert json.loads(written[1])["message"] == "\u2713"


# ---------------------------------------------------------------- the command line, in-process


def test_signals_and_broken_pipes_end_the_run_with_their_codes(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin stands in for the outside world: SIGTERM, Ctrl-C, a closed pipe."""
    plugin = write_plugin(
        tmp_path,
        "world",
        '''
        import os, signal
        import kernel_sse

        @kernel_sse.hookimpl
        def add_arguments(parser):
            parser.add_argument("--world", default="")

        @kernel_sse.hookimpl
        def on_log(event, context):
            what = context.options["world"]
            if what == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            elif what == "sigint":
                raise KeyboardInterrupt
            elif what == "pipe":
                raise BrokenPipeError(32, "Broken pipe")
        ''',
    )
    for index, (what, code) in enumerate([("sigterm", 143), ("sigint", 130), ("pipe", 141)]):
        invocation_id = f"inv_world_{index}"
        emulator.add(basic_script(invocation_id))
        state = tmp_path / f"{what}.state"
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(1)
        try:
            previous = signal.getsignal(signal.SIGTERM)
            result = follow(invocation_id, "-p", str(plugin), "--world", what, "--state-file", str(state))
            assert signal.getsignal(signal.SIGTERM) == previous
        finally:
            os.dup2(saved, 1)  # the broken-pipe path points stdout at /dev/null
            os.close(saved)
            os.close(devnull)
        assert result == code, what
        saved_state = json.loads(state.read_text())
        assert saved_state["invocation_id"] == invocation_id, "state saved first"
        # The line whose hooks were cut short is not counted: the next run hands it over again.
        assert saved_state["checkpoint"]["since"] is None and saved_state["checkpoint"]["seen"] == []
    capsys.readouterr()


def test_a_run_holding_the_lock_makes_the_next_exit_75(emulator: Emulator, tmp_path: Path) -> None:
    import fcntl

    emulator.add(basic_script("inv_lock"))
    state = tmp_path / "inv.state"
    with open(str(state) + ".lock", "a+") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert follow("inv_lock", "--state-file", str(state)) == kernel_sse.EXIT_LOCKED
    assert emulator.requests == []
    assert follow("inv_lock", "--state-file", str(state), "-q") == 0
    # Finished: a later run makes no request and says it only remembers the outcome.
    emulator.clear_requests()
    assert follow("inv_lock", "--state-file", str(state)) == kernel_sse.EXIT_REMEMBERED_SUCCEEDED
    assert emulator.requests == []


def test_state_is_saved_while_following(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel_sse, "_SAVE_EVERY", 0.0)
    emulator.add(basic_script("inv_saves"))
    state = tmp_path / "inv.state"
    assert follow("inv_saves", "--state-file", str(state), "-q") == 0
    saved = json.loads(state.read_text())
    assert saved["finished_status"] == "succeeded" and saved["invocation_id"] == "inv_saves"
    assert oct(state.stat().st_mode & 0o777) == "0o600"


def test_an_unreadable_state_file_is_a_usage_error(emulator: Emulator, tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.state"
    folder.mkdir()  # reading a folder fails with an OSError other than "missing"
    assert follow("inv", "--state-file", str(folder)) == kernel_sse.EXIT_USAGE


def test_verbose_prints_why_it_reconnects(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    emulator.add(basic_script("inv_verbose", attempts=[Fault(drop_after=3)]))
    assert follow("inv_verbose", "-v", "--idle-timeout", "5") == 0
    assert "attempt 2" in capsys.readouterr().err


def test_bad_numbers_on_the_command_line_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert follow("inv", "--max-retries", "-1") == kernel_sse.EXIT_USAGE
    assert follow("inv", "--deadline", "0") == kernel_sse.EXIT_USAGE
    assert kernel_sse.main([]) == kernel_sse.EXIT_USAGE
    assert kernel_sse.main(["--version"]) == 0
    capsys.readouterr()


def test_attached_plugin_flag_is_understood(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = write_plugin(tmp_path, "attached", "import kernel_sse\n__version__ = '1.2.3'\n")
    assert kernel_sse.main(["plugins", f"-p{plugin}"]) == 0
    assert "attached 1.2.3 (-p)" in capsys.readouterr().out


def test_an_internal_error_is_not_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(kernel_sse, "_run_follow", broken)
    assert follow("inv") == kernel_sse.EXIT_INTERNAL
    assert "internal error" in capsys.readouterr().err


def test_demo_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert kernel_sse.main(["demo", "--speed", "40", "--format", "jsonl"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[-1])["event"] == "invocation_state"
    assert json.loads(out[-1])["invocation"]["status"] == "succeeded"


def test_docstrings_of_shipped_code_are_valid_utf8() -> None:
    """Python 3.13 compiles docstrings to UTF-8: a lone surrogate escape in one
    (``\\ud800`` written unescaped) stops the module from importing there."""
    import ast

    root = Path(__file__).resolve().parent.parent
    files = [root / "kernel_sse.py", root / "kernel_sse_emulator.py", *sorted((root / "plugins").glob("*.py"))]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node, clean=False)
                if docstring is not None:
                    docstring.encode("utf-8")  # raises for a lone surrogate
