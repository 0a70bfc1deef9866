"""The bundled plugins (``plugins/``, package ``kernel_sse_plugins``) and the README's example plugin.

Each is driven through the real command line (``kernel_sse.main``) against the
emulator on 127.0.0.1; the webhook plugin posts to a small recording HTTP
server, also on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import importlib
import io
import json
import logging
import os
import re
import socket
import stat
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st


import kernel_sse

# Legal JSON ~1000 levels deep is part of what is tested; the test's own json.loads needs the room too.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 6000))
from kernel_sse_emulator import EmulatedInvocation, Emulator, Fault, Log, Malformed, Pause, Script, State
from plugin_support import ROOT, add_paused, basic_script, bundled, clean_environment, follow, write_plugin

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CLEAR = "\r\x1b[K"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_environment(monkeypatch)


def expected_text(invocation: EmulatedInvocation, events: bool = True) -> List[str]:
    """What the console prints for what the emulator sent: format_text lines, then the result."""
    result = []
    last = None
    for emitted in invocation.emitted():
        event = kernel_sse.parse_event(kernel_sse.ServerSentEvent(data=emitted.data.decode("utf-8")))
        line = kernel_sse.format_text(event)
        if line is not None and events:
            result.append(line)
        if isinstance(event, kernel_sse.InvocationStateEvent):
            last = event.invocation
    assert last is not None and last.is_terminal
    return result + kernel_sse.format_result(last).splitlines()


class FakeTerminal(io.StringIO):
    """A standard output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def visible_rows(output: str) -> Tuple[List[str], str]:
    """What a terminal shows: each finished row after its last clear, colour removed; and the last row."""
    rows = output.split("\n")
    return [ANSI.sub("", row.split(CLEAR)[-1]) for row in rows[:-1]], ANSI.sub("", rows[-1].split(CLEAR)[-1])


# ---------------------------------------------------------------- console


