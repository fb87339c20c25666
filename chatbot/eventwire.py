"""Celery events as they travel over Redis pub/sub: topics, kombu's envelope, localization.

Kombu's Redis transport publishes every event message on a pub/sub channel
``{global_keyprefix}{fanout_prefix}{exchange}/{routing_key}`` (``fanout_prefix`` is
``/{db}.`` by default), as a JSON *envelope* whose ``body`` is the serialized event,
base64-encoded when ``properties.body_encoding`` says so. A worker that buffers task events
publishes a JSON *list* of events under the routing key ``task.multi``.

This module decodes those messages into the dicts Celery's ``EventReceiver`` would hand to a
handler (timestamps localized with ``utcoffset``, ``local_received`` and ``clock`` set), so the
consumer can read the channel directly with redis-py instead of through kombu's generic
virtual-transport machinery. It also encodes them (tests and ``bench/`` publish real wire
messages with it).
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import uuid as _uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import orjson
from celery.utils.time import utcoffset
from kombu.serialization import loads as kombu_loads
from kombu.serialization import prepare_accept_content

EVENT_EXCHANGE = "celeryev"
JSON = "application/json"

# Serializers that cannot run code while decoding. Pickle is never accepted, even if the
# fleet's event_serializer is pickle: a message on a shared broker must not execute anything.
SAFE_SERIALIZERS = frozenset({"json", "msgpack", "yaml"})

# Celery's receiver pretends task-sent was stamped one tick before the monitor's clock,
# because clients never synchronize their Lamport clock (celery.events.receiver).
CLIENT_CLOCK_SKEW = -1


# A worker's .multi message holds up to a few dozen events of a few KB; a message past this is
# refused before it is parsed (a parser given 100 MB would hold the applier for seconds).
MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024

# Why a message was refused: a small fixed set, so it can be a metrics label.
WIRE_REASONS: Final = frozenset(
    {"too-large", "not-json", "envelope", "base64", "encoding", "content-type", "body"}
)


class MalformedMessage(ValueError):
    """A broker message that does not decode into Celery events; ``reason`` says which way."""

    def __init__(self, detail: str, reason: str = "body") -> None:
        super().__init__(detail)
        self.reason = reason


def fanout_prefix(db: int, option: bool | str | None = True) -> str:
    """Kombu's ``keyprefix_fanout`` for ``db`` under the ``fanout_prefix`` transport option."""
    if option is None or option is True:
        return f"/{db}."
    if option is False or option == "":
        return ""
    return str(option).format(db=db)


def publish_topic(
    routing_key: str,
    *,
    db: int = 0,
    global_keyprefix: str = "",
    fanout_prefix_option: bool | str | None = True,
    fanout_patterns: bool = True,
    exchange: str = EVENT_EXCHANGE,
) -> str:
    """The channel kombu publishes an event with ``routing_key`` on (``_get_publish_topic``)."""
    base = global_keyprefix + fanout_prefix(db, fanout_prefix_option) + exchange
    if routing_key and fanout_patterns:
        return f"{base}/{routing_key}"
    return base


def _glob_escape(text: str) -> str:
    # PSUBSCRIBE patterns are globs: a key prefix such as "app[1]:" must match literally.
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def subscribe_topic(
    *,
    db: int = 0,
    global_keyprefix: str = "",
    fanout_prefix_option: bool | str | None = True,
    fanout_patterns: bool = True,
    exchange: str = EVENT_EXCHANGE,
) -> tuple[str, bool]:
    """``(topic, is_pattern)``: what an event receiver (routing key ``#``) listens on.

    Kombu binds the receiver's queue with routing key ``#``, turns it into ``*`` and
    PSUBSCRIBEs; without ``fanout_patterns`` every event goes to the bare exchange channel.
    """
    base = global_keyprefix + fanout_prefix(db, fanout_prefix_option) + exchange
    if fanout_patterns:
        return _glob_escape(base) + "/*", True
    return base, False


def accept_content(serializers: Iterable[str]) -> frozenset[str]:
    """Content types to accept for the given serializer names, restricted to safe ones."""
    names = {name for name in serializers if name in SAFE_SERIALIZERS} | {"json"}
    return frozenset(prepare_accept_content(names))


_DEFAULT_ACCEPT = accept_content(["json"])


