"""A reader *process* for the Redis event subscription: the socket is drained on its own core.

Why a process (measured by ``bench/sweep.py``, written up in ``docs/architecture.md``): Redis
does not slow a pub/sub subscriber down, it cuts it off once its output buffer passes
``client-output-buffer-limit pubsub`` (32 MB by default), and every event published until the
reconnect is lost. A reader *thread* shares its interpreter lock with the applier, the store,
the garbage collector and a ``/metrics`` scrape: a full collection at 100k retained tasks, or
a burst the applier cannot follow, stops the reader too, and at tens of thousands of events a
second Redis's buffer fills within a second. A child process has an interpreter of its own:
it only reads the socket and buffers raw messages (bounded, ``buffer_bytes``), so a burst
becomes lag in this buffer, not a cut-off.

The child also *decodes* (``Subscription.decode``): kombu's envelope, base64, the JSON body,
:mod:`chatbot.eventcheck`'s checks and the localization cost the applier about as much as the
store does, and in the child they run on the other core. The decoding is
:class:`MessageDecoder`, the same code the consumer runs when it decodes itself.

The child speaks to the parent over one :func:`multiprocessing.Pipe`, in order, with frames
(``kind, payload``): :data:`EVENTS` (a :class:`DecodedBatch`, from up to ``batch_max``
messages or ``batch_bytes``), or :data:`MESSAGES` (the raw messages, when the child does not
decode), :data:`CONNECTED` (a subscription is in place) and :data:`DISCONNECTED` (``(error
text, closed by the server)``). Reconnecting with back-off
happens in the child; the parent turns the frames into the consumer's own bookkeeping.
What the child holds but has not handed over yet is published in shared counters, so the
parent can report it as lag, and counted as *dropped* if the child dies holding it.

The child is started with the ``spawn`` method: the parent runs threads (Bolt, waitress, the
scheduler), and ``fork`` of a threaded process may copy a lock in its held state.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.sharedctypes
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import redis
import redis.exceptions

from chatbot.eventcheck import EventChecker
from chatbot.eventwire import Localizer, MalformedMessage, decode_body

log = logging.getLogger(__name__)

MESSAGES: Final = "m"
EVENTS: Final = "e"
CONNECTED: Final = "c"
DISCONNECTED: Final = "d"

# redis-py's message when recv() returns EOF: the server closed the subscription.
SERVER_CLOSED = "Connection closed by server"
_READ_TIMEOUT = 0.25  # how often a blocked read looks at the stop flag
IDLE_PING = 15.0  # an idle subscription sends PING so a dead peer is noticed
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0

# Shared counters, written by the child only (one writer: no lock needed for a reader that
# only wants a recent value).
_BUFFERED_MESSAGES = 0  # read from the socket, not handed to the parent yet
_BUFFERED_BYTES = 1
_READ_MESSAGES = 2  # read from the socket since start
_BACKPRESSURE_WAITS = 3  # times the socket was left unread because the buffer was full
_COUNTERS = 4


def after_quiet_read(conn: redis.Connection, last_reply: float, pinged: bool) -> bool:
    """What a subscriber does when a read timed out: PING once the subscription has been quiet
    for IDLE_PING seconds, and give up (TimeoutError, to reconnect) past twice that, since a
    hung broker never closes the socket. Returns whether a PING is out."""
    idle = time.monotonic() - last_reply
    if idle > 2 * IDLE_PING:
        # Called in the read's except clause: the read's own timeout is not the news.
        raise redis.exceptions.TimeoutError(f"no reply from the broker for {idle:.0f} s") from None
    if idle > IDLE_PING and not pinged:
        conn.send_command("PING")
        return True
    return pinged


@dataclass(slots=True)
class DecodedBatch:
    """What the child made of ``messages`` raw messages (``cost`` bytes): the events to apply,
    and the drops by reason (``reason -> (count, the first one's detail)``)."""

    events: list[dict[str, Any]]
    messages: int
    cost: int
    drops: dict[str, tuple[int, str]]


class MessageDecoder:
    """Raw event messages to checked, localized events; what does not decode or check is
    reported to ``on_drop(reason, detail)`` and left out.

    Whatever one message or event does (not JSON, nested past any parser's depth, fields of
    the wrong type, a value the checker or a decoder chokes on), it is dropped here and the
    next one is taken: nothing one event carries may end the thread that decodes.
    """

    def __init__(
        self,
        accept: frozenset[str],
        on_drop: Callable[[str, str], None],
        *,
        decoded_cost: int = 1024,
    ) -> None:
        self.accept = accept
        self.on_drop = on_drop
        self.decoded_cost = decoded_cost
        self.localizer = Localizer()
        self.checker = EventChecker()

    def decode_into(
        self, items: Iterable[Any], events: list[dict[str, Any]], now: float
    ) -> int:
        """Append the events of ``items`` (raw bytes, or dicts already through Celery's
        ``event_from_message``: checked only) to ``events``; returns their cost in bytes."""
        localizer = self.localizer
        localizer.refresh_offset()
        localize = localizer.localize
        checker = self.checker
        checker.refresh()
        check = checker.check
        append = events.append
        accept = self.accept
        on_drop = self.on_drop
        cost = 0
        for item in items:
            try:
                if type(item) is dict:
                    cost += self.decoded_cost
                    append(check(item))
                    continue
                cost += len(item)
                body = decode_body(item, accept)
                if type(body) is list:
                    for event in body:
                        try:
                            localize(check(event), now)
                        except MalformedMessage as exc:
                            on_drop(exc.reason, str(exc))
                            continue
                        append(event)
                else:
                    localize(check(body), now)
                    append(body)
            except MalformedMessage as exc:
                on_drop(exc.reason, str(exc))
            except Exception as exc:  # a decoder's or the checker's bug: this message only
                # The type only: an error's text may quote the value, and a value may be a secret.
                on_drop("undecodable", type(exc).__name__)
        return cost


@dataclass(frozen=True)
class Subscription:
    """Everything the child needs to connect and subscribe: plain data, so it can be pickled."""

    connection_class: type[redis.Connection]
    connection_kwargs: dict[str, Any]
    topic: str
    is_pattern: bool
    connect_timeout: float = 5.0
    client_name: str = "celery-chatops-events"
    decode: bool = False  # decode in the child: EVENTS frames instead of MESSAGES
    accept: frozenset[str] = frozenset({"application/json"})


@dataclass(frozen=True)
class ReaderStats:
    buffered_messages: int
    buffered_bytes: int
    read_messages: int
    backpressure_waits: int
    dropped_messages: int  # held by a child that died: lost


def closed_by_server(text: str) -> bool:
    """Did this error end the subscription from the server's side (events were lost)?"""
    return SERVER_CLOSED in text or "unexpectedly closed" in text.lower()


class ReaderProcess:
    """The parent's handle on a reader child: start it, take its frames, stop it.

    ``frames()`` is meant for one thread of the parent (the consumer's reader thread); the
    pipe gives back-pressure to the child, which keeps reading the socket into its own bounded
    buffer meanwhile.
    """

    def __init__(
        self,
        subscription: Subscription,
        *,
        buffer_bytes: int = 128 * 1024 * 1024,
        batch_max: int = 1000,
        batch_bytes: int = 1024 * 1024,
        start_method: str = "spawn",
    ) -> None:
        self.subscription = subscription
        self.buffer_bytes = max(1, int(buffer_bytes))
        self.batch_max = max(1, int(batch_max))
        self.batch_bytes = max(1, int(batch_bytes))
        self._context: Any = multiprocessing.get_context(start_method)
        self._counters: Any = self._context.RawArray("q", _COUNTERS)
        self._stop = self._context.Event()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._dropped = 0

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("reader process already started")
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_child,
            args=(
                self.subscription,
                send,
                self._counters,
                self._stop,
                self.buffer_bytes,
                self.batch_max,
                self.batch_bytes,
            ),
            name="chatops-events-reader",
            daemon=True,  # never outlives the bot
        )
        process.start()
        send.close()  # the child's end: once it exits, recv() in the parent sees EOF
        self._process = process
        self._conn = receive

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode

    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def frames(self, stopping: threading.Event, poll: float = _READ_TIMEOUT) -> Iterator[Any]:
        """``(kind, payload)`` frames in the child's order until it exits or ``stopping``.

        If the child dies, what it still held is counted in ``stats().dropped_messages``.
        """
        conn = self._conn
        if conn is None:
            raise RuntimeError("reader process not started")
        while not stopping.is_set():
            try:
                if not conn.poll(poll):
                    if not self.alive():
                        break
                    continue
                frame = conn.recv()
            except (EOFError, OSError):
                break
            yield frame
        if stopping.is_set() or self._stop.is_set():
            return
        process = self._process
        if process is not None:
            # The pipe closes a moment before the dying child can be reaped: wait for it.
            process.join(5.0)
        if not self.alive():
            self._dropped += int(self._counters[_BUFFERED_MESSAGES])
            self._counters[_BUFFERED_MESSAGES] = 0
            self._counters[_BUFFERED_BYTES] = 0

    def stats(self) -> ReaderStats:
        c = self._counters
        return ReaderStats(
            buffered_messages=int(c[_BUFFERED_MESSAGES]),
            buffered_bytes=int(c[_BUFFERED_BYTES]),
            read_messages=int(c[_READ_MESSAGES]),
            backpressure_waits=int(c[_BACKPRESSURE_WAITS]),
            dropped_messages=self._dropped,
        )

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        process = self._process
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(timeout)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- the child ----------------------------------------------------------------------------------
class _Child:
    def __init__(
        self,
        subscription: Subscription,
        conn: multiprocessing.connection.Connection,
        counters: Any,
        stop: Any,
        buffer_bytes: int,
        batch_max: int,
        batch_bytes: int,
    ) -> None:
        self.subscription = subscription
        self.conn = conn
        self.counters = counters
        self.stop = stop
        self.buffer_limit = buffer_bytes
        self.batch_max = batch_max
        self.batch_bytes = batch_bytes
        self.parent = os.getppid()
        # Socket → sender hand-off. deque append/popleft are atomic; each counter below has
        # one writer, so in - out is a lock-free backlog.
        self.buffer: deque[Any] = deque()
        self.bytes_in = 0  # socket thread only
        self.bytes_out = 0  # sender thread only
        self.msgs_in = 0
        self.msgs_out = 0
        self.wake = threading.Event()
        self.sender_idle = False
        self.done = threading.Event()

    def stopping(self) -> bool:
        # A parent that died without stopping us (SIGKILL) must not leave us reading forever.
        return self.stop.is_set() or os.getppid() != self.parent

    # socket side ---------------------------------------------------------------------
    def run(self) -> None:
        sender = threading.Thread(target=self.send_loop, name="reader-send", daemon=True)
        sender.start()
        try:
            self.read_loop()
        finally:
            self.done.set()
            self.wake.set()
            sender.join(5.0)

    def control(self, frame: tuple[str, Any]) -> None:
        self.buffer.append(frame)
        self.wake.set()

    def read_loop(self) -> None:
        attempt = 0
        while not self.stopping():
            conn: redis.Connection | None = None
            subscribed = False
            try:
                conn = self.connect()
                subscribed = True
                attempt = 0
                self.control((CONNECTED, None))
                self.read(conn)
                if not self.stopping():
                    self.control((DISCONNECTED, ("subscription ended", False)))
            except (redis.exceptions.RedisError, OSError, ValueError) as exc:
                text = f"{type(exc).__name__}: {exc}"
                self.control((DISCONNECTED, (text, subscribed and closed_by_server(text))))
            finally:
                if conn is not None:
                    conn.disconnect()
            if self.stopping():
                break
            step = attempt - 1 if subscribed else attempt
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** max(0, step)))
            attempt += 1
            end = time.monotonic() + delay
            while time.monotonic() < end and not self.stopping():
                time.sleep(0.05)

    def connect(self) -> redis.Connection:
        sub = self.subscription
        conn = sub.connection_class(
            **sub.connection_kwargs,
            protocol=2,  # RESP2: pub/sub messages are plain lists, no push-handler detour
            socket_connect_timeout=sub.connect_timeout,
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=0,
            client_name=sub.client_name,
        )
        conn.connect()
        conn.send_command("PSUBSCRIBE" if sub.is_pattern else "SUBSCRIBE", sub.topic)
        reply = conn.read_response(timeout=sub.connect_timeout)
        if not (isinstance(reply, list) and reply and reply[0] in (b"psubscribe", b"subscribe")):
            conn.disconnect()
            raise redis.exceptions.ConnectionError(f"unexpected reply to SUBSCRIBE: {reply!r}")
        return conn

    def read(self, conn: redis.Connection) -> None:
        buffer = self.buffer
        counters = self.counters
        wake = self.wake
        limit = self.buffer_limit
        monotonic = time.monotonic
        last_reply = monotonic()
        pinged = False
        while not self.stopping():
            if self.bytes_in - self.bytes_out > limit:
                # Back-pressure: the socket stops being read and Redis buffers instead; past
                # its limit it cuts us off, which the parent counts as loss.
                counters[_BACKPRESSURE_WAITS] += 1
                wake.set()
                time.sleep(0.001)
                continue
            try:
                reply = conn.read_response(timeout=_READ_TIMEOUT, disconnect_on_error=False)
            except redis.exceptions.TimeoutError:
                pinged = after_quiet_read(conn, last_reply, pinged)
                continue
            last_reply = monotonic()
            pinged = False
            # pmessage: [kind, pattern, channel, data]; message: [kind, channel, data].
            if type(reply) is list and len(reply) >= 3 and reply[0] in (b"pmessage", b"message"):
                data = reply[-1]
                if not data:
                    continue
                buffer.append(data)
                self.bytes_in += len(data)
                self.msgs_in += 1
                counters[_READ_MESSAGES] = self.msgs_in
                counters[_BUFFERED_MESSAGES] = self.msgs_in - self.msgs_out
                counters[_BUFFERED_BYTES] = self.bytes_in - self.bytes_out
                if self.sender_idle:
                    wake.set()

    # pipe side -----------------------------------------------------------------------
    def send_loop(self) -> None:
        buffer = self.buffer
        send = self.conn.send
        counters = self.counters
        drops: dict[str, tuple[int, str]] = {}

        def on_drop(reason: str, detail: str) -> None:
            count, first = drops.get(reason, (0, detail))
            drops[reason] = (count + 1, first)

        decoder = (
            MessageDecoder(self.subscription.accept, on_drop)
            if self.subscription.decode
            else None
        )
        try:
            while True:
                if not buffer:
                    if self.done.is_set():
                        return
                    self.sender_idle = True
                    if not buffer:  # re-check after publishing the flag: no lost wake-up
                        self.wake.wait(0.25)
                    self.wake.clear()
                    self.sender_idle = False
                    continue
                batch: list[bytes] = []
                size = 0
                while buffer and len(batch) < self.batch_max and size < self.batch_bytes:
                    item = buffer[0]
                    if type(item) is tuple:  # a control frame: after the messages before it
                        if batch:
                            break
                        buffer.popleft()
                        send(item)
                        continue
                    buffer.popleft()
                    batch.append(item)
                    size += len(item)
                if batch and decoder is not None:
                    events: list[dict[str, Any]] = []
                    decoder.decode_into(batch, events, time.time())
                    send((EVENTS, DecodedBatch(events, len(batch), size, drops)))
                    drops = {}
                elif batch:
                    send((MESSAGES, batch))  # blocks while the parent's pipe end is full
                if batch:
                    self.bytes_out += size
                    self.msgs_out += len(batch)
                    counters[_BUFFERED_MESSAGES] = self.msgs_in - self.msgs_out
                    counters[_BUFFERED_BYTES] = self.bytes_in - self.bytes_out
        except (OSError, EOFError):
            self.stop.set()  # the parent is gone: nobody to hand events to


def run_child(
    subscription: Subscription,
    conn: multiprocessing.connection.Connection,
    counters: Any,
    stop: Any,
    buffer_bytes: int,
    batch_max: int,
    batch_bytes: int,
) -> None:
    """The child's entry point (module level, so ``spawn`` can import it)."""
    with contextlib.suppress(KeyboardInterrupt):
        _Child(subscription, conn, counters, stop, buffer_bytes, batch_max, batch_bytes).run()
