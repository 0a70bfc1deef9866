"""Table-driven tests of the follow rules (``FollowState``), with no socket and no clock.

Each test tells the state what happened (an attempt started, bytes arrived,
the attempt ended, time passed) and checks what it answers: the events to
deliver, the ``since`` of the next request, the delay before it, or the end.
The socket tests in test_follow.py and test_async_follow.py are the
end-to-end guard of the same rules through both drivers.
"""

from __future__ import annotations

import json
import math
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from kernel_sse import (
    REORDER_WINDOW,
    Checkpoint,
    ConfigurationError,
    ConnectionFailed,
    DeadlineExceeded,
    ErrorEvent,
    FollowState,
    HeartbeatEvent,
    InvocationStateEvent,
    KernelEvent,
    LogEvent,
    StreamTimeout,
    UnknownEvent,
    parse_timestamp,
)

T0 = "2025-06-20T12:00:00"


def at(seconds: float) -> str:
    """A timestamp ``seconds`` after 12:00:00, with nanoseconds."""
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    return f"2025-06-20T12:{whole // 60:02d}:{whole % 60:02d}.{nanos:09d}Z"


def log(message: str, seconds: float) -> Dict[str, object]:
    return {"event": "log", "timestamp": at(seconds), "message": message}


def state(status: str, seconds: float) -> Dict[str, object]:
    invocation = {"id": "inv", "app_name": "app", "version": "1", "action_name": "run", "status": status,
                  "started_at": at(0), "finished_at": at(seconds) if status in ("succeeded", "failed") else None}
    return {"event": "invocation_state", "timestamp": at(seconds), "invocation": invocation}


def heartbeat(seconds: float) -> Dict[str, object]:
    return {"event": "sse_heartbeat", "timestamp": at(seconds)}


def sse(*objects: object) -> bytes:
    return b"".join(b"data: " + json.dumps(obj).encode() + b"\n\n" for obj in objects)


def messages(events: Sequence[KernelEvent]) -> List[str]:
    return [event.message for event in events if isinstance(event, LogEvent)]


def fresh(**options: object) -> FollowState:
    follow = FollowState(now=0.0, random=lambda: 1.0, **options)  # type: ignore[arg-type]
    return follow


def attempt(follow: FollowState, data: bytes, now: float = 1.0) -> Tuple[Optional[str], List[KernelEvent]]:
    """One attempt: its ``since``, and what it delivers for ``data``."""
    since = follow.start_attempt(now)
    return since, list(follow.receive(data, now))


# ---------------------------------------------------------------- resume and once-only delivery


def test_the_first_request_carries_the_callers_since() -> None:
    assert fresh(since="5m").start_attempt(0.0) == "5m"
    assert fresh().start_attempt(0.0) is None


def test_a_resume_asks_for_the_reorder_window_before_the_newest_log() -> None:
    follow = fresh()
    _since, events = attempt(follow, sse(state("running", 0), log("a", 10), log("b", 12), state("running", 30)))
    assert messages(events) == ["a", "b"]
    follow.attempt_failed("dropped", 2.0)
    since = follow.start_attempt(3.0)
    assert since is not None
    assert parse_timestamp(since) == parse_timestamp(at(12 - REORDER_WINDOW))  # states do not move it


def test_a_resume_never_asks_for_earlier_than_the_callers_since() -> None:
    follow = fresh(since=at(11))
    attempt(follow, sse(log("a", 12)))
    follow.attempt_failed("dropped", 2.0)
    assert follow.start_attempt(3.0) == at(11)


@pytest.mark.parametrize(
    "first, replay, expected",
    [
        # a replay: every copy of what was delivered is dropped, the rest is new
        ([log("a", 1), log("b", 2)], [log("a", 1), log("b", 2), log("c", 3)], ["c"]),
        # the same line twice at one timestamp is two events: each delivered once
        ([log("x", 1), log("x", 1)], [log("x", 1), log("x", 1), log("x", 1)], ["x"]),
        ([log("x", 1)], [log("x", 1), log("x", 1), log("y", 1)], ["x", "y"]),
        # a late event, stamped before the newest delivered but never delivered: delivered now
        ([log("a", 1), log("c", 5)], [log("a", 1), log("late", 3), log("c", 5)], ["late"]),
        # disorder inside the window, in both directions
        ([log("b", 4), log("a", 2)], [log("a", 2), log("b", 4), log("z", 1.5)], ["z"]),
        # older than what was asked for (a server that ignores since): not delivered again
        ([log("a", 20)], [log("ancient", 1), log("a", 20), log("b", 21)], ["b"]),
    ],
)
def test_replays_deliver_each_event_once(
    first: List[Dict[str, object]], replay: List[Dict[str, object]], expected: List[str]
) -> None:
    follow = fresh()
    attempt(follow, sse(*first))
    follow.attempt_failed("dropped", 2.0)
    _since, events = attempt(follow, sse(*replay), 3.0)
    assert messages(events) == expected


