"""A scriptable, hostile stand-in for the Kernel API, stdlib only, on 127.0.0.1.

Every connection is answered by a *plan*: a list of steps that write raw bytes
(head and body are the test's to choose, lies included), trickle them one byte at
a time, pause, hold the socket open and silent, or drop it (FIN or RST) at any
byte.  Which plan a request gets is decided by a *responder*, called with the
parsed request and its index among the requests to the same endpoint:

- :class:`Scripted` hands out a fixed list of plans in order, then a fallback;
- :class:`Realistic` replays a fixed event list honouring ``since`` (inclusive,
  by each event's own timestamp) like the real API, with optional faults per
  connection, a state stamped "now" on every connect, events that appear only
  on a later connection, chunked framing or a lying Content-Length; it also
  answers ``GET /invocations/{id}`` with the invocation object.

Every request is recorded (:class:`Request`: path, query incl. ``since``,
headers).  The server stops by itself after ``lifetime`` seconds; every wait
inside it ends when it stops.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

JSONObject = Dict[str, object]

# ---------------------------------------------------------------- plan steps


@dataclass(frozen=True)
class Send:
    """Write these bytes at once."""

    data: bytes


@dataclass(frozen=True)
class Trickle:
    """Write these bytes one at a time, ``interval`` seconds apart."""

    data: bytes
    interval: float = 0.05


@dataclass(frozen=True)
class TrickleForever:
    """Write ``pattern`` one byte at a time, over and over, until the client goes
    or the server stops (bounded by the server's lifetime)."""

    pattern: bytes = b"x"
    interval: float = 0.05


@dataclass(frozen=True)
class Pause:
    """Wait (the socket stays open and silent)."""

    seconds: float


@dataclass(frozen=True)
class Hold:
    """Keep the connection open and silent until the client closes it or the
    server stops (or ``seconds`` pass)."""

    seconds: float = 1e9


@dataclass(frozen=True)
class Beat:
    """Send one sse_heartbeat event stamped at the moment it is sent."""

    chunked: bool = False


@dataclass(frozen=True)
class Close:
    """Close the connection now (a clean FIN; what was sent stays sent)."""


@dataclass(frozen=True)
class Reset:
    """Abort the connection with an RST (SO_LINGER 0)."""


Step = Union[Send, Trickle, TrickleForever, Pause, Hold, Beat, Close, Reset]
Plan = List[Step]

# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """One request as the server read it."""

    method: str
    target: str
    path: str
    query: Dict[str, List[str]]
    headers: Dict[str, str]  # names lower-cased
    at: float  # time.monotonic()

    @property
    def since(self) -> Optional[str]:
        values = self.query.get("since")
        return values[0] if values else None

    @property
    def is_events(self) -> bool:
        return self.path.endswith("/events")


Responder = Callable[[Request, int], Plan]

# ---------------------------------------------------------------- bytes on the wire


def head(status: int = 200, headers: Sequence[Tuple[str, str]] = (), reason: Optional[str] = None) -> bytes:
    """A raw HTTP/1.1 response head; the headers exactly as given (no defaults)."""
    import http.client

    text = reason if reason is not None else http.client.responses.get(status, "Whatever")
    lines = [f"HTTP/1.1 {status} {text}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict")


SSE_HEADERS: Tuple[Tuple[str, str], ...] = (
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-SSE-Content-Type", "application/json"),
    ("Connection", "close"),
)


def sse_head(extra: Sequence[Tuple[str, str]] = ()) -> bytes:
    """A 200 event-stream head (no Content-Length, no chunking: body until close)."""
    return head(200, list(SSE_HEADERS) + list(extra))


def sse(data: Union[JSONObject, str], event: Optional[str] = None) -> bytes:
    """One SSE block carrying ``data`` (a JSON object, or raw text for one data line)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = ([f"event: {event}"] if event else []) + [f"data: {line}" for line in text.split("\n")]
    return ("\n".join(lines) + "\n\n").encode("utf-8", "surrogatepass")


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def json_response(status: int, obj: object, extra: Sequence[Tuple[str, str]] = ()) -> Plan:
    """A complete JSON response with a correct Content-Length, then close."""
    body = json.dumps(obj).encode("utf-8")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")]
    return [Send(head(status, headers + list(extra)) + body), Close()]


def error_body(code: str, message: str) -> JSONObject:
    """The spec's Error object."""
    return {"code": code, "message": message}


# ---------------------------------------------------------------- Kernel-shaped events

BASE_TIME = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=600)
"""Event times of the test invocations: ten minutes ago (so "now" is after all of them)."""


