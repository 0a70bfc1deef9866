"""Helpers for the hook and plugin tests: the bundled plugins, scripts, the CLI.

Importing this module makes ``kernel_sse_plugins`` the checkout's own
``plugins/`` folder (it is only named ``kernel_sse_plugins`` by ``setup.cfg`` at
install time), even when another copy is installed, so the tests run against
the plugins next to them; without a ``plugins/`` folder, the installed package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, List

import pytest

import kernel_sse
from kernel_sse_emulator import EmulatedInvocation, Emulator, Error, Gate, Log, Pause, Script, State, Step, Unknown

ROOT = Path(__file__).resolve().parent.parent


def _bundled_package() -> ModuleType:
    folder = ROOT / "plugins"
    # A checkout's own plugins/ first: an installed (or editable) kernel_sse_plugins
    # may be another checkout's, and the tests must exercise the files next to them.
    if not (folder / "__init__.py").is_file():
        return importlib.import_module("kernel_sse_plugins")
    loaded = sys.modules.get("kernel_sse_plugins")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().parent == folder:
        return loaded
    spec = importlib.util.spec_from_file_location(
        "kernel_sse_plugins", str(folder / "__init__.py"), submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    for name in [name for name in sys.modules if name.startswith("kernel_sse_plugins.")]:
        del sys.modules[name]  # another copy's submodules would shadow ours
    sys.modules["kernel_sse_plugins"] = package
    spec.loader.exec_module(package)
    return package


PACKAGE = _bundled_package()


def bundled(name: str) -> ModuleType:
    """One bundled plugin module (``console``, ``jsonl``, ...)."""
    return importlib.import_module(f"kernel_sse_plugins.{name}")


def basic_script(
    invocation_id: str = "inv_basic", status: str = "succeeded", pause: float = 0.0, **kwargs: Any
) -> Script:
    """queued, running, two logs, an error event, an unknown event, the terminal state.

    ``pause`` > 0 holds the script after the first log line at a :class:`Gate`
    that :func:`add_paused` opens ``pause`` seconds after the client connected,
    so heartbeats (every 0.25 s in the fixtures' emulators) reach it however late
    it starts; ``kwargs`` go to :class:`Script`.
    """
    steps: List[Step] = [State("queued"), State("running"), Log("hello")]
    if pause:
        steps.append(Gate())
    steps += [
        Error("selector_timeout", "timed out; retrying"),
        Unknown("browser_ready", {"session": "s1"}),
        Log("world"),
        State(status, output={"answer": 42}),
    ]
    return Script(id=invocation_id, steps=tuple(steps), app_name="shop", action_name="scrape", **kwargs)


def add_paused(emulator: Emulator, script: Script, pause: float = 0.35) -> EmulatedInvocation:
    """Add ``script`` and open its gates ``pause`` seconds after its first request arrived."""
    invocation = emulator.add(script)

    def wait_then_open() -> None:
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up and not any(r.invocation_id == script.id for r in emulator.requests):
            time.sleep(0.02)
        time.sleep(pause)
        for step in script.steps:
            if isinstance(step, Gate):
                step.release()

    threading.Thread(target=wait_then_open, daemon=True).start()
    return invocation


def write_plugin(folder: Path, name: str, source: str) -> Path:
    """Write a plugin file ``name.py`` (``source`` dedented) and return its path."""
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def follow(invocation_id: str, *args: str) -> int:
    """Run ``kernel-sse follow`` in-process (key and URL from the environment)."""
    return kernel_sse.main(["follow", invocation_id, *args])


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the variables that change which plugins load and how they print."""
    for name in (
        "KERNEL_SSE_PLUGINS",
        "KERNEL_SSE_DISABLE_PLUGIN_AUTOLOAD",
        "KERNEL_SSE_TRACE",
        "KERNEL_SSE_WEBHOOK_URL",
        "NO_COLOR",
    ):
        monkeypatch.delenv(name, raising=False)


def lines(text: str) -> List[str]:
    """Non-empty lines."""
    return [line for line in text.splitlines() if line]


__all__ = [
    "PACKAGE",
    "ROOT",
    "basic_script",
    "bundled",
    "clean_environment",
    "follow",
    "lines",
    "write_plugin",
]
