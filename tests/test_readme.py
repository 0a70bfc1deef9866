"""The README works verbatim.

Every shell command in the README's fenced ``sh`` code blocks is either run here, exactly as
written, from the checkout root (where the README says to run them), or listed in ``EXCLUDED``
with the reason it cannot run offline. A command that is neither, or an exclusion that no longer
matches any command, fails the suite: a new README command is run or consciously excluded.

A block is one command per line (comment lines skipped, ``\\`` continuations joined), or one
script when it starts with ``#!``. Commands run through ``bash -c`` with this Python's
``bin/`` folder first on ``PATH`` (so ``kernel-sse`` and ``python`` are the ones under test),
without ``KERNEL_API_KEY`` or ``KERNEL_BASE_URL``: they must need neither.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
TIMEOUT = 45.0
"""Seconds a README command may take (the slowest, a demo at --speed 5, takes about 3 s)."""

EXCLUDED: List[Tuple[str, str]] = [
    (r"^python3 -m venv \.venv && \.venv/bin/pip install \. ",
     "installs from the package index into .venv in the checkout (.ci/run does the same from scratch)"),
    (r"^bash \.ci/run$", "the CI itself: builds a venv from the package index and runs this suite"),
    (r"^pip install ", "installs from the package index"),
    (r"^(scp|ssh) ", "copies to or runs on a remote box"),
    (r"^export KERNEL_API_KEY=sk_\.\.\.", "a placeholder for a real API key"),
    (r"\bfollow (INVOCATION_ID|inv_123|ID)\b", "follows a real invocation: needs the Kernel API and a key"),
    (r"^#!/bin/sh\n# /usr/local/bin/watch-invocation",
     "the cron script: needs /etc/kernel-sse/env, a real key and the network"),
    (r"^#!/bin/sh\n# /usr/local/bin/nightly-scrape",
     "the nightly cron script: needs /etc/kernel-sse/env, a real key, the network and /var/lib/kernel-sse"),
    (r"^(systemctl|journalctl) ", "needs systemd and the units installed on the host"),
]
"""(regular expression searched in the command, why it is not run). Each matches at least one command."""

EXIT_STATUS: List[Tuple[str, int]] = []
"""(regular expression, the exit status the README documents) for commands that should not exit 0."""


def readme_commands(text: str) -> List[str]:
    """The shell commands of the fenced sh/bash/shell/console blocks of a Markdown text, in order."""
    commands: List[str] = []
    for match in re.finditer(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", text, re.MULTILINE | re.DOTALL):
        language, body = match.group(1).lower(), match.group(2)
        if language not in SHELL_LANGUAGES:
            continue
        if body.startswith("#!"):
            commands.append(body.rstrip("\n"))
            continue
        pending = ""
        for line in body.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1]
                continue
            commands.append((pending + line).strip())
            pending = ""
        if pending.strip():
            commands.append(pending.strip())
    return commands


def exclusion(command: str) -> Optional[str]:
    """Why ``command`` is not run (the first exclusion that matches), or None when it is."""
    return next((reason for pattern, reason in EXCLUDED if re.search(pattern, command)), None)


def expected_status(command: str) -> int:
    return next((status for pattern, status in EXIT_STATUS if re.search(pattern, command)), 0)


COMMANDS = readme_commands(README.read_text(encoding="utf-8")) if README.exists() else []


def _id(command: str) -> str:
    first = command.splitlines()[0]
    return first if len(first) <= 60 else first[:57] + "..."


def _environment() -> Dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ("KERNEL_API_KEY", "KERNEL_BASE_URL")}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    return env


def _programs(command: str) -> Sequence[str]:
    """The programs a command starts that this environment may lack (the installed ``kernel-sse``)."""
    return [name for name in ("kernel-sse",) if re.search(rf"(^|[\s;&|(]){re.escape(name)}\b", command)]


def test_the_readme_has_shell_commands() -> None:
    if not README.exists():
        pytest.skip("README.md is not in this checkout")
    assert COMMANDS, "no fenced sh block found in README.md"
    runnable = [command for command in COMMANDS if exclusion(command) is None]
    assert runnable, "every README command is excluded: nothing would be checked"


def test_every_exclusion_matches_a_readme_command() -> None:
    if not README.exists():
        pytest.skip("README.md is not in this checkout")
    stale = [pattern for pattern, _ in EXCLUDED if not any(re.search(pattern, command) for command in COMMANDS)]
    assert not stale, f"these exclusions match no README command any more: {stale}"


@pytest.mark.parametrize("command", [pytest.param(command, id=_id(command)) for command in COMMANDS])
def test_readme_command(command: str) -> None:
    reason = exclusion(command)
    if reason is not None:
        pytest.skip(f"excluded: {reason}")
    env = _environment()
    for program in _programs(command):
        if shutil.which(program, path=env["PATH"]) is None:
            pytest.skip(f"{program} is not installed in this environment (pip install .)")
    try:
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=str(ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the README command did not finish within {TIMEOUT:.0f} s: {command}")
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == expected_status(command), (
        f"the README command exited {result.returncode}: {command}\n"
        f"stdout:\n{result.stdout.decode('utf-8', 'replace')[-2000:]}\nstderr:\n{err[-2000:]}"
    )
    assert "Traceback (most recent call last)" not in err, err


def test_readme_commands_are_found() -> None:
    """The extraction itself: lines, comments, continuations, scripts, other languages."""
    text = (
        "```sh\n# a comment\ncmd one   # trailing\n\ncmd \\\n  two\n```\n"
        "```python\nnot_a_command()\n```\n"
        "```sh\n#!/bin/sh\necho script\n```\n"
        "```\nkernel-sse --version | --help\n```\n"
    )
    assert readme_commands(text) == ["cmd one   # trailing", "cmd   two", "#!/bin/sh\necho script"]


def _readme_exit_codes(text: str) -> List[int]:
    section = text.split("### Exit status", 1)[1].split("\n#", 1)[0]
    codes: List[int] = []
    for row in re.findall(r"^\| ([0-9 /]+) \|", section, re.MULTILINE):
        codes.extend(int(code) for code in re.findall(r"\d+", row))
    return sorted(codes)


def test_help_lists_the_exit_statuses_of_the_readme(capsys: pytest.CaptureFixture[str]) -> None:
    if not README.exists():
        pytest.skip("README.md is not in this checkout")
    import kernel_sse

    assert kernel_sse.main(["--help"]) == 0
    epilog = capsys.readouterr().out.split("exit status:", 1)[1]
    in_help = sorted(int(code) for code in re.findall(r"^\s+(\d+)  ", epilog, re.MULTILINE))
    in_readme = _readme_exit_codes(README.read_text(encoding="utf-8"))
    assert in_readme == sorted(code for code, _meaning in kernel_sse.EXIT_CODES)
    assert in_help == in_readme