def stamp(offset: float, base: Optional[datetime] = None) -> str:
    """An RFC 3339 timestamp with nanoseconds, ``offset`` seconds after ``base``."""
    moment = (base or BASE_TIME) + timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond * 1000:09d}Z"


def now_stamp() -> str:
    """The current time as the server stamps it."""
    moment = datetime.now(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond * 1000:09d}Z"


def invocation(
    invocation_id: str,
    status: str = "running",
    *,
    finished: Optional[str] = None,
    output: Optional[str] = None,
    status_reason: Optional[str] = None,
) -> JSONObject:
    """The spec's Invocation object."""
    obj: JSONObject = {
        "id": invocation_id,
        "app_name": "hostile-app",
        "action_name": "act",
        "version": "1.0.0",
        "status": status,
        "started_at": stamp(0),
        "finished_at": finished,
        "payload": '{"in":1}',
        "output": output,
    }
    if status_reason is not None:
        obj["status_reason"] = status_reason
    return obj


def log(timestamp: str, message: str) -> JSONObject:
    return {"event": "log", "timestamp": timestamp, "message": message}


def state(timestamp: str, inv: JSONObject) -> JSONObject:
    return {"event": "invocation_state", "timestamp": timestamp, "invocation": inv}


def terminal(invocation_id: str, timestamp: str, status: str = "succeeded") -> JSONObject:
    reason = "the action raised" if status == "failed" else None
    output = '{"ok":true}' if status == "succeeded" else None
    return state(timestamp, invocation(invocation_id, status, finished=timestamp, output=output, status_reason=reason))


def error_event(timestamp: str, code: str, message: str) -> JSONObject:
    return {"event": "error", "timestamp": timestamp, "error": {"code": code, "message": message}}


def raw_event(timestamp: str, data: str) -> JSONObject:
    """An event a :class:`Realistic` server sends as raw ``data`` (malformed JSON,
    say), stored at ``timestamp`` for ``since``."""
    return {"__raw__": data, "__ts__": timestamp}


def heartbeat(timestamp: Optional[str] = None) -> JSONObject:
    return {"event": "sse_heartbeat", "timestamp": timestamp or now_stamp()}


def standard_events(invocation_id: str, messages: Sequence[str], status: str = "succeeded",
                    offsets: Optional[Sequence[float]] = None) -> List[JSONObject]:
    """queued/running state, one log per message (at ``offsets``, default 1 s
    apart), then the terminal state one second after the last."""
    times = list(offsets) if offsets is not None else [1.0 + index for index in range(len(messages))]
    events: List[JSONObject] = [state(stamp(0.5), invocation(invocation_id, "running"))]
    events += [log(stamp(offset), message) for offset, message in zip(times, messages)]
    end = max(times, default=1.0) + 1.0
    events.append(terminal(invocation_id, stamp(end), status))
    return events


# ---------------------------------------------------------------- time keys

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|z|[+-]\d\d:\d\d)\Z"
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

TimeKey = Tuple[int, int]  # (seconds since the epoch, nanoseconds)