def test_a_state_stamped_at_connect_time_is_not_repeated_nor_moves_the_resume_point() -> None:
    follow = fresh()
    _since, events = attempt(follow, sse(state("running", 100), log("1", 1), log("2", 2)))
    assert [type(event) for event in events] == [InvocationStateEvent, LogEvent, LogEvent]
    follow.attempt_failed("dropped", 2.0)
    since, events = attempt(follow, sse(state("running", 200), log("1", 1), log("2", 2), log("3", 3)), 3.0)
    assert since is not None and parse_timestamp(since) < parse_timestamp(at(2))
    assert [type(event) for event in events] == [LogEvent] and messages(events) == ["3"]


def test_a_terminal_state_seen_again_ends_the_follow_without_a_repeat() -> None:
    follow = fresh()
    attempt(follow, sse(log("a", 1), state("succeeded", 2)))
    assert follow.finished and follow.invocation is not None
    again = FollowState(now=0.0, checkpoint=follow.checkpoint)
    _since, events = attempt(again, sse(log("a", 1), state("succeeded", 2)))
    assert events == [] and again.finished


@pytest.mark.parametrize("bad", [b"data: {not json\n\n", b'data: {"event": "browser_ready", "n": 1}\n\n'])
def test_malformed_and_unknown_events_follow_the_once_only_rule(bad: bytes) -> None:
    follow = fresh()
    _since, events = attempt(follow, sse(log("a", 1)) + bad + sse(log("b", 2)))
    assert len(events) == 3 and isinstance(events[1], (ErrorEvent, UnknownEvent))
    follow.attempt_failed("dropped", 2.0)
    _since, events = attempt(follow, sse(log("a", 1)) + bad + sse(log("b", 2)), 3.0)
    assert events == []


def test_a_replayed_oversized_event_is_reported_once_and_is_no_progress() -> None:
    follow = fresh(max_event_bytes=64, max_retries=2)
    huge = sse(log("x" * 200, 1))
    _since, events = attempt(follow, huge)
    assert [e.error.code for e in events if isinstance(e, ErrorEvent)] == ["client_event_too_large"]
    follow.attempt_failed("dropped", 2.0)
    for now in (3.0, 5.0):
        _since, events = attempt(follow, huge, now)
        assert events == []
        follow.attempt_failed("dropped", now + 1)
    attempt(follow, huge, 7.0)
    with pytest.raises(ConnectionFailed):
        follow.attempt_failed("dropped", 8.0)


def test_an_event_whose_hooks_were_cut_short_is_delivered_again() -> None:
    follow = fresh()
    attempt(follow, sse(log("a", 1), log("b", 2)))
    follow.undeliver_last()
    follow.attempt_failed("dropped", 2.0)
    _since, events = attempt(follow, sse(log("a", 1), log("b", 2)), 3.0)
    assert messages(events) == ["b"]


def test_the_checkpoint_resumes_another_follow_with_nothing_lost_or_repeated() -> None:
    follow = fresh()
    attempt(follow, sse(state("running", 0), log("a", 1), log("b", 2), log("b", 2)))
    saved = Checkpoint.from_json(json.loads(json.dumps(follow.checkpoint.to_json())))
    assert saved == follow.checkpoint
    resumed = FollowState(now=0.0, checkpoint=saved)
    since, events = attempt(resumed, sse(state("running", 9), log("a", 1), log("b", 2), log("b", 2), log("c", 3)))
    assert since is not None and messages(events) == ["c"]


def test_the_window_is_bounded_and_raises_the_floor() -> None:
    follow = fresh()
    burst = [log(f"line {n}", 1 + n / 10_000) for n in range(5000)]
    attempt(follow, sse(*burst))
    checkpoint = follow.checkpoint
    assert len(checkpoint.seen) == 4096
    assert checkpoint.floor is not None
    assert len(json.dumps(checkpoint.to_json())) < 400_000
    follow.attempt_failed("dropped", 2.0)
    since = follow.start_attempt(3.0)
    assert since == checkpoint.floor  # nothing forgotten is asked for again
    assert messages(list(follow.receive(sse(*burst[-10:], log("new", 3)), 3.0))) == ["new"]


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "0001-01-01T00:00:03Z",
                                   "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999999999Z"])
def test_times_at_the_ends_of_the_calendar_resume_without_error(stamp: str) -> None:
    follow = fresh()
    line = sse({"event": "log", "timestamp": stamp, "message": "x"})
    _since, events = attempt(follow, line)
    assert messages(events) == ["x"]
    follow.attempt_failed("dropped", 2.0)
    since, events = attempt(follow, line, 3.0)
    assert since is not None and len(since.split("T")[0]) == 10 and events == []
    Checkpoint.from_json(follow.checkpoint.to_json())


# ---------------------------------------------------------------- retries, backoff, time