def _b64decode_validated(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _b64decode_strict(text: str) -> bytes:
    return binascii.a2b_base64(text, strict_mode=True)  # type: ignore[call-arg,unused-ignore]


# The same check in C (Python 3.11+) instead of b64decode's regular expression first: a third
# of the cost of decoding a one-event message.
_b64decode: Callable[[str], bytes] = (
    _b64decode_strict if sys.version_info >= (3, 11) else _b64decode_validated
)


def decode_body(data: bytes | str, accept: frozenset[str] = _DEFAULT_ACCEPT) -> Any:
    """The event payload of one kombu envelope: a dict, or a list of dicts for ``*.multi``.

    Raises :class:`MalformedMessage` for anything that is not a well-formed envelope of an
    accepted content type, and never anything else: a third-party decoder's error (a
    ``RecursionError`` from a deeply nested YAML body, say) is one too.

    JSON, the default and by far the commonest serializer, is parsed by orjson, envelope and
    body: it is several times faster than the standard library, refuses NaN and infinities,
    lone surrogates and invalid UTF-8 (which could not be written to a Redis store later), and
    stops at 1,024 levels of nesting instead of recursing until the interpreter gives up.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message of {len(data)} bytes", "too-large")
    try:
        envelope = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"envelope is not JSON: {str(exc)[:120]}", "not-json") from None
    if type(envelope) is not dict:
        raise MalformedMessage("envelope is not a JSON object", "envelope")
    body = envelope.get("body")
    content_type = envelope.get("content-type")
    properties = envelope.get("properties")
    body_encoding = properties.get("body_encoding") if type(properties) is dict else None
    if type(body) is not str:
        raise MalformedMessage("envelope has no body", "envelope")
    raw: bytes | str = body
    if body_encoding == "base64":
        try:
            raw = _b64decode(body)
        except (binascii.Error, ValueError):
            raise MalformedMessage("body is not valid base64", "base64") from None
    elif body_encoding is not None and body_encoding != "":
        raise MalformedMessage(f"unknown body encoding {str(body_encoding)[:40]!r}", "encoding")
    if content_type == JSON:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessage(f"body is not JSON: {str(exc)[:120]}", "body") from None
    if type(content_type) is not str or content_type not in accept:
        raise MalformedMessage(
            f"content type {str(content_type)[:60]!r} is not accepted", "content-type"
        )
    try:
        decoded = kombu_loads(raw, content_type, envelope.get("content-encoding"), accept=accept)
        # Through JSON and back: what YAML or msgpack built (dates, bytes, sets, surrogates,
        # any depth) becomes what a JSON body would have given, or is refused here.
        return orjson.loads(orjson.dumps(decoded, default=str))
    except Exception as exc:  # any decoder error of a third-party serializer
        # The error's type only: a parser's message may quote the body, which may hold a secret.
        detail = f"cannot decode {content_type}: {type(exc).__name__}"
        raise MalformedMessage(detail, "body") from None


class Localizer:
    """Does to each event what ``celery.events.receiver.EventReceiver.event_from_message`` does.

    It keeps its own Lamport clock (one reader thread owns it, so no lock), shifts
    ``timestamp`` by ``utcoffset`` into this host's frame and stamps ``local_received``.
    The shift in seconds is cached per UTC offset: a fleet has one or a few, and every event
    of a worker carries the same one.
    """

    __slots__ = ("_shifts", "clock", "here")

    _MAX_SHIFTS = 64

    def __init__(self) -> None:
        self.clock = 0
        self.here = float(utcoffset())
        self._shifts: dict[float, float] = {}

    def refresh_offset(self) -> None:
        """Re-read this host's UTC offset (called once per batch, not once per event)."""
        here = float(utcoffset())
        if here != self.here:
            self.here = here
            self._shifts.clear()

    def localize(self, event: dict[str, Any], now: float) -> None:
        get = event.get
        if get("type") == "task-sent":
            skewed = (self.clock or 1) + CLIENT_CLOCK_SKEW
            event["clock"] = skewed
            self.clock = max(self.clock, skewed) + 1
        else:
            clock = get("clock")
            if type(clock) is int:
                self.clock = max(self.clock, clock) + 1
            elif clock is None:
                self.clock += 1
                event["clock"] = self.clock
        offset = get("utcoffset")
        if offset is not None:
            timestamp = get("timestamp")
            # Celery would raise on a non-numeric value; EventChecker refuses one before this.
            if timestamp is not None and type(timestamp) in _NUMBER and type(offset) in _NUMBER:
                shift = self._shifts.get(offset)
                event["timestamp"] = timestamp - (
                    shift if shift is not None else self._new_shift(offset)
                )
        event["local_received"] = now

    def _new_shift(self, offset: float) -> float:
        shift = (offset - self.here) * 3600
        if len(self._shifts) >= self._MAX_SHIFTS:
            self._shifts.clear()
        self._shifts[offset] = shift
        return shift


_NUMBER: Final = frozenset({int, float})


def is_event(item: object) -> bool:
    """The minimal shape the receiver relies on: a mapping whose ``type`` is a string."""
    return isinstance(item, dict) and isinstance(item.get("type"), str)


def encode_message(
    body: Mapping[str, Any] | Sequence[Any],
    routing_key: str,
    *,
    hostname: str | None = None,
    exchange: str = EVENT_EXCHANGE,
    delivery_tag: str | None = None,
) -> bytes:
    """The bytes kombu's Redis transport PUBLISHes for one event (or a ``.multi`` list).

    Same key order, separators and base64 body as ``Channel._put_fanout`` produces for
    ``EventDispatcher`` with the JSON serializer, so what we consume in tests and benchmarks
    is what a worker sends.
    """
    data = dict(body) if isinstance(body, Mapping) else list(body)
    payload = json.dumps(data).encode("utf-8")
    if hostname is None:
        first = data[0] if isinstance(data, list) and data else data
        host = first.get("hostname") if isinstance(first, Mapping) else None
        hostname = host if isinstance(host, str) else ""
    envelope = {
        "body": base64.b64encode(payload).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": JSON,
        "headers": {"hostname": hostname},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag or str(_uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode("utf-8")