def test_console_prints_plain_lines_and_the_result(
    emulator_env: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    script = basic_script(pause=0.35)
    invocation = add_paused(emulator_env, script)
    assert follow(script.id) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == expected_text(invocation)  # heartbeats print nothing
    assert "\x1b" not in out and "\r" not in out
    assert err == ""
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z hello$", out.splitlines()[2])
    assert '"answer": 42' in out  # output pretty-printed


def test_console_quiet_prints_only_the_outcome(
    emulator_env: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    invocation = emulator_env.add(basic_script(status="failed"))
    assert follow("inv_basic", "-q") == 1
    out = capsys.readouterr().out
    assert out.splitlines() == expected_text(invocation, events=False)
    assert out.startswith("invocation inv_basic (shop scrape v1.0.0) failed")
    assert follow("inv_missing", "-q") == 3  # no terminal state: nothing on stdout
    out, err = capsys.readouterr()
    assert out == "" and "no such invocation" in err


def test_console_is_silent_with_jsonl(emulator_env: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    emulator_env.add(basic_script())
    assert follow("inv_basic", "--format", "jsonl", "-p", "no:jsonl") == 0
    assert capsys.readouterr().out == ""


def test_console_on_a_terminal_has_colour_and_a_status_line(
    emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = basic_script(pause=0.35, attempts=(Fault(drop_after=4),))
    invocation = add_paused(emulator_env, script)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert follow(script.id) == 0
    out = terminal.getvalue()
    assert "\x1b[32m" in out and "\x1b[2m" in out  # green result, dim timestamps
    assert CLEAR + "\x1b[2m[running] 0s, 1 log line\x1b[0m" in out
    assert CLEAR + "\x1b[2m[running] 0s, 1 log line, reconnecting (attempt 2)\x1b[0m" in out
    rows, last = visible_rows(out)
    assert rows == expected_text(invocation)  # the status line was cleared before each line
    assert last == ""  # and at the end


def test_console_status_line_is_refreshed_by_heartbeats(
    emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator_env.add(Script("inv_hb", (State("running"), Pause(0.6), State("succeeded"))))
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert follow("inv_hb") == 0
    draws = terminal.getvalue().count("[running] 0s, 0 log lines")
    assert draws >= 2  # after the state line, then once per heartbeat


def test_console_no_color_and_dumb_terminals(emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator_env.add(basic_script())
    emulator_env.add(basic_script("inv_dumb"))
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("NO_COLOR", "1")
    assert follow("inv_basic") == 0
    out = terminal.getvalue()
    assert ANSI.sub("", out.replace(CLEAR, "")) == out.replace(CLEAR, "")  # no colour
    assert CLEAR + "[running]" in out  # the status line stays
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    terminal.seek(0)
    terminal.truncate()
    assert follow("inv_dumb") == 0
    assert "\x1b" not in terminal.getvalue() and "\r" not in terminal.getvalue()


def test_console_quiet_on_a_terminal_has_no_status_line(
    emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator_env.add(basic_script())
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert follow("inv_basic", "-q") == 0
    out = terminal.getvalue()
    assert "\r" not in out
    assert ANSI.sub("", out).startswith("invocation inv_basic (shop scrape v1.0.0) succeeded")


def test_console_and_jsonl_lose_no_line_stdout_cannot_encode(
    emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = (State("running"), Log("price \u20ac5 \U0001f600"), State("succeeded"))
    invocation = emulator_env.add(Script("inv_enc", steps))
    for output_format in ("text", "jsonl"):
        raw = io.BytesIO()
        stdout = io.TextIOWrapper(raw, encoding="latin-1", newline="\n")
        monkeypatch.setattr(sys, "stdout", stdout)
        assert follow("inv_enc", "--format", output_format) == 0
        stdout.flush()
        out = raw.getvalue().decode("latin-1")
        if output_format == "text":
            assert "price \\u20ac5 \\U0001f600" in out
        else:
            sent = [emitted.json() for emitted in invocation.emitted()]
            assert [json.loads(line) for line in out.splitlines() if "sse_heartbeat" not in line] == sent


# ---------------------------------------------------------------- jsonl


def test_jsonl_lines_are_the_objects_the_api_sent(
    emulator_env: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    script = basic_script(pause=0.35)
    invocation = add_paused(emulator_env, script)
    assert follow(script.id, "--format", "jsonl") == 0
    out, err = capsys.readouterr()
    objects = [json.loads(line) for line in out.splitlines()]
    assert any(obj["event"] == "sse_heartbeat" for obj in objects)
    sent = [emitted.json() for emitted in invocation.emitted()]
    assert [obj for obj in objects if obj["event"] != "sse_heartbeat"] == sent
    texts = {emitted.data.decode("utf-8") for emitted in invocation.emitted()}
    assert all(line in texts for line in out.splitlines() if '"sse_heartbeat"' not in line)
    assert objects[-1]["event"] == "invocation_state" and objects[-1]["invocation"]["status"] == "succeeded"
    assert any(obj["event"] == "browser_ready" for obj in objects)
    assert err == ""


def test_jsonl_writes_nothing_after_the_terminal_state(
    emulator_env: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = (State("running"), Log("before"), State("failed"), Log("after"), Pause(0.3))
    emulator_env.add(Script("inv_open", steps, fault=Fault(keep_open=True)))
    assert follow("inv_open", "--format", "jsonl") == 1
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert objects[-1]["invocation"]["status"] == "failed"
    assert "after" not in json.dumps(objects)


def test_jsonl_file_with_text_output_and_alone(
    emulator_env: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = emulator_env.add(basic_script())
    second = emulator_env.add(basic_script("inv_second", status="failed"))
    path = tmp_path / "events.jsonl"
    assert follow("inv_basic", "--jsonl-file", str(path)) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == expected_text(first)  # text on stdout, as without the file
    # append mode; with --format jsonl -q only the file is written
    assert follow("inv_second", "--jsonl-file", str(path), "--format", "jsonl", "-q") == 1
    assert capsys.readouterr().out == ""
    objects = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    sent = [emitted.json() for emitted in first.emitted() + second.emitted()]
    assert [obj for obj in objects if obj["event"] != "sse_heartbeat"] == sent


def test_jsonl_file_that_cannot_be_opened_stops_the_run_before_the_first_request(
    emulator_env: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator_env.add(basic_script())
    path = tmp_path / "no" / "such" / "dir.jsonl"
    assert follow("inv_basic", "--jsonl-file", str(path)) == 2
    out, err = capsys.readouterr()
    assert err == (
        f"kernel-sse: --jsonl-file '{path}': the folder '{path.parent}' does not exist; "
        "create it or choose another path\n"
    )
    assert out == "" and emulator_env.requests == []


# ---------------------------------------------------------------- webhook


class HookServer:
    """A local HTTP server that records POSTs and answers with the given statuses (then 200)."""

    def __init__(self) -> None:
        self.posts: List[Tuple[str, Dict[str, str], bytes]] = []
        self.statuses: List[int] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recorder.posts.append((self.path, dict(self.headers.items()), body))
                status = recorder.statuses.pop(0) if recorder.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def payloads(self) -> List[Dict[str, Any]]:
        return [json.loads(body) for _, _, body in self.posts]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


SECRET_PATH = "/services/T000/B000/s3cr3t-t0ken"
SECRET_QUERY = "?key=hunter2"


@pytest.fixture
def hook_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HookServer]:
    monkeypatch.setattr(bundled("webhook"), "_BACKOFF", 0.01)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = HookServer()
    yield server
    server.stop()


def assert_no_secret(text: str) -> None:
    for secret in ("s3cr3t", "hunter2", "T000", "user:pw"):
        assert secret not in text


def test_webhook_posts_a_summary(
    emulator_env: Emulator, hook_server: HookServer, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator_env.add(basic_script(status="failed", attempts=(Fault(drop_after=3),)))
    url = hook_server.origin + SECRET_PATH + SECRET_QUERY
    assert follow("inv_basic", "--webhook-url", url) == 1
    ((path, headers, _),) = hook_server.posts
    assert path == SECRET_PATH + SECRET_QUERY
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("kernel-sse/")
    (payload,) = hook_server.payloads()
    assert {key: payload[key] for key in ("id", "app", "action", "version", "status", "invocation_status")} == {
        "id": "inv_basic", "app": "shop", "action": "scrape", "version": "1.0.0",
        "status": "failed", "invocation_status": "failed",
    }
    assert payload["exit_code"] == 1
    assert payload["reason"]  # the emulator's default status_reason
    assert payload["output"] == '{"answer":42}'
    assert isinstance(payload["duration"], float) and payload["duration"] >= 0
    assert [line.split(" ", 1)[1] for line in payload["logs"]] == ["hello", "world"]
    assert (payload["log_count"], payload["error_count"], payload["reconnects"]) == (2, 1, 1)
    first, *rest = payload["text"].splitlines()
    assert first.startswith(":x: invocation inv_basic (shop scrape) failed: ") and first.endswith("(exit 1)")
    assert rest[0] == "```" and rest[-1] == "```" and rest[1].endswith(" hello")
    out, err = capsys.readouterr()
    assert_no_secret(out + err)


def test_webhook_lines_option_and_environment_url(
    emulator_env: Emulator, hook_server: HookServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emulator_env.add(basic_script())
    monkeypatch.setenv("KERNEL_SSE_WEBHOOK_URL", hook_server.origin + SECRET_PATH)
    assert follow("inv_basic", "--webhook-lines", "1") == 0
    (payload,) = hook_server.payloads()
    assert payload["status"] == "succeeded" and payload["exit_code"] == 0
    assert [line.split(" ", 1)[1] for line in payload["logs"]] == ["world"]
    assert payload["text"].startswith(":white_check_mark: ")
    assert_no_secret("".join(capsys.readouterr()))


def test_webhook_retries_server_errors(
    emulator_env: Emulator, hook_server: HookServer, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator_env.add(basic_script())
    hook_server.statuses = [500, 503]
    assert follow("inv_basic", "--webhook-url", hook_server.origin + SECRET_PATH) == 0
    assert len(hook_server.posts) == 3
    assert capsys.readouterr().err == ""


def test_webhook_failure_is_a_plugin_error_without_the_secret(
    emulator_env: Emulator, hook_server: HookServer, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator_env.add(basic_script())
    hook_server.statuses = [500] * 10
    url = hook_server.origin + SECRET_PATH + SECRET_QUERY
    assert follow("inv_basic", "--webhook-url", url, "--webhook-retries", "1") == 5
    assert len(hook_server.posts) == 2
    out, err = capsys.readouterr()
    assert f"plugin 'webhook' failed in on_finish: WebhookError: POST to {hook_server.origin} failed " \
           "after 2 attempts: HTTP 500" in err
    assert_no_secret(out + err)


@pytest.mark.parametrize("status", [404, 302])
def test_webhook_does_not_retry_client_errors_nor_follow_redirects(
    emulator_env: Emulator, hook_server: HookServer, capsys: pytest.CaptureFixture[str], status: int
) -> None:
    emulator_env.add(basic_script())
    hook_server.statuses = [status]
    assert follow("inv_basic", "--webhook-url", hook_server.origin + SECRET_PATH) == 5
    assert len(hook_server.posts) == 1
    assert f"after 1 attempt: HTTP {status}" in capsys.readouterr().err


def test_webhook_connection_errors_never_show_the_secret(
    emulator_env: Emulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundled("webhook"), "_BACKOFF", 0.01)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator_env.add(basic_script())
    url = f"http://user:pw@127.0.0.1:{port}{SECRET_PATH}{SECRET_QUERY}"
    assert follow("inv_basic", "--webhook-url", url, "--webhook-retries", "1", "--webhook-timeout", "2") == 5
    out, err = capsys.readouterr()
    assert f"POST to http://127.0.0.1:{port} failed after 2 attempts" in err
    assert_no_secret(out + err)
    emulator_env.add(basic_script("inv_bad_url"))
    emulator_env.clear_requests()
    assert follow("inv_bad_url", "--webhook-url", "ftp://files.example/s3cr3t") == 2  # checked before any request
    out, err = capsys.readouterr()
    assert "not an http(s) URL" in err
    assert_no_secret(out + err)
    assert emulator_env.requests == []


def test_webhook_reports_outcomes_without_a_terminal_state(
    emulator_env: Emulator, hook_server: HookServer
) -> None:
    assert follow("inv_missing", "--webhook-url", hook_server.origin + SECRET_PATH) == 3
    (payload,) = hook_server.payloads()
    assert (payload["id"], payload["app"], payload["status"], payload["exit_code"]) == ("inv_missing", None, "refused", 3)
    assert payload["reason"] and payload["text"].startswith(":warning: invocation inv_missing refused: ")


def test_webhook_is_inactive_without_a_url(emulator_env: Emulator, hook_server: HookServer) -> None:
    emulator_env.add(basic_script())
    assert follow("inv_basic") == 0
    assert hook_server.posts == []


def test_webhook_redact() -> None:
    redact = bundled("webhook").redact
    assert redact("https://user:pw@hooks.slack.com/services/T/B/x?y=1") == "https://hooks.slack.com"
    assert redact("http://[::1]:8080/x") == "http://[::1]:8080"
    assert redact("http://host:notaport/s3cr3t") == "<invalid URL>"


# ---------------------------------------------------------------- prometheus


def _labels(app: str = "shop", action: str = "scrape", invocation: str = "inv_basic") -> str:
    return f'app="{app}",action="{action}",invocation_id="{invocation}"'


def test_prometheus_file(emulator_env: Emulator, tmp_path: Path) -> None:
    emulator_env.add(basic_script(attempts=(Fault(drop_after=3),)))
    path = tmp_path / "kernel_sse.prom"
    assert follow("inv_basic", "--prometheus-file", str(path)) == 0
    text = path.read_text(encoding="utf-8")
    samples = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in text.splitlines() if not line.startswith("#")}
    labels = _labels()
    assert samples[f'kernel_sse_invocation_status{{{labels},status="succeeded"}}'] == "1"
    for status in ("failed", "refused", "gave_up", "deadline", "interrupted", "plugin_error"):
        assert samples[f'kernel_sse_invocation_status{{{labels},status="{status}"}}'] == "0"
    assert samples[f"kernel_sse_log_events_total{{{labels}}}"] == "2"
    assert samples[f"kernel_sse_error_events_total{{{labels}}}"] == "1"
    assert samples[f"kernel_sse_reconnects_total{{{labels}}}"] == "1"
    assert samples[f"kernel_sse_exit_code{{{labels}}}"] == "0"
    assert float(samples[f"kernel_sse_invocation_duration_seconds{{{labels}}}"]) >= 0
    assert float(samples[f"kernel_sse_follow_duration_seconds{{{labels}}}"]) > 0
    assert float(samples[f"kernel_sse_finish_timestamp_seconds{{{labels}}}"]) > 1.7e9
    names = {key.split("{")[0] for key in samples}
    for name in names:
        assert f"# HELP {name} " in text
        kind = "counter" if name.endswith("_total") else "gauge"
        assert f"# TYPE {name} {kind}\n" in text
    assert text.endswith("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["kernel_sse.prom"]  # no temporary file left


def test_prometheus_without_a_terminal_state(emulator_env: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "missing.prom"
    assert follow("inv_missing", "--prometheus-file", str(path)) == 3
    text = path.read_text(encoding="utf-8")
    labels = _labels("", "", "inv_missing")
    assert f'kernel_sse_invocation_status{{{labels},status="refused"}} 1' in text
    assert f"kernel_sse_exit_code{{{labels}}} 3" in text
    assert "kernel_sse_invocation_duration_seconds" not in text


def test_prometheus_escapes_label_values(emulator_env: Emulator, tmp_path: Path) -> None:
    assert bundled("prometheus").escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    emulator_env.add(Script("inv_odd", (State("succeeded"),), app_name='we"ird\\app\nx'))
    path = tmp_path / "odd.prom"
    assert follow("inv_odd", "--prometheus-file", str(path)) == 0
    assert 'app="we\\"ird\\\\app\\nx"' in path.read_text(encoding="utf-8")
    assert all(line.startswith(("#", "kernel_sse_")) for line in path.read_text(encoding="utf-8").splitlines())


def test_prometheus_writes_atomically(
    emulator_env: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.prom"
    path.write_text("old contents\n")
    renames: List[Tuple[str, str]] = []
    real_replace = os.replace

    def replace(source: str, target: str) -> None:
        renames.append((source, target))
        assert path.read_text() == "old contents\n"  # readers see the old file until the rename
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    emulator_env.add(basic_script())
    assert follow("inv_basic", "--prometheus-file", str(path)) == 0
    ((source, target),) = renames
    assert os.path.dirname(source) == str(tmp_path) and not source.endswith(".prom")
    assert target == str(path) and "kernel_sse_exit_code" in path.read_text()

    def failing(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing)
    emulator_env.add(basic_script("inv_full"))
    before = path.read_text()
    assert follow("inv_full", "--prometheus-file", str(path)) == 5
    assert "plugin 'prometheus' failed in on_finish" in capsys.readouterr().err
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["job.prom"]


# ---------------------------------------------------------------- logging


def records(caplog: pytest.LogCaptureFixture) -> List[Tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "kernel_sse.events"]


def test_logging_is_off_by_default(emulator_env: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kernel_sse.events")
    emulator_env.add(basic_script())
    assert follow("inv_basic") == 0
    assert records(caplog) == []


def test_logging_levels_by_event_kind(emulator_env: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kernel_sse.events")
    add_paused(emulator_env, basic_script(status="failed", pause=0.35, attempts=(Fault(drop_after=4),)))
    assert follow("inv_basic", "--log-events", "--log-level", "debug") == 1
    found = records(caplog)
    by_level: Dict[str, List[str]] = {}
    for level, message in found:
        by_level.setdefault(level, []).append(message)
    assert all(message.startswith("[inv_basic] ") for _, message in found)
    assert any(message.endswith(" hello") for message in by_level["INFO"])
    assert any(message.endswith("[running]") for message in by_level["INFO"])
    assert any("[failed]" in message for message in by_level["ERROR"])
    assert any("[error] selector_timeout" in message for message in by_level["WARNING"])
    assert any("[browser_ready]" in message for message in by_level["WARNING"])
    assert any("connection lost (" in message for message in by_level["WARNING"])
    assert any("heartbeat" in message for message in by_level["DEBUG"])
    record = next(r for r in caplog.records if r.name == "kernel_sse.events" and r.getMessage().endswith(" hello"))
    assert record.__dict__["invocation_id"] == "inv_basic"
    assert record.__dict__["event_kind"] == "log"
    assert record.__dict__["event_timestamp"].endswith("Z")


def test_logging_level_option_and_outcomes(emulator_env: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kernel_sse.events")
    emulator_env.add(basic_script())
    assert follow("inv_basic", "--log-events", "--log-level", "WARNING") == 0
    assert {level for level, _ in records(caplog)} == {"WARNING"}
    caplog.clear()
    emulator_env.add(basic_script("inv_down", fault=Fault(status=500)))
    assert follow("inv_down", "--log-events", "--max-retries", "0") == 4
    assert records(caplog)[-1][0] == "ERROR" and "follow ended: gave_up: " in records(caplog)[-1][1]


def test_logging_to_stderr_when_logging_is_not_configured(
    emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("kernel_sse.events")
    monkeypatch.setattr(logger, "hasHandlers", lambda: False)
    monkeypatch.setattr(logger, "propagate", False)
    emulator_env.add(basic_script())
    assert follow("inv_basic", "--log-events") == 0
    err = capsys.readouterr().err
    assert re.search(r"^\S+ \S+ INFO kernel_sse\.events: \[inv_basic\] \S+ hello$", err, re.MULTILINE)
    assert logger.handlers == [] and logger.level == logging.NOTSET  # removed after the follow


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_logging_through_a_configured_handler(emulator_env: Emulator) -> None:
    logger = logging.getLogger("kernel_sse.events")
    assert logger.level == logging.NOTSET and logger.getEffectiveLevel() > logging.INFO
    handler = ListHandler()
    logger.addHandler(handler)  # as a -p module or an embedding application would
    try:
        emulator_env.add(basic_script())
        assert follow("inv_basic", "--log-events") == 0
    finally:
        logger.removeHandler(handler)
    messages = [record.getMessage() for record in handler.records if record.levelno == logging.INFO]
    shown = [message.split(" ", 2)[2] for message in messages]  # after "[inv_basic] <timestamp>"
    assert shown[1:5] == ["[running]", "hello", "world", "[succeeded]: Invocation completed successfully"]
    assert logger.level == logging.NOTSET  # restored after the follow


def test_logging_plugin_uses_the_standard_library_logging() -> None:
    module = bundled("logging")
    assert module.logging is logging
    assert module.logger is logging.getLogger("kernel_sse.events")


# ---------------------------------------------------------------- the README's example plugin

EXAMPLE = ROOT / "tests" / "example_plugin.py"


def test_example_plugin_against_the_emulator(emulator_env: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    emulator_env.add(basic_script())
    assert follow("inv_basic", "-p", str(EXAMPLE), "--match", "o") == 0
    err = capsys.readouterr().err
    assert err == "2 log line(s) of inv_basic matched 'o'; the follow ended: succeeded\n"
    emulator_env.add(basic_script("inv_again", status="failed"))
    assert follow("inv_again", "-p", str(EXAMPLE), "--match", "^w") == 1  # state reset per follow
    assert capsys.readouterr().err == "1 log line(s) of inv_again matched '^w'; the follow ended: failed\n"
    emulator_env.add(basic_script("inv_quiet"))
    assert follow("inv_quiet", "-p", str(EXAMPLE)) == 0  # without --match it does nothing
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("document", ["README.md"])
def test_readme_shows_the_example_plugin(document: str) -> None:
    path = ROOT / document
    if not path.exists():
        pytest.skip(f"{document} is not in this checkout")
    text = path.read_text(encoding="utf-8")
    assert "## Writing a plugin" in text
    assert "```python\n" + EXAMPLE.read_text(encoding="utf-8") + "```" in text
    for name in kernel_sse.BUNDLED_PLUGINS:
        assert f"`{name}`" in text.split("## Plugins", 1)[-1]


def test_example_plugin_refuses_a_bad_pattern_before_the_first_request(
    emulator_env: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator_env.add(basic_script())
    assert follow("inv_basic", "-p", str(EXAMPLE), "--match", "(unclosed") == 2
    out, err = capsys.readouterr()
    assert err.startswith("kernel-sse: --match '(unclosed' is not a regular expression (")
    assert err.endswith("); fix the pattern\n") and err.count("\n") == 1
    assert out == "" and emulator_env.requests == []


# ---------------------------------------------------------------- options checked before the first request


def _cannot_create_files_in(folder: Path) -> bool:
    """Make ``folder`` read-only; False when that does not stop us (root ignores modes)."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o500)
    try:
        (folder / "probe").touch()
    except PermissionError:
        return True
    (folder / "probe").unlink()
    return False


def _permission_denied(*args: Any, **kwargs: Any) -> Any:
    raise PermissionError(13, "Permission denied")


BAD_OPTIONS: Dict[str, Tuple[List[str], str]] = {
    # name: (arguments, the message after "kernel-sse: "), with {tmp} for tmp_path
    "jsonl-missing-folder": (
        ["--jsonl-file", "{tmp}/missing/events.jsonl"],
        "--jsonl-file '{tmp}/missing/events.jsonl': the folder '{tmp}/missing' does not exist; "
        "create it or choose another path",
    ),
    "jsonl-folder": (
        ["--jsonl-file", "{tmp}"],
        "--jsonl-file '{tmp}': that is a folder; give the path of a file in it",
    ),
    "jsonl-folder-is-a-file": (
        ["--jsonl-file", "{tmp}/file.txt/events.jsonl"],
        "--jsonl-file '{tmp}/file.txt/events.jsonl': the folder '{tmp}/file.txt' is not a folder; "
        "create it or choose another path",
    ),
    "jsonl-unwritable": (
        ["--jsonl-file", "{tmp}/locked/events.jsonl"],
        "--jsonl-file '{tmp}/locked/events.jsonl': cannot write it (Permission denied); "
        "choose a path you may write, or fix its permissions",
    ),
    "prometheus-missing-folder": (
        ["--prometheus-file", "{tmp}/missing/job.prom"],
        "--prometheus-file '{tmp}/missing/job.prom': the folder '{tmp}/missing' does not exist; "
        "create it or use node_exporter's textfile directory",
    ),
    "prometheus-not-prom": (
        ["--prometheus-file", "{tmp}/job.txt"],
        "--prometheus-file '{tmp}/job.txt': the name must end in .prom (node_exporter reads only *.prom files), "
        "e.g. '{tmp}/job.txt.prom'",
    ),
    "prometheus-unwritable": (
        ["--prometheus-file", "{tmp}/locked/job.prom"],
        "--prometheus-file '{tmp}/locked/job.prom': cannot create files in the folder '{tmp}/locked' "
        "(Permission denied); fix its permissions or choose another folder",
    ),
    "webhook-not-http": (
        ["--webhook-url", "ftp://files.example/services/T000/s3cr3t"],
        "--webhook-url (ftp://files.example) is not an http(s) URL with a host; "
        "give the full address, e.g. https://hooks.example.com/...",
    ),
    "webhook-no-host": (
        ["--webhook-url", "https:///services/T000/s3cr3t?key=hunter2"],
        "--webhook-url (https://?) is not an http(s) URL with a host; "
        "give the full address, e.g. https://hooks.example.com/...",
    ),
    "webhook-no-scheme": (
        ["--webhook-url", "hooks.example.com/services/T000/s3cr3t"],
        "--webhook-url (?://?) is not an http(s) URL with a host; "
        "give the full address, e.g. https://hooks.example.com/...",
    ),
    "webhook-bad-port": (
        ["--webhook-url", "https://user:pw@hooks.example.com:notaport/s3cr3t"],
        "--webhook-url (<invalid URL>) is not a valid URL; give the full http(s):// address of the webhook",
    ),
    "webhook-environment": (
        [],  # KERNEL_SSE_WEBHOOK_URL is set by the test
        "KERNEL_SSE_WEBHOOK_URL (file://?) is not an http(s) URL with a host; "
        "give the full address, e.g. https://hooks.example.com/...",
    ),
    "webhook-timeout": (
        ["--webhook-url", "https://hooks.example.com/s3cr3t", "--webhook-timeout", "0"],
        "--webhook-timeout 0: give a number of seconds above 0, e.g. 10",
    ),
    "webhook-retries": (
        ["--webhook-url", "https://hooks.example.com/s3cr3t", "--webhook-retries", "-1"],
        "--webhook-retries -1: give 0 or more",
    ),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_plugin_options_stop_the_run_before_the_first_request(
    emulator_env: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], case: str,
) -> None:
    arguments, message = BAD_OPTIONS[case]
    tmp = str(tmp_path)
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    if case.endswith("-unwritable") and not _cannot_create_files_in(tmp_path / "locked"):
        # Running as root: modes do not stop us, so the OS refusal is simulated where the plugin meets it.
        if case.startswith("jsonl"):
            monkeypatch.setattr(bundled("jsonl"), "open", _permission_denied, raising=False)
        else:
            monkeypatch.setattr(bundled("prometheus").tempfile, "mkstemp", _permission_denied)
    if case == "webhook-environment":
        monkeypatch.setenv("KERNEL_SSE_WEBHOOK_URL", "file:///etc/s3cr3t")
    emulator_env.add(basic_script())
    before = sorted(path.name for path in tmp_path.iterdir())
    assert follow("inv_basic", *[argument.format(tmp=tmp) for argument in arguments]) == 2
    out, err = capsys.readouterr()
    assert err == f"kernel-sse: {message.format(tmp=tmp)}\n"
    assert out == ""
    assert emulator_env.requests == []  # refused before the first request
    assert_no_secret(err)
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # no file made, no probe left
    if (tmp_path / "locked").exists():
        assert list((tmp_path / "locked").iterdir()) == []


def test_a_refused_option_leaves_no_report_behind(
    emulator_env: Emulator, hook_server: HookServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator_env.add(basic_script())
    metrics = tmp_path / "job.prom"
    code = follow(
        "inv_basic", "--jsonl-file", str(tmp_path / "missing" / "events.jsonl"),
        "--prometheus-file", str(metrics), "--webhook-url", hook_server.origin + SECRET_PATH, "--log-events",
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("kernel-sse: --jsonl-file ") and err.count("\n") == 1  # that message, nothing else
    # The run never started: no metrics, no webhook summary of a follow that did not happen.
    assert not metrics.exists() and hook_server.posts == [] and emulator_env.requests == []
    assert logging.getLogger("kernel_sse.events").level == logging.NOTSET


def test_good_plugin_options_still_work(emulator_env: Emulator, hook_server: HookServer, tmp_path: Path) -> None:
    emulator_env.add(basic_script())
    (tmp_path / "out").mkdir()
    code = follow(
        "inv_basic", "--jsonl-file", str(tmp_path / "out" / "new.jsonl"),
        "--prometheus-file", str(tmp_path / "out" / "job.prom"), "--webhook-url", hook_server.origin + SECRET_PATH,
        "--webhook-retries", "0", "--webhook-lines", "0",
    )
    assert code == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["job.prom", "new.jsonl"]  # the probe file is gone
    (payload,) = hook_server.payloads()
    assert payload["logs"] == [] and payload["log_count"] == 2


# ---------------------------------------------------------------- several follows in one process


def parsed(obj: Dict[str, Any]) -> kernel_sse.KernelEvent:
    """The event the parser makes of ``obj`` (json.dumps: a lone surrogate travels as its \\u escape)."""
    return kernel_sse.parse_event(kernel_sse.ServerSentEvent(data=json.dumps(obj)))


def log_event(message: str, timestamp: str = "2025-06-20T12:00:01.000Z") -> kernel_sse.KernelEvent:
    return parsed({"event": "log", "timestamp": timestamp, "message": message})


def error_event(code: str, message: str, timestamp: str = "2025-06-20T12:00:02.000Z") -> kernel_sse.KernelEvent:
    return parsed({"event": "error", "timestamp": timestamp, "error": {"code": code, "message": message}})


def state_event(
    invocation_id: str, status: str, timestamp: str = "2025-06-20T12:00:00.000Z", **fields: Any
) -> kernel_sse.KernelEvent:
    invocation: Dict[str, Any] = {
        "id": invocation_id, "app_name": "shop", "version": "1.0.0", "action_name": "scrape",
        "started_at": "2025-06-20T12:00:00Z", "status": status,
    }
    if status in kernel_sse.TERMINAL_STATUSES:
        invocation.update(finished_at="2025-06-20T12:00:05Z", status_reason=f"it {status}", output='{"n":1}')
    invocation.update(fields)
    return parsed({"event": "invocation_state", "timestamp": timestamp, "invocation": invocation})


def bundled_hooks(*extra: Path) -> kernel_sse.Hooks:
    """The bundled plugins (and ``extra`` plugin files) as the CLI loads them; strict: any plugin error raises."""
    plugins = kernel_sse.PluginSet()
    plugins.load_bundled()
    for path in extra:
        plugins.load(str(path), "-p")
    assert all(str(bundled(name).__file__).startswith(str(ROOT / "plugins")) for name in kernel_sse.BUNDLED_PLUGINS)
    return plugins.hooks(strict=True)


class Driver:
    """One follow's hook calls, made as the core makes them, by the test (no request is sent)."""

    OPTIONS: Dict[str, object] = {
        "format": "text", "quiet": False, "verbose": False, "jsonl_file": None, "prometheus_file": None,
        "webhook_url": None, "webhook_timeout": 5.0, "webhook_retries": 0, "webhook_lines": 20,
        "log_events": False, "log_level": "INFO", "match": None,
    }

    def __init__(self, hooks: kernel_sse.Hooks, invocation_id: str, **options: object) -> None:
        self.hooks = hooks
        follower = kernel_sse.Follower(invocation_id, api_key="test-key-unused", base_url="http://127.0.0.1:9")
        self.context = kernel_sse.FollowContext(follower, {**self.OPTIONS, **options})
        self.invocation: Any = None
        self.sent: List[kernel_sse.KernelEvent] = []

    def start(self) -> None:
        self.hooks.on_start(self.context)

    def event(self, event: kernel_sse.KernelEvent) -> None:
        self.sent.append(event)
        self.hooks.on_event(event, self.context)
        if isinstance(event, kernel_sse.InvocationStateEvent):
            self.invocation = event.invocation
            if event.invocation.is_terminal:
                self.hooks.on_terminal(event.invocation, self.context)

    def reconnect(self, attempt: int) -> None:
        self.hooks.on_reconnect(attempt, 0.5, "connection reset", self.context)

    def finish(self) -> None:
        status = self.invocation.status if self.invocation is not None else "gave_up"
        code = {"succeeded": 0, "failed": 1}.get(status, 4)
        self.hooks.on_finish(kernel_sse.Outcome(status, code, self.invocation), self.context)


def prometheus_samples(path: Path) -> Dict[str, str]:
    text = path.read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
    assert all(line.startswith(("# HELP ", "# TYPE ", "kernel_sse_")) for line in text.splitlines())
    return {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in text.splitlines() if not line.startswith("#")}


def test_follows_in_one_process_keep_their_own_state(
    hook_server: HookServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="kernel_sse.events")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    stderr = sys.stderr
    hooks = bundled_hooks(EXAMPLE)
    a, b = (
        Driver(
            hooks, f"inv_{name}", jsonl_file=str(tmp_path / f"{name}.jsonl"),
            prometheus_file=str(tmp_path / f"{name}.prom"), webhook_url=f"{hook_server.origin}/{name}",
            log_events=True, match="1",
        )
        for name in ("a", "b")
    )
    a.start()
    b.start()
    a.event(state_event("inv_a", "running"))
    a.event(log_event("a1"))
    b.event(state_event("inv_b", "queued"))
    a.event(error_event("e_a", "only in a"))
    b.event(log_event("b1"))
    a.event(log_event("a2"))
    b.event(state_event("inv_b", "running"))
    b.event(log_event("b2"))
    b.reconnect(2)
    b.event(log_event("b3"))
    a.event(state_event("inv_a", "succeeded"))
    b.event(state_event("inv_b", "failed"))
    b.finish()
    a.finish()

    for name, driver in (("a", a), ("b", b)):
        written = (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in written] == [event.raw for event in driver.sent]
    labels_a, labels_b = (f'app="shop",action="scrape",invocation_id="inv_{name}"' for name in ("a", "b"))
    samples_a, samples_b = prometheus_samples(tmp_path / "a.prom"), prometheus_samples(tmp_path / "b.prom")
    assert samples_a[f"kernel_sse_log_events_total{{{labels_a}}}"] == "2"
    assert samples_a[f"kernel_sse_error_events_total{{{labels_a}}}"] == "1"
    assert samples_a[f'kernel_sse_invocation_status{{{labels_a},status="succeeded"}}'] == "1"
    assert samples_b[f"kernel_sse_log_events_total{{{labels_b}}}"] == "3"
    assert samples_b[f"kernel_sse_error_events_total{{{labels_b}}}"] == "0"
    assert samples_b[f'kernel_sse_invocation_status{{{labels_b},status="failed"}}'] == "1"
    payloads = {path: json.loads(body) for path, _, body in hook_server.posts}
    assert sorted(payloads) == ["/a", "/b"]
    assert [line.split(" ", 1)[1] for line in payloads["/a"]["logs"]] == ["a1", "a2"]
    assert [line.split(" ", 1)[1] for line in payloads["/b"]["logs"]] == ["b1", "b2", "b3"]
    assert (payloads["/a"]["id"], payloads["/a"]["status"], payloads["/a"]["error_count"]) == ("inv_a", "succeeded", 1)
    assert (payloads["/b"]["id"], payloads["/b"]["status"], payloads["/b"]["error_count"]) == ("inv_b", "failed", 0)
    logged = [(r.__dict__["invocation_id"], r.getMessage()) for r in caplog.records if r.name == "kernel_sse.events"]
    assert [message.rsplit(" ", 1)[1] for who, message in logged if who == "inv_a" and " [" not in message] == [
        "a1", "a2"]
    assert all(message.startswith(f"[{who}] ") for who, message in logged)
    out = terminal.getvalue()
    # Each follow's status line counts its own lines: b's first state comes after a's first log line.
    assert re.search(r"\[queued\] \d+s, 0 log lines", out) and re.search(r"\[running\] \d+s, 3 log lines", out)
    assert re.search(r"\[running\] \d+s, 2 log lines, reconnecting \(attempt 2\)", out)
    rows, last = visible_rows(out)
    assert not [row for row in rows if re.match(r"\[\w+\] \d+s, ", row)] and last == ""  # cleared before each line
    assert sys.stderr is stderr  # the console's stderr wrapper is gone once both follows finished
    assert capsys.readouterr().err.splitlines() == [
        "1 log line(s) of inv_b matched '1'; the follow ended: failed",
        "1 log line(s) of inv_a matched '1'; the follow ended: succeeded",
    ]


def test_follows_in_threads_against_the_emulator(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = bundled_hooks()
    scripts = {
        name: Script(f"inv_{name}", tuple([State("running")] + [Log(f"{name}{i}") for i in range(count)]
                                          + [Pause(0.05), State("succeeded")]))
        for name, count in (("a", 30), ("b", 7))
    }
    for script in scripts.values():
        emulator.add(script)
    codes: Dict[str, int] = {}

    def run(name: str) -> None:
        follower = kernel_sse.Follower(f"inv_{name}", api_key=emulator.api_key, base_url=emulator.url)
        options = dict(Driver.OPTIONS, format="jsonl", quiet=True, jsonl_file=str(tmp_path / f"{name}.jsonl"),
                       prometheus_file=str(tmp_path / f"{name}.prom"))
        context = kernel_sse.FollowContext(follower, options)
        hooks.on_start(context)
        try:
            for event in follower:
                hooks.on_event(event, context)
        finally:
            follower.close()
        assert follower.invocation is not None
        hooks.on_terminal(follower.invocation, context)
        hooks.on_finish(kernel_sse.Outcome("succeeded", 0, follower.invocation), context)
        codes[name] = 0

    threads = [threading.Thread(target=run, args=(name,)) for name in scripts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert codes == {"a": 0, "b": 0}
    for name, count in (("a", 30), ("b", 7)):
        objects = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        sent = [emitted.json() for emitted in emulator.invocation(f"inv_{name}").emitted()]
        assert [obj for obj in objects if obj["event"] != "sse_heartbeat"] == sent
        labels = f'app="emulated-app",action="run",invocation_id="inv_{name}"'
        assert prometheus_samples(tmp_path / f"{name}.prom")[f"kernel_sse_log_events_total{{{labels}}}"] == str(count)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- every value the parser accepts

ESCAPES = "esc \x1b[41mred\x1b[0m title \x1b]0;pwned\x07 clear \x1b[2J cr\r nl\n tab\t del\x7f csi\x9b nul\x00"
ESCAPES_SHOWN = (
    "esc \\x1b[41mred\\x1b[0m title \\x1b]0;pwned\\x07 clear \\x1b[2J cr\\x0d nl\\x0a tab\t del\\x7f csi\\x9b nul\\x00"
)
LONE = "lone \ud800 surrogate \udfff"
LONE_SHOWN = "lone \\ud800 surrogate \\udfff"
YEAR_1 = "0001-01-01T00:00:00+01:00"  # in UTC: year 0, which datetime cannot hold
YEAR_9999 = "9999-12-31T23:59:59.999999999-01:00"  # in UTC: year 10000
INVISIBLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
ODD_APP = 'we"ird\\app\n\x1b[41m\ud800'


def same_json(first: object, second: object) -> bool:
    """first == second, without recursion (== recurses, and these values nest ~1000 deep)."""
    todo = [(first, second)]
    while todo:
        a, b = todo.pop()
        if isinstance(a, dict) and isinstance(b, dict):
            if list(a) != list(b):
                return False
            todo.extend((a[key], b[key]) for key in a)
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return False
            todo.extend(zip(a, b))
        elif type(a) is not type(b) or a != b:
            return False
    return True


def deep_unknown_event() -> Tuple[kernel_sse.KernelEvent, int]:
    """An event of an unknown kind nested nearly as deep as the parser accepts here (about 1000 levels);
    a little less, so that the test's own json.loads can read it back."""
    for depth in range(1000, 0, -1):
        data = '{"event":"browser_ready","note":"\\ud800","tree":' + "[" * depth + "]" * depth + "}"
        try:
            kernel_sse.parse_event(kernel_sse.ServerSentEvent(data=data))
        except kernel_sse.MalformedEvent:
            continue
        depth -= 16
        data = '{"event":"browser_ready","note":"\\ud800","tree":' + "[" * depth + "]" * depth + "}"
        return kernel_sse.parse_event(kernel_sse.ServerSentEvent(data=data)), depth
    raise AssertionError("no depth parses")


def odd_events() -> Tuple[List[kernel_sse.KernelEvent], int]:
    deep, depth = deep_unknown_event()
    assert depth > 900
    deep_output = '{"x":' + "[" * 900 + '"\\ud800"' + "]" * 900 + "}"
    return [
        state_event("inv_odd", "running", YEAR_1, app_name=ODD_APP, status_reason=ESCAPES),
        log_event(LONE, YEAR_1),
        log_event(ESCAPES, YEAR_9999),
        error_event("e\x1b[41m", LONE, "0001-01-01T00:00:00Z"),
        deep,
        parsed({"event": "sse_heartbeat", "timestamp": YEAR_9999}),
        state_event(
            "inv_odd", "failed", YEAR_9999, app_name=ODD_APP, started_at=YEAR_1, finished_at=YEAR_9999,
            status_reason=LONE + " " + ESCAPES, output=deep_output,
        ),
    ], depth


def test_odd_values_through_every_bundled_plugin(
    hook_server: HookServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kernel_sse.events")
    stdout = io.StringIO()  # keeps a lone surrogate as it is: a leak would show
    monkeypatch.setattr(sys, "stdout", stdout)
    events, depth = odd_events()
    driver = Driver(
        bundled_hooks(), "inv_odd", jsonl_file=str(tmp_path / "odd.jsonl"), prometheus_file=str(tmp_path / "odd.prom"),
        webhook_url=hook_server.origin + SECRET_PATH, log_events=True, log_level="DEBUG",
    )
    driver.start()
    for event in events:
        driver.event(event)  # strict hooks: a plugin that raised would fail the test here
    driver.finish()

    # console: one line per event (heartbeats none), every control character and surrogate escaped
    out = stdout.getvalue()
    assert not INVISIBLE.search(out.replace("\n", ""))
    rows = out.split("\n")
    assert rows[0] == f"0001-01-01T00:00:00.000+01:00 [running]: {ESCAPES_SHOWN}"
    assert rows[1] == f"0001-01-01T00:00:00.000+01:00 {LONE_SHOWN}"
    assert rows[2] == f"9999-12-31T23:59:59.999-01:00 {ESCAPES_SHOWN}"
    assert re.match(r"0*1-01-01T00:00:00\.000Z \[error\] e\\x1b\[41m: " + re.escape(LONE_SHOWN) + "$", rows[3])
    assert rows[4].startswith('[browser_ready] {"event":') or rows[4].startswith('[browser_ready] {"note": ')
    assert rows[4].count("[") == 1 + depth and rows[4].endswith("]" * depth + "}")
    assert rows[5] == f"9999-12-31T23:59:59.999-01:00 [failed]: {LONE_SHOWN} {ESCAPES_SHOWN}"
    assert rows[6].startswith('invocation inv_odd (we"ird\\app\\x0a\\x1b[41m\\ud800 scrape v1.0.0) failed: ')
    assert rows[7].startswith("output: ")
    # jsonl: valid UTF-8, one line per event, each exactly the JSON value received
    written = (tmp_path / "odd.jsonl").read_bytes().decode("utf-8").splitlines()
    assert len(written) == len(events)
    assert all(same_json(json.loads(line), event.raw) for line, event in zip(written, events))
    assert "\\ud800" in written[1] and "\u20ac" not in written[1]
    # webhook: posted, valid UTF-8, the values exact
    ((_, _, body),) = hook_server.posts
    payload = json.loads(body.decode("utf-8"))
    assert payload["reason"] == LONE + " " + ESCAPES and payload["app"] == ODD_APP
    assert payload["output"] == events[-1].raw["invocation"]["output"]  # type: ignore[index]
    assert payload["logs"][0].endswith(LONE_SHOWN) and payload["logs"][1].endswith(ESCAPES_SHOWN)
    assert payload["log_count"] == 2 and payload["error_count"] == 1
    # prometheus: valid UTF-8 in the text format's grammar, label values escaped
    text = (tmp_path / "odd.prom").read_bytes().decode("utf-8")
    label = r'\w+="(?:[^"\\\n]|\\[\\"n])*"'
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(rf"kernel_sse_\w+\{{{label}(?:,{label})*\}} \S+", line), line
    assert 'app="we\\"ird\\\\app\\n\\\\x1b[41m\\\\ud800"' in text
    assert float(prometheus_samples(tmp_path / "odd.prom")[
        'kernel_sse_invocation_duration_seconds{app="we\\"ird\\\\app\\n\\\\x1b[41m\\\\ud800",action="scrape",'
        'invocation_id="inv_odd"}']) > 3e11  # from year 1 to year 9999
    # logging: every event logged, on one line each, nothing invisible
    messages = [record.getMessage() for record in caplog.records if record.name == "kernel_sse.events"]
    assert len(messages) == len(events)
    assert not [message for message in messages if INVISIBLE.search(message)]
    assert messages[2] == f"[inv_odd] 9999-12-31T23:59:59.999-01:00 {ESCAPES_SHOWN}"


def test_odd_values_in_jsonl_on_standard_output(monkeypatch: pytest.MonkeyPatch) -> None:
    for encoding in ("utf-8", "latin-1"):
        raw = io.BytesIO()
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding=encoding, newline="\n"))
        events = odd_events()[0] + [log_event("price \u20ac5 \U0001f600")]
        driver = Driver(bundled_hooks(), "inv_odd", format="jsonl")
        driver.start()
        for event in events[:-1]:
            driver.event(event)
        driver.event(events[-1])  # after the terminal state: not written
        driver.finish()
        sys.stdout.flush()
        lines = raw.getvalue().decode(encoding).splitlines()
        assert len(lines) == len(events) - 1
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + 5000)  # the test's own stack is deep; the JSON is legal
        try:
            assert all(same_json(json.loads(line), event.raw) for line, event in zip(lines, events))
        finally:
            sys.setrecursionlimit(limit)


def test_odd_values_through_the_command_line(
    emulator_env: Emulator, hook_server: HookServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kernel_sse.events")
    depth = 600  # the follower parses a few dozen frames deeper than a test does
    steps = (
        State("running"),
        Malformed(json.dumps({"event": "log", "timestamp": YEAR_1, "message": LONE})),
        Log(ESCAPES, at=YEAR_9999),  # the emulator cannot count on from there: the next steps say when
        Malformed('{"event":"browser_ready","tree":' + "[" * depth + '"\\ud800"' + "]" * depth + "}",
                  at="2025-06-20T12:00:01Z"),
        State("succeeded", at="2025-06-20T12:00:02Z", output={"x": ESCAPES}),
    )
    invocation = emulator_env.add(Script("inv_odd", steps, app_name='we"ird\x1b[41m'))
    jsonl, prom = tmp_path / "odd.jsonl", tmp_path / "odd.prom"
    code = follow(
        "inv_odd", "--jsonl-file", str(jsonl), "--prometheus-file", str(prom),
        "--webhook-url", hook_server.origin + SECRET_PATH, "--log-events",
    )
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert f"0001-01-01T00:00:00.000+01:00 {LONE_SHOWN}\n" in out
    assert f"9999-12-31T23:59:59.999-01:00 {ESCAPES_SHOWN}\n" in out
    assert "\x1b" not in out and "\r" not in out
    written = [json.loads(line) for line in jsonl.read_bytes().decode("utf-8").splitlines()]
    sent = [emitted.json() for emitted in invocation.emitted()]
    assert same_json([obj for obj in written if obj["event"] != "sse_heartbeat"], sent)
    (payload,) = hook_server.payloads()
    assert payload["logs"][0].endswith(LONE_SHOWN) and payload["status"] == "succeeded"
    assert 'app="we\\"ird\\\\x1b[41m"' in prom.read_bytes().decode("utf-8")
    messages = [record.getMessage() for record in caplog.records if record.name == "kernel_sse.events"]
    assert f"[inv_odd] 0001-01-01T00:00:00.000+01:00 {LONE_SHOWN}" in messages


def test_shared_text_helpers() -> None:
    """The core's text helpers the bundled plugins share."""
    text = kernel_sse
    assert text.visible("plain \t text \u20ac") == "plain \t text \u20ac"
    assert text.visible(ESCAPES + LONE, one_line=True) == ESCAPES_SHOWN + LONE_SHOWN
    deep: List[object] = []
    for _ in range(5000):  # far deeper than the JSON encoder's recursion allows
        deep = [deep, "\ud800"]
    line = text.json_line({"deep": deep})
    assert line == '{"deep":' + '[' * 5000 + '[]' + ',"\\ud800"]' * 5000 + "}"
    assert line.encode("utf-8")
    assert text.json_line({"b": 1, "a": [1.5, None, True, "\u20ac\ud83d"]}, sort_keys=True) == (
        '{"a":[1.5,null,true,"\u20ac\\ud83d"],"b":1}')
    assert json.loads(text._ascii_json('{"s":"\u20ac \U0001f600"}')) == {"s": "\u20ac \U0001f600"}
    assert text._ascii_json('{"s":"\u20ac"}') == '{"s":"\\u20ac"}'
    when = kernel_sse.parse_timestamp(YEAR_1)
    assert text.format_time(when) == "0001-01-01T00:00:00.000+01:00"
    assert text.format_time(kernel_sse.parse_timestamp("2025-06-20T12:00:00.123456Z")) == "2025-06-20T12:00:00.123Z"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=25,
)


@given(JSON_VALUES, st.booleans())
def test_flat_json_encoder_writes_what_json_dumps_writes(value: object, sort_keys: bool) -> None:
    flat = kernel_sse._dumps_flat
    assert flat(value, sort_keys) == json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)


# ---------------------------------------------------------------- the status line and NO_COLOR

STATUS = re.compile(r"\r\x1b\[K(?:\x1b\[2m)?(\[[^\r\n]*?)(?:\x1b\[0m|(?=\r)|$)")


def test_status_line_says_the_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    driver = Driver(bundled_hooks(), "inv_phase")

    def last_status() -> str:
        found = STATUS.findall(terminal.getvalue())
        return re.sub(r"\] \d+s", "] Ns", found[-1]) if found else ""

    driver.start()
    assert last_status() == "[connecting] Ns, 0 log lines"
    driver.event(parsed({"event": "sse_heartbeat", "timestamp": "2025-06-20T12:00:00Z"}))
    assert last_status() == "[streaming] Ns, 0 log lines"
    driver.event(log_event("first"))  # logs stream before any state: not "connecting" any more
    assert last_status() == "[streaming] Ns, 1 log line"
    driver.reconnect(2)
    assert last_status() == "[connecting] Ns, 1 log line, reconnecting (attempt 2)"
    driver.event(log_event("second"))
    assert last_status() == "[streaming] Ns, 2 log lines"
    driver.event(state_event("inv_phase", "running\x1b[2J"))
    assert last_status() == "[running\\x1b[2J] Ns, 2 log lines"  # event text escaped here too
    driver.event(state_event("inv_phase", "succeeded"))
    driver.finish()
    rows, last = visible_rows(terminal.getvalue())
    assert [row.split(" ", 1)[1] for row in rows[:4]] == ["first", "second", "[running\\x1b[2J]", "[succeeded]: it succeeded"]
    assert last == ""


class ShouldNotFail(Exception):
    pass


@pytest.mark.parametrize("ending", ["deadline", "plugin_error"])
def test_status_line_is_cleared_before_kernel_sse_writes_on_standard_error(
    emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ending: str
) -> None:
    terminal = FakeTerminal()  # one screen: standard output and standard error both land on it
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    if ending == "deadline":
        emulator_env.add(Script("inv_slow", (State("running"), Log("working"), Pause(5), State("succeeded"))))
        assert follow("inv_slow", "--deadline", "0.8") == 4
    else:
        plugin = write_plugin(tmp_path, "breaks", """
            import kernel_sse

            @kernel_sse.hookimpl
            def on_log(event):
                if event.message == "world":
                    raise RuntimeError("boom")
        """)
        add_paused(emulator_env, basic_script(pause=0.35))
        assert follow("inv_basic", "-p", str(plugin)) == 5
    assert sys.stderr is terminal  # the console's wrapper is gone
    rows, last = visible_rows(terminal.getvalue())
    messages = [row for row in rows if "kernel-sse:" in row]
    assert messages and all(row.startswith("kernel-sse: ") for row in messages)  # not after a status line
    assert last == ""


@pytest.mark.parametrize("no_color, colour", [("1", False), ("", True)])
def test_no_color_turns_off_colour_only(
    emulator_env: Emulator, monkeypatch: pytest.MonkeyPatch, no_color: str, colour: bool
) -> None:
    add_paused(emulator_env, basic_script(pause=0.35))
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("NO_COLOR", no_color)  # an empty NO_COLOR does not count (no-color.org)
    assert follow("inv_basic") == 0
    out = terminal.getvalue()
    assert bool(ANSI.search(out.replace(CLEAR, ""))) is colour
    assert re.search(r"\r\x1b\[K(\x1b\[2m)?\[running\] \d+s, 1 log line", out)  # the status line either way
    rows, last = visible_rows(out)
    assert last == "" and [row for row in rows if row.startswith("output: ")]