def time_key(text: str) -> Optional[TimeKey]:
    """An exact ordering key of an RFC 3339 time, or None if it is not one."""
    match = _RFC3339.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(match.group(index)) for index in range(1, 7))
    try:
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=timezone.utc)
    except ValueError:
        return None
    zone = match.group(8)
    offset = 0
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    seconds = int((moment - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds()) - offset
    fraction = (match.group(7) or "")[:9].ljust(9, "0")
    return seconds, int(fraction)


def since_key(since: Optional[str]) -> Optional[TimeKey]:
    """What the real API makes of ``since``: an RFC 3339 time, or a duration ago."""
    if since is None or since == "":
        return None
    key = time_key(since)
    if key is not None:
        return key
    position = 0
    total = 0.0
    while position < len(since):
        match = _DURATION_PART.match(since, position)
        if not match:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    moment = time.time() - total
    return int(moment), int((moment - int(moment)) * 1e9)


# ---------------------------------------------------------------- responders


class Scripted:
    """Hands out ``plans`` in order, one per request; then ``then`` (a plan for
    every further request, or another responder)."""

    def __init__(self, plans: Sequence[Plan], then: Union[Plan, Responder, None] = None) -> None:
        self.plans = list(plans)
        self.then = then

    def __call__(self, request: Request, index: int) -> Plan:
        if index < len(self.plans):
            return self.plans[index]
        if self.then is None:
            return [Send(head(500, [("Content-Length", "0"), ("Connection", "close")])), Close()]
        if callable(self.then):
            return self.then(request, index - len(self.plans))
        return self.then


@dataclass(frozen=True)
class Fault:
    """What goes wrong on one connection of a :class:`Realistic` server.

    ``status`` other than 200: answer that (JSON error body, ``retry_after`` as
    the Retry-After header if given) instead of the stream.  Otherwise send
    the stream, and once ``cut_events`` events (or ``cut_bytes`` body bytes)
    are out (or right after the first event whose message or raw data is
    ``cut_after``), do ``tail``: ``drop`` (FIN), ``reset`` (RST), ``stall`` (silent
    ``stall`` seconds, then drop), ``resume`` (silent ``stall`` seconds, then
    go on), ``trickle`` (an SSE line that never ends, a byte every 50 ms),
    ``hold`` (silent until the client goes).
    """

    status: int = 200
    retry_after: Optional[str] = None
    cut_events: Optional[int] = None
    cut_bytes: Optional[int] = None
    cut_after: Optional[str] = None
    tail: str = "drop"
    stall: float = 0.0


class Realistic:
    """Replays ``events`` honouring ``since`` (inclusive, by each event's own
    timestamp, in storage order), like the real API.

    Options:

    - ``faults``: one :class:`Fault` per events request, in order (None: healthy);
    - ``state_on_connect``: every connect first sends the current (non-terminal)
      invocation_state stamped now; ``on_connect_status`` says which status;
    - ``late``: ``(from_request, insert_at, event)``: the event is stored (at index
      ``insert_at`` of ``events``) only for requests ``from_request`` and later;
    - ``chunked``: chunked framing, one chunk per event;
    - ``content_length``: ``(request_index, length)``: that response carries a
      Content-Length of ``length`` (a lie: the whole stream follows anyway);
    - ``after_end``: what a stream does once the replay is out without a
      terminal state: heartbeats every ``heartbeat_interval`` s (``heartbeats``),
      or ``close``.
    - ``status_invocation``: the answer of ``GET /invocations/{id}``
      (default: the invocation of the last terminal state in ``events``).
    """

    def __init__(
        self,
        invocation_id: str,
        events: Sequence[JSONObject],
        *,
        faults: Sequence[Optional[Fault]] = (),
        state_on_connect: bool = False,
        on_connect_status: str = "running",
        late: Sequence[Tuple[int, int, JSONObject]] = (),
        chunked: bool = False,
        content_length: Optional[Tuple[int, int]] = None,
        after_end: str = "heartbeats",
        heartbeat_interval: float = 0.2,
        event_interval: float = 0.0,
        status_invocation: Optional[JSONObject] = None,
        hold_after_terminal: bool = False,
    ) -> None:
        self.invocation_id = invocation_id
        self.events = list(events)
        self.faults = list(faults)
        self.state_on_connect = state_on_connect
        self.on_connect_status = on_connect_status
        self.late = list(late)
        self.chunked = chunked
        self.content_length = content_length
        self.after_end = after_end
        self.heartbeat_interval = heartbeat_interval
        self.event_interval = event_interval
        self.hold_after_terminal = hold_after_terminal
        self.status_invocation = status_invocation
        self.sent: List[List[JSONObject]] = []  # per events request: what went out whole
        self.lock = threading.Lock()

    # what the API holds at request ``index``
    def stored(self, index: int) -> List[JSONObject]:
        events = list(self.events)
        for from_request, insert_at, event in sorted(self.late, key=lambda item: -item[1]):
            if index >= from_request:
                events.insert(insert_at, event)
        return events

    def all_logs(self) -> List[str]:
        """Every log message the invocation has (late ones included), in storage order."""
        return [str(event["message"]) for event in self.stored(1 << 30) if event.get("event") == "log"]

    def final_invocation(self) -> JSONObject:
        if self.status_invocation is not None:
            return self.status_invocation
        for event in reversed(self.events):
            inv = event.get("invocation")
            if isinstance(inv, dict) and inv.get("status") in ("succeeded", "failed"):
                return inv
        return invocation(self.invocation_id, "running")

    def __call__(self, request: Request, index: int) -> Plan:
        if not request.is_events:
            return json_response(200, self.final_invocation())
        fault = self.faults[index] if index < len(self.faults) else None
        if fault is not None and fault.status != 200:
            retry = [("Retry-After", fault.retry_after)] if fault.retry_after is not None else []
            return json_response(fault.status, error_body("unavailable", "try again later"), retry)
        bound = since_key(request.since)
        replay: List[JSONObject] = []
        if self.state_on_connect:
            replay.append(state(now_stamp(), invocation(self.invocation_id, self.on_connect_status)))
        ended = False
        for event in self.stored(index):
            key = time_key(str(event.get("timestamp", event.get("__ts__", ""))))
            if bound is not None and key is not None and key < bound:
                continue
            replay.append(event)
            inv = event.get("invocation")
            if isinstance(inv, dict) and inv.get("status") in ("succeeded", "failed"):
                ended = True
                break
        blocks = [sse(str(event["__raw__"])) if "__raw__" in event else sse(event) for event in replay]
        framed = [chunk(block) for block in blocks] if self.chunked else list(blocks)
        extra: List[Tuple[str, str]] = []
        if self.chunked:
            extra.append(("Transfer-Encoding", "chunked"))
        if self.content_length is not None and self.content_length[0] == index:
            extra.append(("Content-Length", str(self.content_length[1])))
        plan: Plan = [Send(sse_head(extra))]
        cut_at: Optional[int] = None
        if fault is not None and fault.cut_events is not None:
            cut_at = sum(len(piece) for piece in framed[: fault.cut_events])
        elif fault is not None and fault.cut_bytes is not None:
            cut_at = fault.cut_bytes
        elif fault is not None and fault.cut_after is not None:
            for position, event in enumerate(replay):
                if fault.cut_after in (event.get("message"), event.get("__raw__")):
                    cut_at = sum(len(piece) for piece in framed[: position + 1])
                    break
        body = b"".join(framed)
        whole: List[JSONObject] = []
        offset = 0
        for event, piece in zip(replay, framed):
            if cut_at is not None and offset + len(piece) > cut_at:
                break
            whole.append(event)
            offset += len(piece)
        with self.lock:
            self.sent.append(whole)
        if cut_at is not None and fault is not None:
            plan.extend(self._paced(body[:cut_at], framed))
            if fault.tail in ("stall", "resume"):
                plan.append(Pause(fault.stall))
            if fault.tail == "resume":
                plan.extend(self._paced(body[cut_at:], framed))
                plan.extend(self._ending(ended))
            elif fault.tail == "reset":
                plan.append(Reset())
            elif fault.tail == "trickle":
                plan.append(TrickleForever(b"data: {\"event\":\"log\"," if not self.chunked else b"1\r\nx\r\n", 0.05))
            elif fault.tail == "hold":
                plan.append(Hold())
            else:
                plan.append(Close())
            return plan
        plan.extend(self._paced(body, framed))
        plan.extend(self._ending(ended))
        return plan

    def _paced(self, data: bytes, framed: Sequence[bytes]) -> Plan:
        if self.event_interval <= 0 or not data:
            return [Send(data)] if data else []
        steps: Plan = []
        position = 0
        for piece in framed:
            if position >= len(data):
                break
            steps.append(Send(data[position:position + len(piece)]))
            steps.append(Pause(self.event_interval))
            position += len(piece)
        return steps

    def _ending(self, ended: bool) -> Plan:
        last = LAST_CHUNK if self.chunked else b""
        if ended:
            if self.hold_after_terminal:
                return [Hold(5.0)]
            return [Send(last), Close()] if last else [Close()]
        if self.after_end == "close":
            return [Send(last), Close()] if last else [Close()]
        steps: Plan = []
        for _ in range(200):  # bounded: 200 heartbeats, then the stream ends
            steps.append(Beat(self.chunked))
            steps.append(Pause(self.heartbeat_interval))
        steps.append(Close())
        return steps


# ---------------------------------------------------------------- the server


class HostileServer:
    """A raw-socket HTTP/1.1 server on 127.0.0.1 answering with plans.

    ``events`` answers ``GET .../invocations/{id}/events``; ``status`` answers
    every other request (``GET /invocations/{id}``) — by default ``events`` too
    (a :class:`Realistic` answers both).  Use as a context manager, or call
    :meth:`start` and :meth:`stop`.  It stops by itself after ``lifetime`` s.
    """

    def __init__(self, events: Responder, status: Optional[Responder] = None, lifetime: float = 30.0) -> None:
        self.events_responder = events
        self.status_responder = status or events
        self.lifetime = lifetime
        self.requests: List[Request] = []
        self.connections = 0
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._started = time.monotonic()
        self._acceptor = threading.Thread(target=self._accept_loop, name="hostile-accept", daemon=True)

    def start(self) -> HostileServer:
        if not self._acceptor.is_alive() and not self._stop.is_set():
            self._started = time.monotonic()
            self._acceptor.start()
        return self

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._acceptor.is_alive():
            self._acceptor.join(2.0)
        with self._lock:
            sockets = list(self._open)
            threads = list(self._threads)
        for sock in sockets:
            _quiet_close(sock)
        for thread in threads:
            thread.join(2.0)
        _quiet_close(self._listener)

    # -- views

    @property
    def events_requests(self) -> List[Request]:
        with self._lock:
            return [request for request in self.requests if request.is_events]

    @property
    def status_requests(self) -> List[Request]:
        with self._lock:
            return [request for request in self.requests if not request.is_events]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``count`` event requests have arrived."""
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            if len(self.events_requests) >= count:
                return True
            time.sleep(0.01)
        return False

    # -- internals

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._started > self.lifetime:
                self._stop.set()
                break
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self._lock:
                self.connections += 1
                self._open.append(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), name="hostile-conn", daemon=True)
                self._threads.append(thread)
            thread.start()
        # stop every connection too when the lifetime ends
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _quiet_close(sock)

    def _wait(self, seconds: float) -> bool:
        """Sleep; False if the server stopped meanwhile."""
        return not self._stop.wait(max(0.0, seconds))

    def _serve(self, conn: socket.socket) -> None:
        try:
            request = self._read_request(conn)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
                same = [r for r in self.requests if r.is_events == request.is_events]
                index = len(same) - 1
            responder = self.events_responder if request.is_events else self.status_responder
            plan = responder(request, index)
            self._run(conn, plan)
        except OSError:
            pass  # the client went away: part of the game
        except Exception as exc:  # a bug in a test's plan: keep it visible
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            _quiet_close(conn)
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)

    def _read_request(self, conn: socket.socket) -> Optional[Request]:
        conn.settimeout(5.0)
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > 65536 or self._stop.is_set():
                return None
            try:
                piece = conn.recv(4096)
            except socket.timeout:
                return None
            if not piece:
                return None
            data += piece
        head_text = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head_text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) < 2:
            return None
        method, target = parts[0], parts[1]
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        split = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        return Request(method, target, urllib.parse.unquote(split.path), query, headers, time.monotonic())

    def _run(self, conn: socket.socket, plan: Plan) -> None:
        for step in plan:
            if self._stop.is_set():
                return
            if isinstance(step, Send):
                if step.data:
                    conn.sendall(step.data)
            elif isinstance(step, Trickle):
                for byte in step.data:
                    conn.sendall(bytes([byte]))
                    if not self._wait(step.interval):
                        return
            elif isinstance(step, TrickleForever):
                position = 0
                while not self._stop.is_set():
                    conn.sendall(step.pattern[position:position + 1])
                    position = (position + 1) % len(step.pattern)
                    if not self._wait(step.interval):
                        return
            elif isinstance(step, Pause):
                if not self._wait(step.seconds):
                    return
            elif isinstance(step, Hold):
                ends = time.monotonic() + step.seconds
                conn.settimeout(0.1)
                while not self._stop.is_set() and time.monotonic() < ends:
                    try:
                        if conn.recv(4096) == b"":
                            return  # the client closed
                    except socket.timeout:
                        continue
            elif isinstance(step, Beat):
                block = sse(heartbeat())
                conn.sendall(chunk(block) if step.chunked else block)
            elif isinstance(step, Reset):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            elif isinstance(step, Close):
                with _suppress():
                    conn.shutdown(socket.SHUT_WR)
                # let the client read the rest before the close
                conn.settimeout(0.5)
                with _suppress():
                    conn.recv(4096)
                return


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, tb: object) -> bool:
        return isinstance(value, OSError)


def _quiet_close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def serve(events: Responder, status: Optional[Responder] = None, lifetime: float = 30.0) -> HostileServer:
    """A started :class:`HostileServer`."""
    return HostileServer(events, status, lifetime).start()


__all__ = [
    "BASE_TIME",
    "Beat",
    "Close",
    "Fault",
    "Hold",
    "HostileServer",
    "LAST_CHUNK",
    "Pause",
    "Plan",
    "Realistic",
    "Request",
    "Reset",
    "SSE_HEADERS",
    "Scripted",
    "Send",
    "Step",
    "Trickle",
    "TrickleForever",
    "chunk",
    "error_body",
    "error_event",
    "head",
    "heartbeat",
    "invocation",
    "json_response",
    "log",
    "now_stamp",
    "raw_event",
    "serve",
    "since_key",
    "sse",
    "sse_head",
    "stamp",
    "standard_events",
    "state",
    "terminal",
    "time_key",
]