def test_failures_in_a_row_give_up_and_progress_resets_them() -> None:
    follow = fresh(max_retries=1, backoff_base=1.0, backoff_cap=8.0)
    attempt(follow, b"")
    assert follow.attempt_failed("refused", 1.0) == 2.0  # full jitter (random() == 1): base * 2 ** failures
    attempt(follow, sse(log("a", 1)), 2.0)  # progress
    assert follow.attempt_failed("dropped", 2.5) == 1.0 * 2 ** 0
    attempt(follow, b"", 3.0)
    assert follow.attempt_failed("refused", 3.5) == 2.0
    attempt(follow, b"", 4.0)
    with pytest.raises(ConnectionFailed, match="2 failed attempts in a row"):
        follow.attempt_failed("refused", 4.5)


def test_idle_attempts_in_a_row_are_a_stream_timeout() -> None:
    follow = fresh(max_retries=1, idle_timeout=5.0)
    follow.start_attempt(0.0)
    assert follow.check_time(4.9) is None
    assert follow.check_time(5.0) == "no event for 5s"
    follow.attempt_failed("stalled", 5.0)
    follow.start_attempt(6.0)
    with pytest.raises(StreamTimeout):
        follow.attempt_failed("stalled", 11.0)


def test_trickled_bytes_without_a_complete_event_are_idle() -> None:
    follow = fresh(idle_timeout=5.0)
    follow.start_attempt(0.0)
    for now in (1.0, 2.0, 3.0, 4.0):
        assert list(follow.receive(b"data: {", now)) == []
    assert follow.wake_at == 5.0  # partial bytes do not move the bound
    assert follow.check_time(5.0) is not None


@pytest.mark.parametrize("retry_after, cap, expected", [(1.0, None, 1.0), (1e9, None, 30.0), (1e9, 120.0, 120.0),
                                                        (-5.0, None, 0.0)])
def test_retry_after_is_honoured_but_capped(retry_after: float, cap: Optional[float], expected: float) -> None:
    follow = fresh(retry_after_cap=cap)
    follow.start_attempt(0.0)
    assert follow.attempt_failed("503", 1.0, retry_after) == expected


def test_the_deadline_is_one_bound_for_everything() -> None:
    follow = fresh(deadline=10.0, idle_timeout=30.0)
    follow.start_attempt(0.0)
    assert follow.wake_at == 10.0
    with pytest.raises(DeadlineExceeded):
        follow.check_time(10.0)
    with pytest.raises(DeadlineExceeded):
        follow.start_attempt(10.5)


# ---------------------------------------------------------------- the status probe


def test_a_stream_that_says_nothing_of_the_invocation_asks_for_its_status() -> None:
    follow = fresh()
    follow.start_attempt(0.0)
    assert not follow.status_probe_due(1.0)
    list(follow.receive(sse(heartbeat(1)), 1.0))  # past the replay, and no state came
    assert follow.status_probe_due(1.0)
    done = InvocationStateEvent  # what a terminal answer becomes
    events = follow.receive_status(None, 1.5)  # the probe failed: try again later
    assert events == [] and not follow.status_probe_due(2.0) and follow.status_probe_due(61.5)
    finished = FollowState(now=0.0)
    finished.start_attempt(0.0)
    assert finished.status_probe_due(10.0)  # none within 10 s of connecting either
    raw = state("failed", 5)["invocation"]
    from kernel_sse import parse_event, ServerSentEvent

    invocation = parse_event(ServerSentEvent(data=json.dumps(state("failed", 5)))).invocation  # type: ignore[union-attr]
    events = finished.receive_status(invocation, 10.0, raw)  # type: ignore[arg-type]
    assert len(events) == 1 and isinstance(events[0], done) and finished.finished
    assert events[0].raw["invocation"] == raw


def test_a_state_on_the_connection_cancels_the_probe() -> None:
    follow = fresh()
    follow.start_attempt(0.0)
    list(follow.receive(sse(state("running", 0), heartbeat(1)), 1.0))
    assert not follow.status_probe_due(100.0)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "setting",
    [{"idle_timeout": math.nan}, {"idle_timeout": 0}, {"deadline": math.inf}, {"deadline": -1.0},
     {"max_retries": -1}, {"max_retries": True}, {"backoff_cap": math.nan}, {"retry_after_cap": -1.0}],
)
def test_settings_that_are_not_finite_or_in_range_are_refused(setting: Dict[str, object]) -> None:
    with pytest.raises(ConfigurationError) as raised:
        FollowState(now=0.0, **setting)  # type: ignore[arg-type]
    assert next(iter(setting)) in str(raised.value)


def test_heartbeats_are_delivered_and_are_not_progress() -> None:
    follow = fresh(max_retries=0)
    _since, events = attempt(follow, sse(heartbeat(1)))
    assert [type(event) for event in events] == [HeartbeatEvent]
    with pytest.raises(ConnectionFailed):
        follow.attempt_failed("dropped", 2.0)
