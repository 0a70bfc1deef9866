"""Shared fixtures: the local Kernel API emulator (``kernel_sse_emulator``)."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterator, List

import pytest

try:
    import kernel_sse_emulator  # noqa: F401
except ImportError:  # a checkout that is not installed: use the file next to tests/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernel_sse_emulator import Emulator, running_emulator
import plugin_support  # noqa: F401,E402  (bundled plugins as kernel_sse_plugins, installed or not)

EMULATOR_API_KEY = "test-key-emulator-0123456789"
"""The key the fixtures' emulators accept (also ``emulator.api_key``)."""

TEST_HEARTBEAT_INTERVAL = 0.25
"""Short, so idle streams show heartbeats within a test's time; set
``emulator.heartbeat_interval = None`` for a stream that is silent when idle."""


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A running emulator on a free port, stopped (threads joined) after the test."""
    with running_emulator(api_key=EMULATOR_API_KEY, heartbeat_interval=TEST_HEARTBEAT_INTERVAL) as emu:
        yield emu


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    """A factory for more running emulators (another origin, other options).

    ``make_emulator(**kwargs)`` takes :class:`Emulator`'s keyword arguments, with
    the fixture's key and heartbeat interval as defaults; all are stopped after the test.
    """
    started: List[Emulator] = []

    def make(**kwargs: Any) -> Emulator:
        kwargs.setdefault("api_key", EMULATOR_API_KEY)
        kwargs.setdefault("heartbeat_interval", TEST_HEARTBEAT_INTERVAL)
        emu = Emulator(**kwargs).start()
        started.append(emu)
        return emu

    yield make
    for emu in reversed(started):
        emu.stop()


@pytest.fixture
def emulator_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The ``emulator``, with ``KERNEL_API_KEY`` and ``KERNEL_BASE_URL`` pointing at it."""
    monkeypatch.setenv("KERNEL_API_KEY", EMULATOR_API_KEY)
    monkeypatch.setenv("KERNEL_BASE_URL", emulator.url)
    return emulator
