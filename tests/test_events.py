"""Tests for the typed Kernel event model (``parse_event``).

Built from the endpoint's OpenAPI text (summarised in ``docs/kernel-api.md``): the
``InvocationEvent`` union with its ``event`` discriminator (``log``,
``invocation_state``, ``error``, ``sse_heartbeat``), each schema's
``required`` list, and RFC 3339 timestamps with up to nine fractional digits.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel_sse import (
    ApiError,
    ApiErrorDetail,
    ErrorEvent,
    HeartbeatEvent,
    Invocation,
    InvocationStateEvent,
    KernelSSEError,
    LogEvent,
    MalformedEvent,
    ServerSentEvent,
    UnknownEvent,
    parse_event,
)

UTC = timezone.utc
TS = "2024-05-19T15:30:00.123456789Z"
TS_DT = datetime(2024, 5, 19, 15, 30, 0, 123456, tzinfo=UTC)


def sse(payload: object, event: str = "message") -> ServerSentEvent:
    return ServerSentEvent(event=event, data=json.dumps(payload))


_DROP = object()
"""Pass as a field's value to leave the field out."""


def invocation_json(**overrides: object) -> Dict[str, object]:
    inv: Dict[str, object] = {
        "id": "rr33xuugxj9h0bkf1rdt2bet",
        "app_name": "my-app",
        "version": "1.0.0",
        "action_name": "analyze",
        "started_at": "2024-05-19T15:30:00Z",
        "status": "running",
    }
    inv.update(overrides)
    return {k: v for k, v in inv.items() if v is not _DROP}


def log_json(**overrides: object) -> Dict[str, object]:
    obj: Dict[str, object] = {"event": "log", "timestamp": TS, "message": "hello"}
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not _DROP}


def state_json(**overrides: object) -> Dict[str, object]:
    obj: Dict[str, object] = {
        "event": "invocation_state",
        "timestamp": TS,
        "invocation": invocation_json(),
    }
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not _DROP}


def error_json(**overrides: object) -> Dict[str, object]:
    obj: Dict[str, object] = {
        "event": "error",
        "timestamp": TS,
        "error": {"code": "bad_request", "message": "Missing required field: app_name"},
    }
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not _DROP}


def heartbeat_json(**overrides: object) -> Dict[str, object]:
    obj: Dict[str, object] = {"event": "sse_heartbeat", "timestamp": TS}
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not _DROP}


# ----------------------------------------------------------------------
# Each known kind
# ----------------------------------------------------------------------


def test_log_event() -> None:
    payload = log_json(message="hello \u00e9 world")
    ev = parse_event(sse(payload))
    assert isinstance(ev, LogEvent)
    assert ev == LogEvent(timestamp=TS_DT, message="hello \u00e9 world", timestamp_raw=TS, raw={})
    assert ev.message == "hello \u00e9 world"
    assert ev.timestamp == TS_DT and ev.timestamp.tzinfo is not None
    assert ev.timestamp.microsecond == 123456
    assert ev.timestamp_raw == TS
    assert ev.raw == payload
    assert ev.event == "log" and LogEvent.event == "log"


def test_log_event_empty_message() -> None:
    ev = parse_event(sse(log_json(message="")))
    assert isinstance(ev, LogEvent) and ev.message == ""


def test_invocation_state_event_minimal() -> None:
    payload = state_json()
    ev = parse_event(sse(payload))
    assert isinstance(ev, InvocationStateEvent)
    expected_inv = Invocation(
        id="rr33xuugxj9h0bkf1rdt2bet",
        app_name="my-app",
        version="1.0.0",
        action_name="analyze",
        started_at=datetime(2024, 5, 19, 15, 30, tzinfo=UTC),
        status="running",
        started_at_raw="2024-05-19T15:30:00Z",
    )
    assert ev == InvocationStateEvent(
        timestamp=TS_DT, invocation=expected_inv, timestamp_raw=TS, raw={}
    )
    inv = ev.invocation
    assert inv.payload is None and inv.output is None and inv.status_reason is None
    assert inv.finished_at is None and inv.finished_at_raw is None
    assert inv.started_at_raw == "2024-05-19T15:30:00Z"
    assert inv.is_terminal is False
    assert ev.raw == payload
    assert ev.event == "invocation_state" and InvocationStateEvent.event == "invocation_state"


