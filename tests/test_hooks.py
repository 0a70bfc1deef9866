"""The hook layer through the real command line: every hook, error isolation, loading.

Plugins here are ``.py`` files written into ``tmp_path`` and loaded with ``-p``,
as a plugin author's drop-in file would be.  They record their calls into the
``kernel_sse_test_recorder`` module, which the ``recorder`` fixture puts into
``sys.modules``.  Every follow runs against the emulator on 127.0.0.1.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import kernel_sse
from kernel_sse import (
    ErrorEvent,
    FollowContext,
    HeartbeatEvent,
    Invocation,
    InvocationStateEvent,
    LogEvent,
    Outcome,
    UnknownEvent,
)
from kernel_sse_emulator import Emulator, Fault, Log, Malformed, Pause, Script, State
from plugin_support import ROOT, basic_script, clean_environment, follow, lines, write_plugin

BUNDLED = list(kernel_sse.BUNDLED_PLUGINS)

RECORDING_PLUGIN = '''
    """Records every hook call into kernel_sse_test_recorder.calls."""
    import kernel_sse
    import kernel_sse_test_recorder as recorder

    __version__ = "9.8.7"

    def _record(name, **kwargs):
        recorder.calls.append((name, kwargs))

    @kernel_sse.hookimpl
    def add_arguments(parser):
        parser.add_argument("--rec-flag", default="unset", help="the recording plugin's option")
        _record("add_arguments", parser=parser)

    @kernel_sse.hookimpl
    def on_start(context):
        _record("on_start", context=context, attempt=context.attempt)

    @kernel_sse.hookimpl
    def on_log(event, context):
        _record("on_log", event=event, context=context)

    @kernel_sse.hookimpl
    def on_state(event, context):
        _record("on_state", event=event, context=context)

    @kernel_sse.hookimpl
    def on_error(event, context):
        _record("on_error", event=event, context=context)

    @kernel_sse.hookimpl
    def on_heartbeat(event, context):
        _record("on_heartbeat", event=event, context=context)

    @kernel_sse.hookimpl
    def on_unknown(event, context):
        _record("on_unknown", event=event, context=context)

    @kernel_sse.hookimpl
    def on_reconnect(attempt, delay, reason, context):
        _record("on_reconnect", attempt=attempt, delay=delay, reason=reason, context=context)

    @kernel_sse.hookimpl
    def on_terminal(invocation, context):
        _record("on_terminal", invocation=invocation, context=context, reconnects=context.reconnects)

    @kernel_sse.hookimpl
    def on_finish(outcome, context):
        _record("on_finish", outcome=outcome, context=context)
'''

RAISING_PLUGIN = '''
    import kernel_sse

    @kernel_sse.hookimpl
    def on_log(event):
        raise RuntimeError("kaboom " + event.message)
'''


class Recorder:
    """The calls the recording plugin saw, and its file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: List[Tuple[str, Dict[str, Any]]] = []

    def names(self) -> List[str]:
        return [name for name, _ in self.calls]

    def of(self, hook: str) -> List[Dict[str, Any]]:
        return [kwargs for name, kwargs in self.calls if name == hook]

    def events(self, hook: str) -> List[Any]:
        return [kwargs["event"] for kwargs in self.of(hook)]

    def one(self, hook: str) -> Dict[str, Any]:
        found = self.of(hook)
        assert len(found) == 1, (hook, self.names())
        return found[0]


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_environment(monkeypatch)


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """The recording plugin, written to ``tmp_path/rec.py``."""
    result = Recorder(write_plugin(tmp_path, "rec", RECORDING_PLUGIN))
    module = types.ModuleType("kernel_sse_test_recorder")
    module.calls = result.calls  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kernel_sse_test_recorder", module)
    return result


def run(emulator: Emulator, script: Script, *args: str) -> int:
    emulator.add(script)
    return follow(script.id, *args)


# ---------------------------------------------------------------- one test per hook


