"""Plain-data form of the records: one spelling of a task, a worker and the stream's health on
disk (:mod:`chatbot.store.snapshot`) and in Redis (:mod:`chatbot.store.redis`).

Values equal to the dataclass default are left out, so a typical record is a few hundred bytes;
unknown keys are ignored when reading, so a snapshot or a Redis written by a newer version still
loads. A value of the wrong type (a string where a time belongs, NaN, a list for a name) makes
the whole record unreadable: the loaders skip and count it, so a poisoned record can neither
stop a restart nor reach the state machine, whose ordering assumes numbers.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from chatbot.model import StreamHealth, Task, Worker

__all__ = [
    "TASK_FIELDS",
    "WORKER_FIELDS",
    "decode",
    "dumps",
    "encode",
    "health_from_dict",
    "health_to_dict",
    "task_from_dict",
    "task_to_dict",
    "worker_from_dict",
    "worker_to_dict",
]

TASK_FIELDS: tuple[str, ...] = tuple(Task.__slots__)
_TASK_FIELD_SET = frozenset(TASK_FIELDS)
_TASK_DEFAULTS: dict[str, Any] = {name: getattr(Task(uuid=""), name) for name in TASK_FIELDS}
WORKER_FIELDS: tuple[str, ...] = tuple(Worker.__slots__)
_WORKER_FIELD_SET = frozenset(WORKER_FIELDS)
_WORKER_DEFAULTS: dict[str, Any] = {
    name: getattr(Worker(hostname=""), name) for name in WORKER_FIELDS
}
_HEALTH_FIELDS = frozenset(f.name for f in fields(StreamHealth))


def task_to_dict(task: Task) -> dict[str, Any]:
    """The task's fields that differ from the defaults (``uuid`` always)."""
    out: dict[str, Any] = {"uuid": task.uuid}
    defaults = _TASK_DEFAULTS
    for name in TASK_FIELDS:
        value = getattr(task, name)
        if value is not None and value != defaults[name]:
            out[name] = value
    return out


def _field_kinds(cls: type) -> dict[str, tuple[str, bool]]:
    # From the dataclass's own annotations (strings here: ``from __future__ import annotations``
    # in chatbot.model), so a field added there is checked without a second list to keep.
    kinds: dict[str, tuple[str, bool]] = {}
    for f in fields(cls):
        spelled = str(f.type).replace(" ", "")
        optional = spelled.endswith("|None")
        kinds[f.name] = (spelled.removesuffix("|None"), optional)
    return kinds


_TASK_KINDS = _field_kinds(Task)
_WORKER_KINDS = _field_kinds(Worker)


def _check_types(values: Mapping[str, Any], kinds: Mapping[str, tuple[str, bool]]) -> None:
    """ValueError unless every value has its field's type (numbers finite, bools not ints)."""
    for name, value in values.items():
        kind, optional = kinds.get(name, ("", True))
        if value is None:
            if not optional:
                raise ValueError(f"{name} may not be null")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} is not a number")
            if not math.isfinite(value):
                raise ValueError(f"{name} is not finite")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} is not an integer")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{name} is not a boolean")
        elif kind == "str" and not isinstance(value, str):
            raise ValueError(f"{name} is not a string")


def task_from_dict(data: Mapping[str, Any]) -> Task:
    """Raises ``TypeError``/``ValueError``/``KeyError`` on a record that is not a task."""
    uuid = data["uuid"]
    if not isinstance(uuid, str) or not uuid:
        raise ValueError("task record without a uuid")
    values = {k: v for k, v in data.items() if k in _TASK_FIELD_SET}
    _check_types(values, _TASK_KINDS)
    return Task(**values)


def worker_to_dict(worker: Worker) -> dict[str, Any]:
    out: dict[str, Any] = {"hostname": worker.hostname}
    defaults = _WORKER_DEFAULTS
    for name in WORKER_FIELDS:
        value = getattr(worker, name)
        if value is not None and value != defaults[name]:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def worker_from_dict(data: Mapping[str, Any]) -> Worker:
    hostname = data["hostname"]
    if not isinstance(hostname, str) or not hostname:
        raise ValueError("worker record without a hostname")
    values = {k: v for k, v in data.items() if k in _WORKER_FIELD_SET}
    if values.get("loadavg") is not None:
        values["loadavg"] = tuple(float(x) for x in values["loadavg"])
    if values.get("queues") is not None:
        values["queues"] = tuple(str(q) for q in values["queues"])
    _check_types(values, _WORKER_KINDS)
    if values.get("loadavg") is not None and not all(math.isfinite(x) for x in values["loadavg"]):
        raise ValueError("loadavg is not finite")
    return Worker(**values)


def health_to_dict(health: StreamHealth) -> dict[str, Any]:
    return {f.name: getattr(health, f.name) for f in fields(StreamHealth)}


def health_from_dict(data: Mapping[str, Any]) -> StreamHealth:
    values = {k: v for k, v in data.items() if k in _HEALTH_FIELDS}
    health = StreamHealth(**values)
    health.events_by_type = dict(health.events_by_type or {})
    return health


# Compact separators: the snapshot and Redis values are read by machines only.
_json_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# Optional: orjson encodes and decodes records about three times faster than json; the output
# is the same JSON either way, so a file or a Redis written with one reads with the other.
_orjson: Any = (
    importlib.import_module("orjson") if importlib.util.find_spec("orjson") is not None else None
)


def dumps(value: Any) -> str:
    """Compact JSON text (stdlib json: any integer, any nesting)."""
    return _json_encode(value)


def encode(value: Any) -> bytes:
    if _orjson is not None:
        try:
            return bytes(_orjson.dumps(value))
        except TypeError:
            pass  # e.g. an integer beyond 64 bits from a hostile event: json takes any
    return _json_encode(value).encode("utf-8")


def decode(raw: str | bytes) -> Any:
    if _orjson is not None:
        return _orjson.loads(raw)
    return json.loads(raw)