def test_invocation_state_event_full() -> None:
    inv_json = invocation_json(
        status="succeeded",
        payload='{"data":"example input"}',
        output='{"result":"success"}',
        finished_at="2024-05-19T15:30:05.000000001+02:00",
        status_reason="Invocation completed successfully",
    )
    ev = parse_event(sse(state_json(invocation=inv_json)))
    assert isinstance(ev, InvocationStateEvent)
    inv = ev.invocation
    assert inv == Invocation(
        id="rr33xuugxj9h0bkf1rdt2bet",
        app_name="my-app",
        version="1.0.0",
        action_name="analyze",
        started_at=datetime(2024, 5, 19, 15, 30, tzinfo=UTC),
        status="succeeded",
        payload='{"data":"example input"}',
        output='{"result":"success"}',
        finished_at=datetime(2024, 5, 19, 13, 30, 5, tzinfo=UTC),
        status_reason="Invocation completed successfully",
        started_at_raw="2024-05-19T15:30:00Z",
        finished_at_raw="2024-05-19T15:30:05.000000001+02:00",
    )
    assert inv.finished_at is not None
    assert inv.finished_at.utcoffset() == timedelta(hours=2)
    assert inv.finished_at_raw == "2024-05-19T15:30:05.000000001+02:00"
    assert inv.is_terminal is True


def test_invocation_finished_at_null() -> None:
    ev = parse_event(sse(state_json(invocation=invocation_json(finished_at=None))))
    assert isinstance(ev, InvocationStateEvent)
    assert ev.invocation.finished_at is None
    assert ev.invocation.finished_at_raw is None


@pytest.mark.parametrize(
    "status, terminal",
    [("queued", False), ("running", False), ("succeeded", True), ("failed", True)],
)
def test_invocation_is_terminal(status: str, terminal: bool) -> None:
    ev = parse_event(sse(state_json(invocation=invocation_json(status=status))))
    assert isinstance(ev, InvocationStateEvent)
    assert ev.invocation.status == status
    assert ev.invocation.is_terminal is terminal


def test_error_event_minimal() -> None:
    payload = error_json()
    ev = parse_event(sse(payload))
    assert isinstance(ev, ErrorEvent)
    assert ev == ErrorEvent(
        timestamp=TS_DT,
        error=ApiError(code="bad_request", message="Missing required field: app_name"),
        timestamp_raw=TS,
        raw={},
    )
    assert ev.error.details == ()
    assert ev.error.inner_error is None
    assert ev.raw == payload
    assert ev.event == "error" and ErrorEvent.event == "error"


def test_error_event_with_details() -> None:
    err = {
        "code": "invalid_input",
        "message": "bad",
        "details": [
            {"code": "invalid_input", "message": "not semver"},
            {"code": "x"},
            {"message": "only a message"},
            {},
        ],
        "inner_error": {"code": "inner", "message": "deeper"},
    }
    ev = parse_event(sse(error_json(error=err)))
    assert isinstance(ev, ErrorEvent)
    assert ev.error == ApiError(
        code="invalid_input",
        message="bad",
        details=(
            ApiErrorDetail(code="invalid_input", message="not semver"),
            ApiErrorDetail(code="x"),
            ApiErrorDetail(message="only a message"),
            ApiErrorDetail(),
        ),
        inner_error=ApiErrorDetail(code="inner", message="deeper"),
    )
    assert isinstance(ev.error.details, tuple)
    assert ApiErrorDetail() == ApiErrorDetail(code=None, message=None)