def test_hook_add_arguments(
    emulator_env: Emulator, recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(emulator_env, basic_script(), "-p", str(recorder.path), "--rec-flag", "yes")
    assert code == 0
    parsers = [kwargs["parser"] for kwargs in recorder.of("add_arguments")]
    assert {parser.prog for parser in parsers} == {"kernel-sse follow", "kernel-sse invoke", "kernel-sse watch", "kernel-sse demo"}
    assert recorder.one("on_start")["context"].options["rec_flag"] == "yes"
    assert kernel_sse.main(["follow", "--help", "-p", str(recorder.path)]) == 0
    assert "--rec-flag" in capsys.readouterr().out


def test_hook_on_start(emulator_env: Emulator, recorder: Recorder) -> None:
    assert run(emulator_env, basic_script(), "-p", str(recorder.path)) == 0
    assert recorder.names()[recorder.names().index("on_start") + 1] == "on_state"  # before any event
    start = recorder.one("on_start")
    context: FollowContext = start["context"]
    assert start["attempt"] == 0  # no request yet
    assert context.invocation_id == "inv_basic"
    assert context.base_url == emulator_env.url
    assert context.started_at.tzinfo is not None
    assert context.elapsed >= 0
    assert context.options["format"] == "text"
    assert context.attempt == 1  # read after the follow: one request was made
    with pytest.raises(AttributeError):
        context.invocation_id = "other"  # type: ignore[misc]


def test_hook_on_log(emulator_env: Emulator, recorder: Recorder) -> None:
    assert run(emulator_env, basic_script(), "-p", str(recorder.path)) == 0
    events = recorder.events("on_log")
    assert all(isinstance(event, LogEvent) for event in events)
    assert [event.message for event in events] == ["hello", "world"]
    assert all(isinstance(kwargs["context"], FollowContext) for kwargs in recorder.of("on_log"))


def test_hook_on_state(emulator_env: Emulator, recorder: Recorder) -> None:
    assert run(emulator_env, basic_script(status="failed"), "-p", str(recorder.path)) == 1
    events = recorder.events("on_state")
    assert all(isinstance(event, InvocationStateEvent) for event in events)
    assert [event.invocation.status for event in events] == ["queued", "running", "failed"]
    assert events[-1].invocation.app_name == "shop"


def test_hook_on_error(emulator_env: Emulator, recorder: Recorder) -> None:
    script = Script("inv_err", (State("running"), Malformed(), Log("still here"), State("succeeded")))
    assert run(emulator_env, basic_script(), "-p", str(recorder.path)) == 0
    assert run(emulator_env, script, "-p", str(recorder.path)) == 0
    events: List[ErrorEvent] = recorder.events("on_error")
    assert [event.error.code for event in events] == ["selector_timeout", "client_malformed_event"]
    assert events[0].error.message == "timed out; retrying"
    assert (events[1].error.details[0].message or "").startswith('{"event": "log"')  # the raw data


def test_hook_on_heartbeat(emulator_env: Emulator, recorder: Recorder) -> None:
    script = Script("inv_hb", (State("running"), Pause(1.0), State("succeeded")))
    assert run(emulator_env, script, "-p", str(recorder.path)) == 0
    events = recorder.events("on_heartbeat")
    assert events and all(isinstance(event, HeartbeatEvent) for event in events)
    assert recorder.events("on_log") == []


def test_hook_on_unknown(emulator_env: Emulator, recorder: Recorder) -> None:
    assert run(emulator_env, basic_script(), "-p", str(recorder.path)) == 0
    (event,) = recorder.events("on_unknown")
    assert isinstance(event, UnknownEvent)
    assert event.event == "browser_ready"
    assert event.raw["session"] == "s1"


def test_hook_on_reconnect(emulator_env: Emulator, recorder: Recorder) -> None:
    script = basic_script("inv_drop", attempts=(Fault(drop_after=3),))
    assert run(emulator_env, script, "-p", str(recorder.path)) == 0
    reconnect = recorder.one("on_reconnect")
    assert reconnect["attempt"] == 2
    assert isinstance(reconnect["delay"], float) and reconnect["delay"] >= 0
    assert isinstance(reconnect["reason"], str) and reconnect["reason"]
    assert recorder.one("on_finish")["context"].reconnects == 1
    # the follow resumed: every event once
    assert [event.message for event in recorder.events("on_log")] == ["hello", "world"]


def test_hook_on_terminal(emulator_env: Emulator, recorder: Recorder) -> None:
    # Dropped twice (each resume replays the boundary event again): still once.
    script = basic_script("inv_term", attempts=(Fault(drop_after=2), Fault(drop_after=3)))
    assert run(emulator_env, script, "-p", str(recorder.path)) == 0
    terminal = recorder.one("on_terminal")
    invocation = terminal["invocation"]
    assert isinstance(invocation, Invocation)
    assert invocation.status == "succeeded" and invocation.output == '{"answer":42}'
    assert terminal["reconnects"] == 2
    assert [event.invocation.status for event in recorder.events("on_state")] == ["queued", "running", "succeeded"]
    names = recorder.names()
    assert names.index("on_terminal") > max(i for i, name in enumerate(names) if name == "on_state")
    assert names[-1] == "on_finish"


@pytest.mark.parametrize(
    "case, status, code",
    [
        ("succeeded", "succeeded", 0),
        ("failed", "failed", 1),
        ("gave_up", "gave_up", 4),
        ("deadline", "deadline", 4),
        ("refused", "refused", 3),
        ("interrupted", "interrupted", 130),
    ],
)
def test_hook_on_finish(
    emulator_env: Emulator,
    recorder: Recorder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    status: str,
    code: int,
) -> None:
    args = ["-p", str(recorder.path)]
    if case in ("succeeded", "failed"):
        emulator_env.add(basic_script("inv_fin", status=case))
    elif case == "gave_up":
        emulator_env.add(basic_script("inv_fin", fault=Fault(status=500)))
        args += ["--max-retries", "0"]
    elif case == "deadline":
        emulator_env.add(Script("inv_fin", (State("running"), Pause(5), State("succeeded"))))
        args += ["--deadline", "0.3"]
    elif case == "interrupted":  # ^C while a hook runs, as a KeyboardInterrupt from anywhere would be
        emulator_env.add(basic_script("inv_fin"))
        stop = write_plugin(tmp_path, "ctrl_c", """
            import kernel_sse

            @kernel_sse.hookimpl
            def on_log():
                raise KeyboardInterrupt
        """)
        args += ["-p", str(stop)]
    # refused: no such invocation (404)
    assert follow("inv_fin", *args) == code
    finish = recorder.one("on_finish")
    outcome: Outcome = finish["outcome"]
    assert (outcome.status, outcome.exit_code) == (status, code)
    assert recorder.names()[-1] == "on_finish"
    assert len(recorder.of("on_terminal")) == (1 if status in ("succeeded", "failed") else 0)
    if status == "refused":
        assert outcome.invocation is None and outcome.message
    if status == "deadline":
        assert outcome.invocation is not None and outcome.invocation.status == "running"
    if outcome.message:
        assert outcome.message in capsys.readouterr().err


# ---------------------------------------------------------------- a plugin that raises


def test_raising_plugin_is_reported_once_and_others_still_get_the_event(
    emulator_env: Emulator, recorder: Recorder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boom = write_plugin(tmp_path, "boom", RAISING_PLUGIN)
    # Hooks run last-registered first: boom before rec, rec before the bundled console.
    code = run(emulator_env, basic_script(), "-p", str(recorder.path), "-p", str(boom))
    assert code == 5  # it would have been 0
    out, err = capsys.readouterr()
    assert [event.message for event in recorder.events("on_log")] == ["hello", "world"]
    assert "hello" in out and "world" in out  # the console, called after boom
    reports = [line for line in err.splitlines() if "boom" in line]
    assert reports == ["kernel-sse: plugin 'boom' failed in on_log: RuntimeError: kaboom hello"]
    assert recorder.one("on_finish")["outcome"].status == "succeeded"


def test_raising_plugin_keeps_a_failed_exit_status(
    emulator_env: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boom = write_plugin(tmp_path, "boom", RAISING_PLUGIN)
    assert run(emulator_env, basic_script(status="failed"), "-p", str(boom)) == 1
    assert "plugin 'boom' failed in on_log" in capsys.readouterr().err


def test_strict_plugins_stop_at_the_first_error(
    emulator_env: Emulator, recorder: Recorder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boom = write_plugin(tmp_path, "boom", RAISING_PLUGIN)
    code = run(emulator_env, basic_script(), "-p", str(recorder.path), "-p", str(boom), "--strict-plugins")
    assert code == 5
    assert recorder.events("on_log") == []  # boom runs first and stops the follow
    assert recorder.of("on_terminal") == []
    assert recorder.one("on_finish")["outcome"].status == "plugin_error"
    err = capsys.readouterr().err
    assert "plugin 'boom' failed in on_log" in err
    assert "kaboom world" not in err


def test_strict_plugins_report_the_error_once(
    emulator_env: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boom = write_plugin(tmp_path, "boom", RAISING_PLUGIN)
    assert run(emulator_env, basic_script(), "-p", str(boom), "--strict-plugins") == 5
    assert len([line for line in capsys.readouterr().err.splitlines() if "kaboom" in line]) == 1


def test_an_option_clash_blames_the_plugin_that_adds_it_second(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clash = write_plugin(tmp_path, "clash", """
        import kernel_sse

        @kernel_sse.hookimpl
        def add_arguments(parser):
            parser.add_argument("--jsonl-file")
    """)
    assert kernel_sse.main(["follow", "inv", "-p", str(clash)]) == 2
    err = capsys.readouterr().err
    assert "plugin 'clash' failed in add_arguments" in err and "'jsonl'" not in err


# ---------------------------------------------------------------- loading


def _fake_distribution(site: Path, module: str, entry_name: str) -> None:
    """An installed distribution with a ``kernel_sse`` entry point, as pip leaves it."""
    info = site / "kernel_sse_fake_ep-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernel-sse-fake-ep\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[kernel_sse]\n{entry_name} = {module}\n")
    write_plugin(site, module, "import kernel_sse\n\n@kernel_sse.hookimpl\ndef on_log(event):\n    pass\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path holding plugin modules and a fake installed distribution."""
    folder = tmp_path / "site"
    folder.mkdir()
    _fake_distribution(folder, "fake_ep_plugin", "fake_ep")
    write_plugin(folder, "env_plugin", '__version__ = "1.2.3"\nimport kernel_sse\n\n'
                 "@kernel_sse.hookimpl\ndef on_state(event):\n    pass\n")
    write_plugin(folder, "module_plugin", "import kernel_sse\n\n@kernel_sse.hookimpl\ndef on_finish():\n    pass\n")
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in ("fake_ep_plugin", "env_plugin", "module_plugin"):
        sys.modules.pop(name, None)


def plugins_json(capsys: pytest.CaptureFixture[str], *args: str) -> List[Dict[str, Any]]:
    assert kernel_sse.main(["plugins", "--json", *args]) == 0
    result: List[Dict[str, Any]] = json.loads(capsys.readouterr().out)
    return result


def test_loading_order_bundled_entry_points_environment_then_p(
    site: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KERNEL_SSE_PLUGINS", "env_plugin, ")
    found = plugins_json(capsys, "-p", "module_plugin", "-p", str(recorder.path))
    assert [(p["name"], p["source"]) for p in found] == [
        *[(name, "bundled") for name in BUNDLED],
        ("fake_ep", "entrypoint"),
        ("env_plugin", "env"),
        ("module_plugin", "-p"),
        ("rec", "-p"),
    ]
    by_name = {p["name"]: p for p in found}
    assert by_name["env_plugin"]["version"] == "1.2.3"
    assert by_name["rec"]["version"] == "9.8.7"
    assert by_name["fake_ep"]["hooks"] == ["on_log"]
    assert by_name["rec"]["hooks"] == sorted(kernel_sse.HOOK_NAMES)
    assert by_name["console"]["hooks"]
    assert all(isinstance(p["version"], str) and p["version"] for p in found)
    assert set(found[0]) == {"name", "source", "version", "hooks"}


def test_disable_plugin_autoload_skips_entry_points(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KERNEL_SSE_DISABLE_PLUGIN_AUTOLOAD", "1")
    names = [p["name"] for p in plugins_json(capsys, "-p", "module_plugin")]
    assert names == [*BUNDLED, "module_plugin"]


def test_p_no_name_blocks_a_plugin(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [p["name"] for p in plugins_json(capsys, "-p", "no:console", "-p", "no:fake_ep")]
    assert "console" not in names and "fake_ep" not in names and "jsonl" in names
    monkeypatch.setenv("KERNEL_SSE_PLUGINS", "no:webhook,env_plugin")
    names = [p["name"] for p in plugins_json(capsys, "-p", "no:env_plugin")]
    assert "webhook" not in names and "env_plugin" not in names


def test_blocking_the_console_leaves_text_output_silent(
    emulator_env: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(emulator_env, basic_script(), "-p", "no:console") == 0
    assert capsys.readouterr().out == ""


def test_plain_follow_prints_text_through_the_bundled_console(
    emulator_env: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(emulator_env, basic_script()) == 0
    out = capsys.readouterr().out
    assert "hello" in out and "invocation inv_basic (shop scrape v1.0.0) succeeded" in out


@pytest.mark.parametrize(
    "source, message",
    [
        ("raise ImportError('needs the frobnicate package')", "failed to import: ImportError: needs the frobnicate"),
        ("import kernel_sse\n\n@kernel_sse.hookimpl\ndef on_lgo(event):\n    pass\n",
         "'on_lgo' is not a kernel-sse hook; did you mean 'on_log'?"),
        ("def broken(:\n", "failed to import: SyntaxError"),
    ],
    ids=["import-error", "unknown-hook", "syntax-error"],
)
def test_a_plugin_that_cannot_load_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, message: str
) -> None:
    path = write_plugin(tmp_path, "bad", source)
    assert kernel_sse.main(["follow", "inv", "-p", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("kernel-sse: ") and message in err and "bad" in err
    assert "Traceback" not in err


def test_a_missing_plugin_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kernel_sse.main(["follow", "inv", "-p", str(tmp_path / "nope.py")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("KERNEL_SSE_PLUGINS", "no_such_module_here")
    assert kernel_sse.main(["follow", "inv"]) == 2
    assert "no_such_module_here" in capsys.readouterr().err


def test_an_entry_point_that_fails_to_load_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_distribution(tmp_path, "broken_ep_plugin", "broken_ep")
    (tmp_path / "broken_ep_plugin.py").write_text("raise RuntimeError('half installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert kernel_sse.main(["plugins"]) == 2
    assert "broken_ep" in capsys.readouterr().err
    monkeypatch.setenv("KERNEL_SSE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert kernel_sse.main(["plugins"]) == 0


def test_plugins_listing_as_text(recorder: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    assert kernel_sse.main(["plugins", "-p", str(recorder.path)]) == 0
    out = lines(capsys.readouterr().out)
    assert out[0].startswith("console ") and "(bundled)" in out[0]
    assert out[-1].startswith("rec 9.8.7 (-p): add_arguments, ")


def test_trace_shows_hook_calls_on_stderr(
    emulator_env: Emulator, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(emulator_env, basic_script(), "-p", str(recorder.path)) == 0
    assert "trace" not in capsys.readouterr().err
    monkeypatch.setenv("KERNEL_SSE_TRACE", "1")
    assert run(emulator_env, basic_script("inv_trace"), "-p", str(recorder.path)) == 0
    err = capsys.readouterr().err
    for call in ("rec.on_start(context)", "rec.on_log(event, context)", "console.on_log(event, context)",
                 "rec.on_terminal(invocation, context)", "rec.on_finish(outcome, context)"):
        assert f"kernel-sse trace: {call}" in err


def test_the_context_never_holds_the_api_key(
    emulator_env: Emulator, recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = emulator_env.api_key
    assert key
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    monkeypatch.delenv("KERNEL_API_KEY")
    script = basic_script(attempts=(Fault(drop_after=3),))
    assert run(emulator_env, script, "-p", str(recorder.path), "--api-key-file", str(key_file)) == 0
    for name, kwargs in recorder.calls:
        context = kwargs.get("context")
        if context is None:
            continue
        seen = [repr(context), repr(dict(context.options)), context.base_url, str(vars(context))]
        seen += [repr(value) for value in kwargs.values()]
        assert not any(key in text for text in seen), name


def test_a_hook_may_take_a_subset_of_its_arguments(
    emulator_env: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = write_plugin(tmp_path, "subset", '''
        import sys
        import kernel_sse

        @kernel_sse.hookimpl
        def on_log(event):
            print("subset saw", event.message, file=sys.stderr)

        @kernel_sse.hookimpl
        def on_reconnect(reason):
            print("subset lost", reason, file=sys.stderr)

        @kernel_sse.hookimpl
        def on_finish():
            print("subset finished", file=sys.stderr)
    ''')
    script = basic_script(attempts=(Fault(drop_after=3),))
    assert run(emulator_env, script, "-p", str(plugin)) == 0
    err = capsys.readouterr().err
    assert "subset saw hello" in err and "subset saw world" in err
    assert "subset lost " in err and err.rstrip().endswith("subset finished")


def test_without_pluggy_a_plugin_request_is_one_clear_line(
    emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pluggy", None)
    assert follow("inv_x", "-p", "anything") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "pluggy" in err and "pip install pluggy" in err
    monkeypatch.setenv("KERNEL_SSE_PLUGINS", "anything")
    assert follow("inv_x") == 2
    assert "pip install pluggy" in capsys.readouterr().err


def test_without_pluggy_a_plain_follow_still_prints(
    emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pluggy", None)
    assert run(emulator_env, basic_script()) == 0
    out, err = capsys.readouterr()
    assert "hello" in out and "[succeeded]" in out and '"answer": 42' in out
    assert err == ""
    assert run(emulator_env, basic_script("inv_json"), "--format", "jsonl", "-p", "no:console") == 0
    assert json.loads(lines(capsys.readouterr().out)[-1])["invocation"]["status"] == "succeeded"


# ---------------------------------------------------------------- the README


def _signatures() -> List[str]:
    result = []
    for name in kernel_sse.HOOK_NAMES:
        parameters = list(inspect.signature(getattr(kernel_sse.HookSpecs, name)).parameters)[1:]
        result.append(f"{name}({', '.join(parameters)})")
    return result


def test_every_hook_is_a_hookspec() -> None:
    specs = {name for name, _ in inspect.getmembers(kernel_sse.HookSpecs, inspect.isfunction)}
    assert specs == set(kernel_sse.HOOK_NAMES)
    for name in kernel_sse.HOOK_NAMES:
        function = getattr(kernel_sse.HookSpecs, name)
        assert function.__doc__, name


@pytest.mark.parametrize("document", ["README.md"])
def test_every_hook_is_documented_with_its_signature(document: str) -> None:
    path = ROOT / document
    if not path.exists():
        pytest.skip(f"{document} is not in this checkout")
    text = path.read_text(encoding="utf-8")
    missing = [signature for signature in _signatures() if f"`{signature}`" not in text]
    assert not missing, f"{document} does not document these hooks: {missing}"
