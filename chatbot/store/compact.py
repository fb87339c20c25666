"""The in-process store's record layout: what one retained task costs in memory.

Part of :mod:`chatbot.store.memory` (the state machine writes these records, its queries read
them); apart so that the layout can be read on its own. Why it looks like this:

- Records are smaller than the :class:`Task` they are handed out as: the ten fields most
  tasks never set (queue, routing key, sent, retried, retries, parent, eta, expires,
  terminated, signum) live in a side object that all records share until one is set
  (:class:`Rare`), the traceback is one slot holding text or its compressed bytes, and a
  child's parent and root ids point at id strings already kept. (``python -m
  bench.store_perf``: 1,257 -> 1,155 bytes per retained task at 100,000, with the task
  table's compaction in :mod:`chatbot.store.memory`.)
- Tracebacks are compressed with a dictionary shared by the whole store
  (:class:`TracebackPacker`, see TRACEBACK_DICTIONARY below).
- Indexes are append-only queues of ids (:class:`Ordered`), not dicts: why, in the notes of
  :mod:`chatbot.store.memory`.
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Any

from chatbot.model import PENDING, exception_type_of

# Tracebacks are kept compressed with a preset dictionary: the first TRACEBACK_DICTIONARY
# bytes of tracebacks this store saw. A fleet's tracebacks share most of their text (the
# same Celery frames, the same code paths), so a ~900-byte traceback keeps ~150 bytes
# (``python -m bench.store_perf``: ~300 of ~1,500 bytes per retained task were tracebacks),
# for ~25 us of compression per failure and ~7 us to read one back. Raw deflate: no header.
# The compressor is primed with the dictionary once and copied for each traceback (setting a
# 4 KB dictionary is most of the cost of a fresh one); an 8 KB window holds the dictionary and
# a clipped traceback, and its smaller state copies fast (~8 us a traceback where a fresh
# compressor took ~12, for ~2 % larger output). Read back with a 32 KB window, which reads any.
TRACEBACK_DICTIONARY = 4096
_DEFLATE = (1, zlib.DEFLATED, -13, 6, zlib.Z_DEFAULT_STRATEGY)


class Rare:
    """The fields of a task that most tasks never set, kept apart from the record so that a
    record does not carry ten empty slots (80 bytes of each of 100,000 records).

    Records share :data:`NO_RARE` (every field at its default, never written) until one of
    these fields is set; :meth:`chatbot.store.memory.MemoryStore._rare` then gives the record
    its own.
    """

    __slots__ = (
        "eta",
        "expires",
        "parent_id",
        "queue",
        "retried",
        "retries",
        "routing_key",
        "sent",
        "signum",
        "terminated",
    )  # fmt: skip

    def __init__(self) -> None:
        self.queue: str | None = None
        self.routing_key: str | None = None
        self.sent: float | None = None
        self.retried: float | None = None
        self.retries = 0
        self.parent_id: str | None = None
        self.eta: str | None = None
        self.expires: str | None = None
        self.terminated = False
        self.signum: str | None = None


NO_RARE = Rare()
RARE_FIELDS: tuple[str, ...] = Rare.__slots__
RARE_DEFAULTS: dict[str, Any] = {name: getattr(NO_RARE, name) for name in RARE_FIELDS}


class Record:
    """A retained task: the fields most tasks set, the rest in ``rare`` (see :class:`Rare`).

    16 slots, i.e. 160 bytes with the collector's header, where a :class:`Task` takes 240.
    The traceback is held in ``tb`` as text, or compressed (bytes, see TRACEBACK_DICTIONARY);
    :attr:`traceback` and :attr:`packed` read it back as one or the other. Handed out as a
    :class:`Task` by :meth:`chatbot.store.queries.MemoryQueries._snap`, with the traceback as
    text.
    """

    __slots__ = (
        "args",
        "exception",
        "finished",
        "kwargs",
        "name",
        "rare",
        "received",
        "result",
        "root_id",
        "runtime",
        "started",
        "state",
        "state_ts",
        "tb",
        "uuid",
        "worker",
    )  # fmt: skip

    def __init__(self, uuid: str, state_ts: float) -> None:
        self.uuid = uuid
        self.name: str | None = None
        self.state = PENDING
        self.state_ts = state_ts  # time of the event that set ``state``
        self.worker: str | None = None
        self.args: str | None = None
        self.kwargs: str | None = None
        self.result: str | None = None
        self.received: float | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.runtime: float | None = None
        self.exception: str | None = None
        self.tb: str | bytes | None = None
        self.root_id: str | None = None
        self.rare = NO_RARE

    @property
    def traceback(self) -> str | None:
        """The traceback when it is held as text (None when compressed)."""
        tb = self.tb
        return tb if type(tb) is str else None

    @property
    def packed(self) -> bytes | None:
        """The compressed traceback (None when it is held as text)."""
        tb = self.tb
        return tb if type(tb) is bytes else None

    @property
    def exception_type(self) -> str | None:
        return exception_type_of(self.exception)


# The fields a record holds itself, as a Task spells them (the traceback is handled apart).
RECORD_FIELDS: tuple[str, ...] = tuple(
    name for name in Record.__slots__ if name not in ("uuid", "tb", "rare")
)


class Ordered:
    """The ids of one group (a state, a task name, a worker) in the order they joined it.

    An append-only queue: an id that leaves the group stays in it until it reaches the head
    or the queue is compacted, so every reader checks each id against its record (the
    record's state, name or worker is the truth). ``live`` counts the members. An id that
    left and joined again is in the queue twice; readers keep its last place. Once the queue
    holds more than ``2 * live + 32`` ids it is compacted (amortised O(1) a join; the test is
    written out where a group is joined, once an event, as a call would cost more than it).
    """

    __slots__ = ("ids", "live")

    def __init__(self) -> None:
        self.ids: deque[str] = deque()
        self.live = 0


class TracebackPacker:
    """The store's traceback compressor: the first tracebacks become its dictionary, the
    later ones are kept compressed with it (see TRACEBACK_DICTIONARY)."""

    __slots__ = ("_primed", "_seed", "_seed_size", "dictionary")

    def __init__(self) -> None:
        self.dictionary: bytes | None = None
        self._primed: Any = None  # zlib's Compress, primed with the dictionary
        self._seed: list[str] = []
        self._seed_size = 0

    def keep(self, task: Record, text: str | None) -> None:
        """The record's traceback is ``text``, compressed once the dictionary exists."""
        dictionary = self.dictionary
        if text is None:
            task.tb = None
            return
        if dictionary is None:
            # The first tracebacks are kept as they are, and become the dictionary.
            task.tb = text
            self._seed.append(text)
            self._seed_size += len(text)
            if self._seed_size >= TRACEBACK_DICTIONARY:
                seed = "".join(self._seed).encode("utf-8", "surrogatepass")
                self.dictionary = seed[-TRACEBACK_DICTIONARY:]
                self._seed = []
            return
        primed = self._primed
        if primed is None:
            primed = self._primed = zlib.compressobj(*_DEFLATE, dictionary)
        packer = primed.copy()
        packed = packer.compress(text.encode("utf-8", "surrogatepass")) + packer.flush()
        task.tb = packed if len(packed) < len(text) else text

    def unpack(self, packed: bytes) -> str:
        """A compressed traceback as text."""
        unpacker = zlib.decompressobj(-15, self.dictionary or b"")
        text: str = unpacker.decompress(packed).decode("utf-8", "surrogatepass")
        return text