def test_error_event_empty_details() -> None:
    ev = parse_event(sse(error_json(error={"code": "c", "message": "m", "details": []})))
    assert isinstance(ev, ErrorEvent)
    assert ev.error.details == ()


def test_heartbeat_event() -> None:
    payload = heartbeat_json()
    ev = parse_event(sse(payload))
    assert isinstance(ev, HeartbeatEvent)
    assert ev == HeartbeatEvent(timestamp=TS_DT, timestamp_raw=TS, raw={})
    assert ev.raw == payload
    assert ev.event == "sse_heartbeat" and HeartbeatEvent.event == "sse_heartbeat"


# ----------------------------------------------------------------------
# The kind: the JSON "event" property, else the SSE event type
# ----------------------------------------------------------------------


def test_kind_from_json_property_whatever_the_sse_type() -> None:
    ev = parse_event(sse(log_json(), event="invocation_state"))
    assert isinstance(ev, LogEvent)


def test_kind_falls_back_to_sse_event_type() -> None:
    payload = {"timestamp": TS, "message": "from the SSE type"}
    ev = parse_event(sse(payload, event="log"))
    assert isinstance(ev, LogEvent)
    assert ev.message == "from the SSE type"
    assert ev.raw == payload
    hb = parse_event(sse({"timestamp": TS}, event="sse_heartbeat"))
    assert isinstance(hb, HeartbeatEvent)


def test_no_kind_anywhere_is_unknown_message() -> None:
    payload = {"timestamp": TS, "message": "m"}
    ev = parse_event(sse(payload))
    assert isinstance(ev, UnknownEvent)
    assert ev.event == "message"
    assert ev.raw == payload


def test_unknown_kind_kept_whole() -> None:
    payload: Dict[str, object] = {
        "event": "browser_telemetry",
        "timestamp": "not even a timestamp",
        "nested": {"a": [1, 2, {"b": None}]},
        "n": 1.5,
    }
    ev = parse_event(sse(payload))
    assert isinstance(ev, UnknownEvent)
    assert ev.event == "browser_telemetry"
    assert ev.raw == payload


def test_unknown_kind_from_sse_type() -> None:
    ev = parse_event(sse({"x": 1}, event="custom"))
    assert isinstance(ev, UnknownEvent)
    assert ev.event == "custom" and ev.raw == {"x": 1}


def test_kind_is_case_sensitive() -> None:
    ev = parse_event(sse(log_json(event="Log")))
    assert isinstance(ev, UnknownEvent) and ev.event == "Log"


# ----------------------------------------------------------------------
# Forward compatibility: extra fields are tolerated
# ----------------------------------------------------------------------


def test_extra_fields_tolerated_everywhere() -> None:
    log = parse_event(sse(log_json(level="info", extra={"a": 1})))
    assert isinstance(log, LogEvent) and log.message == "hello"
    assert log.raw["level"] == "info"
    state = parse_event(
        sse(state_json(invocation=invocation_json(region="eu", attempts=3), seq=7))
    )
    assert isinstance(state, InvocationStateEvent)
    assert state.invocation.id == "rr33xuugxj9h0bkf1rdt2bet"
    err = parse_event(
        sse(
            error_json(
                error={
                    "code": "c",
                    "message": "m",
                    "trace_id": "t",
                    "details": [{"code": "d", "field": "f"}],
                    "inner_error": {"message": "i", "x": True},
                }
            )
        )
    )
    assert isinstance(err, ErrorEvent)
    assert err.error.details == (ApiErrorDetail(code="d"),)
    assert err.error.inner_error == ApiErrorDetail(message="i")
    hb = parse_event(sse(heartbeat_json(server="a1")))
    assert isinstance(hb, HeartbeatEvent)


# ----------------------------------------------------------------------
# Value semantics: frozen, hashable, raw excluded from eq/hash/repr
# ----------------------------------------------------------------------


