"""The event stream reader: Celery events from the fleet's broker into the store.

Two transports, one shape:

* **Redis** (``redis://``, ``rediss://``): a fast path of our own. One redis-py connection
  (hiredis parser) PSUBSCRIBEs to the event exchange's topics exactly as kombu would
  (``{global_keyprefix}/{db}.celeryev/*``) and the raw messages are decoded by
  :mod:`chatbot.eventwire`. Kombu's virtual transport costs several times more per message,
  and on Redis a slow subscriber is not slowed down but *cut off*: once 32 MB of unread
  messages pile up in its output buffer (Redis's default ``client-output-buffer-limit pubsub
  32mb 8mb 60``) the server closes the connection and everything published until the
  reconnect is lost.
* **AMQP** (``amqp://``, ``pyamqp://``, ``amqps://``): Celery's own receiver (its queue
  declaration, accept list and ``event_from_message``) on a kombu connection.

On Redis the socket is read by a child *process* (:mod:`chatbot.eventreader`, ``reader=
"process"``, the default): it has an interpreter lock of its own, so neither the applier, nor
a garbage collection, nor a ``/metrics`` scrape in this process can stop it from draining the
subscription, and a burst becomes lag in its bounded buffer rather than a cut-off by Redis.
The child decodes the messages too, so the applier here only applies. ``reader="process-raw"``
has the child hand raw messages over, ``reader="thread"`` keeps the reader in this process
(both measured beside it by ``bench/sweep.py``).

In both, a *reader* thread only moves messages off the socket (or the child's pipe) into a
bounded local buffer, and an *applier* thread decodes them (unless the child did) and hands
them to ``store.apply``
in batches, so the store lock is taken once per batch and a store that is briefly busy (a
long query holding its lock) does not stop the socket from being drained. A third *control*
thread sends the ``heartbeat`` / ``enable_events`` broadcasts, which can block on the broker
and so must never run on the reader, nor on a thread that answers Slack.

The transports' readers live beside this core, as mixins of :class:`EventConsumer`:
:mod:`chatbot.consumer_redis` (the connection from a kombu-style URL, the topic, the
reader-process and reader-thread paths) and :mod:`chatbot.consumer_amqp` (kombu and the AMQP
queue's TTL); :mod:`chatbot.consumer_base` declares what they use of the core. This module keeps
the lifecycle, health, supervision and restarts, the bounded buffer, the applier and the
periodic ``enable_events`` / ``heartbeat`` broadcasts.

Anyone on the broker can publish on the event channels, so nothing one message carries may
stop the intake (issue 11): every event is checked by :mod:`chatbot.eventcheck` before the
store sees it, and a message or event that does not decode or check is counted under its
reason (``StreamHealth.malformed_by_reason``) and dropped. A reader or applier that dies anyway
(a bug) is restarted with back-off; the deaths are counted (``intake_restarts``), and a dead or
stalled intake is reported by :meth:`EventConsumer.intake_problem`, which ``/healthz`` turns
into a 503.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from chatbot.config import redact_url
from chatbot.consumer_amqp import AMQP_EVENT_TTL, AMQP_SCHEMES, KombuIntake, amqp_event_ttl
from chatbot.consumer_base import DECODED_EVENT_COST
from chatbot.consumer_redis import (
    READERS,
    REDIS_SCHEMES,
    RedisIntake,
    _ReaderError,
    redis_connection_kwargs,
)
from chatbot.eventcheck import REASONS
from chatbot.eventreader import DecodedBatch, MessageDecoder, ReaderProcess
from chatbot.eventwire import WIRE_REASONS, accept_content
from chatbot.model import StreamHealth
from chatbot.store import FleetStore

if TYPE_CHECKING:
    from celery import Celery

# The transport readers' public names stay importable from here, where they always were.
__all__ = [
    "AMQP_EVENT_TTL",
    "AMQP_SCHEMES",
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "DROP_REASONS",
    "READERS",
    "REDIS_SCHEMES",
    "STALL_SECONDS",
    "EventConsumer",
    "amqp_event_ttl",
    "redis_connection_kwargs",
]

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# Received events waiting this long without one being applied: intake is stalled (/healthz).
STALL_SECONDS = 30.0
# A thread that ran this long before dying starts its restart backoff from the beginning.
_RESTART_RESET = 60.0
# The reasons a message or event is dropped, each counted apart: a fixed set, so a label.
DROP_REASONS = frozenset({*WIRE_REASONS, *REASONS, "undecodable"})


class EventConsumer(RedisIntake, KombuIntake):
    """Consumes the fleet's event stream into ``store`` on background daemon threads.

    ``enable_events`` and ``heartbeat`` are fire-and-forget broadcasts (normally
    :class:`chatbot.control.FleetControl`'s); when not given they go through ``app.control``
    (an app of our own on ``broker_url`` if none is given). After every (re)connect workers
    are asked for a heartbeat, and ``enable_events`` is sent then and every
    ``enable_events_interval`` seconds (0 disables it), so workers started without ``-E``
    send task events too, as Flower does.

    ``fast_path=False`` reads Redis through kombu's transport instead (kept for comparison
    and as an escape hatch); ``split_reader=False`` decodes and applies on the reading
    thread itself (measured by ``bench/ingest.py``).
    """

    def __init__(
        self,
        broker_url: str,
        store: FleetStore,
        *,
        app: Celery | None = None,
        enable_events: Callable[[], None] | None = None,
        heartbeat: Callable[[], None] | None = None,
        enable_events_interval: float = 30.0,
        transport_options: Mapping[str, Any] | None = None,
        batch_max: int = 1000,
        batch_window: float = 0.02,
        clock: Callable[[], float] = time.time,
        fast_path: bool = True,
        split_reader: bool = True,
        buffer_bytes: int = 64 * 1024 * 1024,
        connect_timeout: float = 5.0,
        reader: str = "process",
    ) -> None:
        scheme = urlsplit(broker_url).scheme
        if scheme not in REDIS_SCHEMES | AMQP_SCHEMES:
            raise ValueError(f"unsupported broker scheme {scheme or '(none)'}://")
        if batch_max < 1:
            raise ValueError("batch_max must be >= 1")
        if reader not in READERS:
            raise ValueError(f"reader must be one of {', '.join(READERS)}, got {reader!r}")
        self.broker_url = broker_url
        self.store = store
        self._app = app
        if transport_options is None and app is not None:
            transport_options = app.conf.broker_transport_options
        self._transport_options: dict[str, Any] = dict(transport_options or {})
        self._enable_events = enable_events
        self._heartbeat = heartbeat
        self.enable_events_interval = float(enable_events_interval)
        self.batch_max = batch_max
        self.batch_window = max(0.0, float(batch_window))
        self._clock = clock
        # Sentinel ("redis+sentinel") and failover lists are kombu features the fast path
        # does not reimplement; they stay on kombu's transport.
        self._fast = (
            fast_path
            and scheme in REDIS_SCHEMES
            and ";" not in broker_url
            and "master_name" not in self._transport_options
        )
        self._split = split_reader or not self._fast
        self._use_process = self._fast and self._split and reader.startswith("process")
        self._decode_in_reader = reader == "process"
        self._reader_process: ReaderProcess | None = None
        self._dropped_before = 0  # messages lost with reader processes that died before this one
        self._buffer_limit = max(1, int(buffer_bytes))
        self._connect_timeout = connect_timeout

        serializer = app.conf.event_serializer if app is not None else "json"
        self._accept = accept_content([serializer or "json"])
        self._decoder = MessageDecoder(
            self._accept, self._count_malformed, decoded_cost=DECODED_EVENT_COST
        )

        # Reader → applier hand-off. deque append/popleft are atomic under the GIL; the
        # counters each have a single writer, so their difference is a lock-free backlog.
        self._buffer: deque[Any] = deque()
        self._bytes_in = 0  # reader only
        self._bytes_out = 0  # applier only
        self._msgs_in = 0  # reader only
        self._msgs_out = 0  # applier only
        self._pending_events = 0  # decoded, not yet applied (applier only)
        self._applier_idle = False
        self._wake = threading.Event()

        self._stats_lock = threading.Lock()
        self._malformed = 0
        self._malformed_by_reason: dict[str, int] = {}
        self._intake_restarts = 0
        self._intake_down: dict[str, str] = {}  # thread role -> why it died, until restarted
        self._last_progress = time.monotonic()  # the applier last took or finished a batch
        self._reconnects = 0
        self._disconnects_by_server = 0
        self._last_loss_at: float | None = None
        self._last_error: str | None = None
        self._apply_errors = 0
        self._sessions = 0  # successful connections so far (reader thread only)

        self._stopping = threading.Event()
        self._reader_done = threading.Event()
        self._connected = threading.Event()
        self._kick = threading.Event()  # (re)connected: the control thread broadcasts
        self._threads: list[threading.Thread] = []
        self._started = False

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise RuntimeError("EventConsumer already started")
        self._started = True
        if not self._fast or self._heartbeat is None or self._enable_events is None:
            # Built here, once, before two threads could race to build it.
            self._kombu_app()
        self._threads = [
            threading.Thread(target=self._run_reader, name="chatops-events-reader", daemon=True)
        ]
        if self._split:
            self._threads.append(
                threading.Thread(
                    target=self._supervise,
                    args=("applier", self._run_applier),
                    name="chatops-events-apply",
                    daemon=True,
                )
            )
        self._threads.append(
            threading.Thread(target=self._run_control, name="chatops-events-control", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, apply what was already received, join the threads (bounded)."""
        self._stopping.set()
        self._wake.set()
        self._kick.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def lag_events(self) -> int:
        """Messages received but not yet applied (a ``.multi`` message counts once), the ones
        still held by the reader process included."""
        return max(0, self._msgs_in - self._msgs_out) + self._pending_events + self.reader_backlog

    @property
    def reader_backlog(self) -> int:
        """Messages the reader process read off the socket and has not handed over yet."""
        reader = self._reader_process
        return 0 if reader is None else reader.stats().buffered_messages

    @property
    def reader_pid(self) -> int | None:
        """The reader process's id (``reader="process"`` on Redis), while one runs."""
        reader = self._reader_process
        return None if reader is None else reader.pid

    @property
    def events_dropped(self) -> int:
        """Messages the reader process had received and died holding: lost."""
        with self._stats_lock:  # the handle and the sum change together
            reader = self._reader_process
            before = self._dropped_before
        return before + (0 if reader is None else reader.stats().dropped_messages)

    @property
    def malformed(self) -> int:
        return self._malformed

    @property
    def intake_restarts(self) -> int:
        """How often the reader or the applier thread died and was restarted."""
        return self._intake_restarts

    def intake_problem(self, stall_after: float = STALL_SECONDS) -> str | None:
        """Why events are not being taken in, or None: a thread that died (and is waiting to
        be restarted) or ended, or received events of which none was applied for
        ``stall_after`` seconds. ``/healthz`` answers 503 with it."""
        if not self._started or self._stopping.is_set():
            return None
        with self._stats_lock:
            down = dict(self._intake_down)
        if down:
            return "event intake " + "; ".join(
                f"{role} died ({why}), restarting" for role, why in sorted(down.items())
            )
        ended = [t.name for t in self._threads if not t.is_alive()]
        if ended:
            return "event intake thread ended: " + ", ".join(ended)
        lag = self.lag_events
        idle = time.monotonic() - self._last_progress
        if lag > 0 and idle > stall_after:
            return f"event intake stalled: {lag} events received, none applied for {idle:.0f} s"
        return None

    def health_into(self, h: StreamHealth) -> StreamHealth:
        """Fill the consumer's half of ``h`` (the store fills the rest); returns ``h``."""
        problem = self.intake_problem()
        with self._stats_lock:
            h.connected = self.connected
            h.broker = redact_url(self.broker_url)
            h.reconnects = self._reconnects
            h.disconnects_by_server = self._disconnects_by_server
            h.last_loss_at = self._last_loss_at
            h.last_error = self._last_error
            h.malformed += self._malformed
            by_reason = h.malformed_by_reason
            for reason, count in self._malformed_by_reason.items():
                by_reason[reason] = by_reason.get(reason, 0) + count
            h.intake_restarts = self._intake_restarts
        h.intake_problem = problem
        h.events_dropped = self.events_dropped
        h.lag_events = self.lag_events
        return h

    def _supervise(self, role: str, run: Callable[[], None]) -> None:
        """Run ``run`` until it returns; if it raises, count the death and restart it.

        Per-event failures never get here (``_process`` drops and counts them); this is for
        the bug nobody foresaw, which must cost a restart, shown in health, not the stream.
        """
        failures = 0
        while True:
            started = time.monotonic()
            try:
                run()
                return
            except Exception as exc:
                if time.monotonic() - started > _RESTART_RESET:
                    failures = 0
                failures += 1
                # /healthz is unauthenticated: the error's type, not its text (which may quote
                # an event's value); the log has the traceback.
                why = type(exc).__name__
                with self._stats_lock:
                    self._intake_restarts += 1
                    self._intake_down[role] = why
                log.exception("Event %s crashed (%d in a row); restarting it", role, failures)
                if role == "reader":
                    self._connected.clear()
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 6))
                if self._stopping.wait(delay):
                    return
                with self._stats_lock:
                    del self._intake_down[role]  # restarting now

    # -- shared bookkeeping ----------------------------------------------------------
    def _on_connected(self) -> None:
        with self._stats_lock:
            if self._sessions:
                self._reconnects += 1
            self._sessions += 1
        self._connected.set()
        self._kick.set()
        log.info("Consuming Celery events from %s", redact_url(self.broker_url))

    def _on_disconnected(self, exc: BaseException | None, by_server: bool) -> None:
        self._connected.clear()
        if exc is None:
            return
        message = str(exc) if isinstance(exc, _ReaderError) else f"{type(exc).__name__}: {exc}"
        with self._stats_lock:
            self._last_error = message
            if by_server:
                self._disconnects_by_server += 1
                self._last_loss_at = self._clock()
        if by_server:
            log.warning(
                "Event loss detected: %s closed the event subscription (the consumer fell behind"
                " the broker's output buffer limit, was killed, or the broker restarted);"
                " events published until the reconnect are lost",
                redact_url(self.broker_url),
            )

    def _count_malformed(self, reason: str, detail: str, dropped: int = 1) -> None:
        """Count ``dropped`` messages or events dropped under ``reason`` (one of DROP_REASONS)."""
        if reason not in DROP_REASONS:
            reason = "undecodable"
        with self._stats_lock:
            self._malformed += dropped
            by_reason = self._malformed_by_reason
            before = by_reason.get(reason, 0)
            by_reason[reason] = before + dropped
        # The first of each reason is worth a warning (a misconfigured serializer looks like
        # this); after that a flood of garbage must not flood the log. The detail names the
        # field and the problem, never the value: a value may be a secret.
        if before == 0:
            log.warning("Dropped a malformed event message (%s): %s", reason, detail[:300])
        else:
            log.debug("Dropped a malformed event message (%s): %s", reason, detail[:300])

    def _backoff(self, attempt: int, was_good: bool) -> bool:
        """Sleep before reconnect attempt ``attempt``; False if stopping."""
        # Right after a good connection dropped, every second offline is lost events:
        # try once at once, then back off 1 s, 2 s, ... 30 s.
        if was_good and attempt == 0:
            return not self._stopping.is_set()
        step = attempt - 1 if was_good else attempt
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** max(0, step)))
        log.warning("Event stream unavailable (%s); retrying in %.0f s", self._last_error, delay)
        return not self._stopping.wait(delay)

    def _put(self, item: Any, cost: int, messages: int = 1) -> None:
        """Reader side of the hand-off: wait (never drop) while the local buffer is full."""
        while self._bytes_in - self._bytes_out > self._buffer_limit:
            if self._stopping.is_set():
                return
            # Back-pressure: the socket stops being read and the broker buffers instead.
            # On Redis that ends in a server-side disconnect, counted as event loss.
            if self._applier_idle:
                self._wake.set()
            time.sleep(0.001)
        self._buffer.append(item)
        self._bytes_in += cost
        self._msgs_in += messages
        if self._applier_idle:
            self._wake.set()

    # -- applier ---------------------------------------------------------------------
    def _run_applier(self) -> None:
        buffer = self._buffer
        while True:
            if not buffer:
                self._last_progress = time.monotonic()
                if self._reader_done.is_set():
                    return
                self._applier_idle = True
                if not buffer:  # re-check after publishing the flag: no lost wake-up
                    self._wake.wait(0.5)
                self._wake.clear()
                self._applier_idle = False
                # Let a trickle accumulate into one batch instead of one lock per event.
                if buffer and self.batch_window and not self._stopping.is_set():
                    time.sleep(self.batch_window)
                continue
            take = min(len(buffer), self.batch_max)
            items = [buffer.popleft() for _ in range(take)]
            self._process(items)
            self._last_progress = time.monotonic()

    def _process(self, items: list[Any]) -> None:
        """Decode raw messages (Redis), check decoded events (AMQP), or take what the reader
        process decoded, and apply them; what does not decode or check is counted and dropped
        (:class:`chatbot.eventreader.MessageDecoder`)."""
        events: list[dict[str, Any]] = []
        raw: list[Any] = []
        cost = 0
        messages = 0
        for item in items:
            if type(item) is DecodedBatch:
                events.extend(item.events)
                cost += item.cost
                messages += item.messages
                for reason, (count, detail) in item.drops.items():
                    self._count_malformed(reason, detail, count)
            else:
                raw.append(item)
        if raw:
            cost += self._decoder.decode_into(raw, events, self._clock())
            messages += len(raw)
        self._pending_events = len(events)
        self._msgs_out += messages
        self._bytes_out += cost
        self._apply(events)
        self._pending_events = 0

    def _apply(self, events: list[dict[str, Any]]) -> None:
        step = self.batch_max
        for start in range(0, len(events), step):
            chunk = events if len(events) <= step else events[start : start + step]
            try:
                self.store.apply(chunk)
            except Exception:
                # The store promises not to raise; if it does, lose this batch, not the stream.
                self._apply_errors += 1
                if self._apply_errors == 1 or self._apply_errors % 1000 == 0:
                    log.exception("store.apply failed (%d times so far)", self._apply_errors)
            self._pending_events = max(0, self._pending_events - len(chunk))

    # -- reader (either transport) ----------------------------------------------------
    def _run_reader(self) -> None:
        try:
            target = self._run_kombu
            if self._use_process:
                target = self._run_redis_process
            elif self._fast:
                target = self._run_redis
            self._supervise("reader", target)
        finally:
            self._connected.clear()
            self._reader_done.set()
            self._wake.set()

    # -- control broadcasts ----------------------------------------------------------
    def _broadcast(self, name: str) -> Callable[[], None] | None:
        given = self._heartbeat if name == "heartbeat" else self._enable_events
        if given is not None:
            return given
        app = self._kombu_app()
        if name == "heartbeat":
            return lambda: app.control.broadcast("heartbeat")
        return lambda: app.control.enable_events()

    def _run_control(self) -> None:
        interval = self.enable_events_interval
        next_enable: float | None = None
        failures: dict[str, str] = {}
        while not self._stopping.is_set():
            timeout = 1.0
            if next_enable is not None:
                timeout = max(0.0, min(timeout, next_enable - time.monotonic()))
            kicked = self._kick.wait(timeout)
            if self._stopping.is_set():
                return
            if kicked:
                self._kick.clear()
                self._call("heartbeat", failures)
                if interval > 0:
                    self._call("enable_events", failures)
                    next_enable = time.monotonic() + interval
            elif (
                next_enable is not None
                and time.monotonic() >= next_enable
                and self._connected.is_set()
            ):
                self._call("enable_events", failures)
                next_enable = time.monotonic() + interval

    def _call(self, name: str, failures: dict[str, str]) -> None:
        try:
            fn = self._broadcast(name)
            if fn is not None:
                fn()
            failures.pop(name, None)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            # Log a failing broadcast once per distinct error, not every 30 s.
            if failures.get(name) != text:
                log.warning("Broadcast %s failed: %s", name, text)
            failures[name] = text