def _all_kinds() -> List[object]:
    return [
        parse_event(sse(log_json())),
        parse_event(sse(state_json())),
        parse_event(
            sse(error_json(error={"code": "c", "message": "m", "details": [{"code": "d"}]}))
        ),
        parse_event(sse(heartbeat_json())),
    ]


def test_events_are_frozen_and_hashable() -> None:
    for ev in _all_kinds():
        assert dataclasses.is_dataclass(ev)
        hash(ev)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(ev, "timestamp", TS_DT)
    inv = parse_event(sse(state_json()))
    assert isinstance(inv, InvocationStateEvent)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(inv.invocation, "status", "failed")
    hash(inv.invocation)
    unknown = parse_event(sse({"event": "zzz"}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(unknown, "event", "other")


def test_raw_excluded_from_eq_hash_repr() -> None:
    a = parse_event(sse(log_json(secret_marker="SECRET-RAW-123")))
    b = parse_event(sse(log_json(other="different")))
    assert isinstance(a, LogEvent) and isinstance(b, LogEvent)
    assert a.raw != b.raw
    assert a == b
    assert hash(a) == hash(b)
    assert "SECRET-RAW-123" not in repr(a)
    for ev in _all_kinds():
        assert "raw=" not in repr(ev)


def test_equal_events_parse_equal() -> None:
    assert _all_kinds() == _all_kinds()
    assert parse_event(sse(log_json(message="a"))) != parse_event(sse(log_json(message="b")))


def test_timestamp_raw_kept_verbatim() -> None:
    for raw in ["2024-05-19t15:30:00.5z", "2024-05-19 15:30:00+05:30", TS]:
        ev = parse_event(sse(heartbeat_json(timestamp=raw)))
        assert isinstance(ev, HeartbeatEvent)
        assert ev.timestamp_raw == raw


# ----------------------------------------------------------------------
# Timestamps
# ----------------------------------------------------------------------


def _tz(minutes: int) -> timezone:
    return timezone(timedelta(minutes=minutes))


VALID_TIMESTAMPS: List[Tuple[str, datetime]] = [
    ("2024-05-19T15:30:00Z", datetime(2024, 5, 19, 15, 30, 0, 0, UTC)),
    ("2024-05-19T15:30:00.5Z", datetime(2024, 5, 19, 15, 30, 0, 500000, UTC)),
    ("2024-05-19T15:30:00.12Z", datetime(2024, 5, 19, 15, 30, 0, 120000, UTC)),
    ("2024-05-19T15:30:00.123Z", datetime(2024, 5, 19, 15, 30, 0, 123000, UTC)),
    ("2024-05-19T15:30:00.123456Z", datetime(2024, 5, 19, 15, 30, 0, 123456, UTC)),
    ("2024-05-19T15:30:00.1234567Z", datetime(2024, 5, 19, 15, 30, 0, 123456, UTC)),
    ("2024-05-19T15:30:00.12345678Z", datetime(2024, 5, 19, 15, 30, 0, 123456, UTC)),
    ("2024-05-19T15:30:00.123456789Z", datetime(2024, 5, 19, 15, 30, 0, 123456, UTC)),
    # truncated, never rounded (rounding would carry into the next second)
    ("2024-05-19T15:30:00.999999999Z", datetime(2024, 5, 19, 15, 30, 0, 999999, UTC)),
    ("2024-12-31T23:59:59.9999999Z", datetime(2024, 12, 31, 23, 59, 59, 999999, UTC)),
    ("2024-05-19T15:30:00.000000001Z", datetime(2024, 5, 19, 15, 30, 0, 0, UTC)),
    ("2024-05-19T15:30:00.000000Z", datetime(2024, 5, 19, 15, 30, 0, 0, UTC)),
    ("2024-05-19t15:30:00z", datetime(2024, 5, 19, 15, 30, 0, 0, UTC)),
    ("2024-05-19 15:30:00Z", datetime(2024, 5, 19, 15, 30, 0, 0, UTC)),
    ("2024-05-19T15:30:00+00:00", datetime(2024, 5, 19, 15, 30, 0, 0, UTC)),
    ("2024-05-19T15:30:00-00:00", datetime(2024, 5, 19, 15, 30, 0, 0, UTC)),
    ("2024-05-19T15:30:00+05:30", datetime(2024, 5, 19, 15, 30, 0, 0, _tz(330))),
    ("2024-05-19T15:30:00.123456789-08:00",
     datetime(2024, 5, 19, 15, 30, 0, 123456, _tz(-480))),
    ("2024-05-19T15:30:00+23:59", datetime(2024, 5, 19, 15, 30, 0, 0, _tz(23 * 60 + 59))),
    ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ("9999-12-31T23:59:59.999999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, UTC)),
]


@pytest.mark.parametrize("raw, expected", VALID_TIMESTAMPS, ids=[t[0] for t in VALID_TIMESTAMPS])
def test_valid_timestamps(raw: str, expected: datetime) -> None:
    ev = parse_event(sse(heartbeat_json(timestamp=raw)))
    assert isinstance(ev, HeartbeatEvent)
    ts = ev.timestamp
    assert ts.tzinfo is not None
    assert ts == expected
    assert ts.utcoffset() == expected.utcoffset()
    assert (ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond) == (
        expected.year, expected.month, expected.day,
        expected.hour, expected.minute, expected.second, expected.microsecond,
    )
    assert ev.timestamp_raw == raw


INVALID_TIMESTAMPS = [
    "",
    "yesterday",
    "2024-05-19",
    "2024-05-19T15:30:00",  # no offset: not RFC 3339, and would be naive
    "2024-05-19T15:30Z",  # seconds are required
    "2024-05-19T15:30:00.Z",  # a dot needs at least one digit
    "2024-05-19T15:30:00.1234567890Z",  # ten fractional digits
    "2024-05-19T15:30:00+0530",
    "2024-05-19T15:30:00+05",
    "2024-5-19T15:30:00Z",
    "2024-05-19T5:30:00Z",
    "2024-05-19X15:30:00Z",
    "2024-05-19T15:30:00ZZ",
    " 2024-05-19T15:30:00Z",
    "2024-05-19T15:30:00Z ",
    "2024-05-19T15:30:00Z\n",
    "2024-13-01T00:00:00Z",
    "2024-00-10T00:00:00Z",
    "2024-02-30T00:00:00Z",
    "2023-02-29T00:00:00Z",
    "2024-05-19T24:00:00Z",
    "2024-05-19T15:60:00Z",
    "2024-05-19T15:30:00+24:00",
    "2024-05-19T15:30:00+05:60",  # RFC 3339 time-minute is 00-59
    "\uff12\uff10\uff12\uff14-05-19T15:30:00Z",  # fullwidth digits in the year
    "2024-05-19T15:30:00.\u0661\u0662Z",  # ARABIC-INDIC digits in the fraction
    "2024-05-19T15:30:00+\u0660\u0665:00",  # ARABIC-INDIC digits in the offset
    "2024-05-19T15:30:00 Z",
]


@pytest.mark.parametrize("raw", INVALID_TIMESTAMPS, ids=repr)
def test_invalid_timestamps_are_malformed(raw: str) -> None:
    for payload in (
        heartbeat_json(timestamp=raw),
        log_json(timestamp=raw),
        state_json(invocation=invocation_json(started_at=raw)),
        state_json(invocation=invocation_json(finished_at=raw)),
        error_json(timestamp=raw),
    ):
        s = sse(payload)
        with pytest.raises(MalformedEvent) as info:
            parse_event(s)
        assert info.value.data == s.data


@st.composite
def rfc3339(draw: st.DrawFn) -> Tuple[str, datetime]:
    """A random RFC 3339 timestamp and the datetime it must parse to."""
    naive = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    offset = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    digits = draw(st.integers(0, 9))
    extra = draw(st.text(alphabet="0123456789", min_size=3, max_size=3))
    frac = (f"{naive.microsecond:06d}" + extra)[:digits]
    sep = draw(st.sampled_from(["T", "t", " "]))
    if offset == 0 and draw(st.booleans()):
        zone = draw(st.sampled_from(["Z", "z"]))
    else:
        sign = "-" if offset < 0 else "+"
        zone = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    text = (
        f"{naive.year:04d}-{naive.month:02d}-{naive.day:02d}{sep}"
        f"{naive.hour:02d}:{naive.minute:02d}:{naive.second:02d}"
        + (f".{frac}" if digits else "")
        + zone
    )
    micro = int(frac[:6].ljust(6, "0")) if digits else 0
    expected = naive.replace(microsecond=micro, tzinfo=_tz(offset))
    return text, expected


@settings(max_examples=300, deadline=None)
@given(case=rfc3339())
def test_random_rfc3339_timestamps(case: Tuple[str, datetime]) -> None:
    raw, expected = case
    ev = parse_event(sse(heartbeat_json(timestamp=raw)))
    assert isinstance(ev, HeartbeatEvent)
    assert ev.timestamp == expected
    assert ev.timestamp.utcoffset() == expected.utcoffset()
    assert ev.timestamp.microsecond == expected.microsecond
    assert ev.timestamp_raw == raw


# ----------------------------------------------------------------------
# Malformed data
# ----------------------------------------------------------------------

NOT_JSON_OBJECTS = ["", " ", "{", "not json", "{'a': 1}", "[]", "[1]", "null", "42", "1.5",
                    '"log"', "true", '{"event": "log"', "{}x"]


@pytest.mark.parametrize("data", NOT_JSON_OBJECTS, ids=repr)
@pytest.mark.parametrize("sse_type", ["message", "log", "custom"])
def test_malformed_json_or_not_an_object(data: str, sse_type: str) -> None:
    s = ServerSentEvent(event=sse_type, data=data)
    with pytest.raises(MalformedEvent) as info:
        parse_event(s)
    assert info.value.data == data
    assert isinstance(info.value, KernelSSEError)


MISSING: List[Tuple[str, Dict[str, object]]] = [
    ("log without message", log_json(message=_DROP)),
    ("log without timestamp", log_json(timestamp=_DROP)),
    ("state without invocation", state_json(invocation=_DROP)),
    ("state without timestamp", state_json(timestamp=_DROP)),
    ("error without error", error_json(error=_DROP)),
    ("error without timestamp", error_json(timestamp=_DROP)),
    ("heartbeat without timestamp", heartbeat_json(timestamp=_DROP)),
    ("error without code", error_json(error={"message": "m"})),
    ("error without message", error_json(error={"code": "c"})),
    *[
        (f"invocation without {name}", state_json(invocation=invocation_json(**{name: _DROP})))
        for name in ("id", "app_name", "version", "action_name", "started_at", "status")
    ],
]


@pytest.mark.parametrize("payload", [m[1] for m in MISSING], ids=[m[0] for m in MISSING])
def test_missing_required_field(payload: Dict[str, object]) -> None:
    s = sse(payload)
    with pytest.raises(MalformedEvent) as info:
        parse_event(s)
    assert info.value.data == s.data


WRONG_TYPES: List[Tuple[str, Dict[str, object]]] = [
    ("message int", log_json(message=5)),
    ("message null", log_json(message=None)),
    ("message bool", log_json(message=True)),
    ("message list", log_json(message=["a"])),
    ("timestamp int", log_json(timestamp=1716132600)),
    ("timestamp null", heartbeat_json(timestamp=None)),
    ("timestamp object", heartbeat_json(timestamp={"s": 1})),
    ("event property int", log_json(event=5)),
    ("invocation string", state_json(invocation="x")),
    ("invocation list", state_json(invocation=[])),
    ("invocation null", state_json(invocation=None)),
    ("invocation id int", state_json(invocation=invocation_json(id=5))),
    ("invocation app_name null", state_json(invocation=invocation_json(app_name=None))),
    ("invocation version float", state_json(invocation=invocation_json(version=1.0))),
    ("invocation action_name list", state_json(invocation=invocation_json(action_name=[]))),
    ("invocation status int", state_json(invocation=invocation_json(status=1))),
    ("invocation started_at int", state_json(invocation=invocation_json(started_at=0))),
    ("invocation finished_at int", state_json(invocation=invocation_json(finished_at=0))),
    ("invocation payload object", state_json(invocation=invocation_json(payload={"a": 1}))),
    ("invocation output int", state_json(invocation=invocation_json(output=3))),
    ("invocation status_reason bool",
     state_json(invocation=invocation_json(status_reason=False))),
    ("error string", error_json(error="boom")),
    ("error null", error_json(error=None)),
    ("error code int", error_json(error={"code": 400, "message": "m"})),
    ("error message null", error_json(error={"code": "c", "message": None})),
    ("error details string", error_json(error={"code": "c", "message": "m", "details": "d"})),
    ("error details object",
     error_json(error={"code": "c", "message": "m", "details": {"code": "d"}})),
    ("error details item int", error_json(error={"code": "c", "message": "m", "details": [5]})),
    ("error details item code int",
     error_json(error={"code": "c", "message": "m", "details": [{"code": 5}]})),
    ("error details item message list",
     error_json(error={"code": "c", "message": "m", "details": [{"message": ["x"]}]})),
    ("error inner_error string",
     error_json(error={"code": "c", "message": "m", "inner_error": "x"})),
    ("error inner_error list",
     error_json(error={"code": "c", "message": "m", "inner_error": []})),
    ("error inner_error code int",
     error_json(error={"code": "c", "message": "m", "inner_error": {"code": 1}})),
]


@pytest.mark.parametrize("payload", [w[1] for w in WRONG_TYPES], ids=[w[0] for w in WRONG_TYPES])
def test_wrong_type(payload: Dict[str, object]) -> None:
    s = sse(payload)
    with pytest.raises(MalformedEvent) as info:
        parse_event(s)
    assert info.value.data == s.data


@pytest.mark.parametrize(
    "data",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"event": "log", "timestamp": "%s", "message": %s}' % (TS, "[" * 50_000 + "]" * 50_000),
    ],
    ids=["deep array", "deep object", "deep field value"],
)
def test_deeply_nested_json_is_malformed_not_recursion_error(data: str) -> None:
    """JSON nested past the decoder's recursion limit is hostile input, not a crash."""
    s = ServerSentEvent(event="log", data=data)
    with pytest.raises(MalformedEvent) as info:
        parse_event(s)
    assert info.value.data == data


def test_malformed_event_is_a_kernel_sse_error_not_a_builtin() -> None:
    assert issubclass(MalformedEvent, KernelSSEError)
    for builtin in (KeyError, ValueError, TypeError, AttributeError, LookupError):
        assert not issubclass(MalformedEvent, builtin)
    s = ServerSentEvent(data="{")
    try:
        parse_event(s)
    except MalformedEvent as exc:
        assert exc.data == "{"
        assert exc.__class__ is MalformedEvent
        assert str(exc)
    else:  # pragma: no cover
        pytest.fail("no MalformedEvent")


# ----------------------------------------------------------------------
# Hypothesis: anything in, a KernelEvent or MalformedEvent out
# ----------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from([TS, "2024-05-19T15:30:00Z", "bad", "succeeded", "failed", "log"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    ),
    max_leaves=6,
)
FIELD_KEYS = [
    "event", "timestamp", "message", "invocation", "error", "id", "app_name", "version",
    "action_name", "started_at", "finished_at", "status", "payload", "output",
    "status_reason", "code", "details", "inner_error",
]
KINDS = ["log", "invocation_state", "error", "sse_heartbeat", "other", ""]


def _plausible(depth: int) -> st.SearchStrategy[object]:
    value: st.SearchStrategy[object] = json_values
    if depth > 0:
        value = st.one_of(json_values, _plausible(depth - 1), st.lists(_plausible(depth - 1), max_size=3))
    return st.dictionaries(
        st.sampled_from(FIELD_KEYS), st.one_of(value, st.sampled_from(KINDS)), max_size=8
    )


payloads = st.one_of(
    json_values,
    _plausible(1),
    st.builds(
        lambda base, extra: {**base, **extra},
        st.sampled_from([log_json(), state_json(), error_json(), heartbeat_json()]),
        _plausible(0),
    ),
)


def _check_types(ev: object) -> None:
    if isinstance(ev, (LogEvent, InvocationStateEvent, ErrorEvent, HeartbeatEvent)):
        assert isinstance(ev.timestamp, datetime) and ev.timestamp.tzinfo is not None
        assert isinstance(ev.timestamp_raw, str)
        assert isinstance(ev.raw, dict)
    if isinstance(ev, LogEvent):
        assert isinstance(ev.message, str)
    elif isinstance(ev, InvocationStateEvent):
        inv = ev.invocation
        for text in (inv.id, inv.app_name, inv.version, inv.action_name, inv.status,
                     inv.started_at_raw):
            assert isinstance(text, str)
        assert inv.started_at.tzinfo is not None
        for opt in (inv.payload, inv.output, inv.status_reason, inv.finished_at_raw):
            assert opt is None or isinstance(opt, str)
        assert inv.finished_at is None or inv.finished_at.tzinfo is not None
        hash(inv)
    elif isinstance(ev, ErrorEvent):
        assert isinstance(ev.error.code, str) and isinstance(ev.error.message, str)
        assert isinstance(ev.error.details, tuple)
        details: List[Optional[ApiErrorDetail]] = [*ev.error.details, ev.error.inner_error]
        for d in details:
            if d is not None:
                assert d.code is None or isinstance(d.code, str)
                assert d.message is None or isinstance(d.message, str)
        hash(ev)
    elif isinstance(ev, UnknownEvent):
        assert isinstance(ev.event, str)
        assert isinstance(ev.raw, dict)
    elif not isinstance(ev, HeartbeatEvent):  # pragma: no cover
        pytest.fail(f"unexpected result {ev!r}")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads, sse_type=st.sampled_from(KINDS + ["message"]))
def test_any_json_gives_an_event_or_malformed(payload: object, sse_type: str) -> None:
    s = ServerSentEvent(event=sse_type, data=json.dumps(payload))
    try:
        ev = parse_event(s)
    except MalformedEvent as exc:
        assert exc.data == s.data
        return
    assert isinstance(payload, dict)
    assert getattr(ev, "raw") == payload
    _check_types(ev)


@settings(max_examples=200, deadline=None)
@given(data=st.text(max_size=40), sse_type=st.sampled_from(KINDS + ["message"]))
def test_any_text_gives_an_event_or_malformed(data: str, sse_type: str) -> None:
    s = ServerSentEvent(event=sse_type, data=data)
    try:
        ev = parse_event(s)
    except MalformedEvent as exc:
        assert exc.data == data
        return
    _check_types(ev)


@settings(max_examples=200, deadline=None)
@given(message=st.text(), raw_ts=rfc3339())
def test_log_round_trip(message: str, raw_ts: Tuple[str, datetime]) -> None:
    raw, expected = raw_ts
    payload: Dict[str, object] = {"event": "log", "timestamp": raw, "message": message}
    ev = parse_event(ServerSentEvent(data=json.dumps(payload)))
    assert ev == LogEvent(timestamp=expected, message=message, timestamp_raw=raw, raw=payload)
