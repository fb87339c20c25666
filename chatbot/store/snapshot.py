"""The snapshot file that carries ``memory://`` across restarts.

Records are spelled by :mod:`chatbot.store.codec`, as in Redis.

:class:`SnapshotWriter` (``CHATOPS_SNAPSHOT_PATH``) avoids two failure modes of a persistence
that pickles its whole state on the I/O loop (as Flower's ``--persistent`` does): events and
HTTP blocked for seconds while it writes, and a corrupt file that fails every start. Here:

- records are copied under the store's lock (one brief acquisition per kind) and serialised and
  written outside it, on a background thread;
- the file is replaced atomically: a temporary file in the same directory, fsync, ``os.replace``,
  then fsync of the directory, so a crash leaves the old snapshot or the new one, never half;
- a snapshot that cannot be read or parsed is moved aside as ``<path>.corrupt-<timestamp>`` with a
  warning and the bot starts empty.

Only tasks and workers are kept. Pending approvals, alerts and silences of the memory backend do
not survive a restart (``redis://`` keeps them); per-name failure windows and runtime samples are
rebuilt from the retained tasks by :meth:`MemoryStore.load`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from chatbot.model import Task, Worker
from chatbot.store.codec import (
    decode,
    encode,
    task_from_dict,
    task_to_dict,
    worker_from_dict,
    worker_to_dict,
)
from chatbot.store.memory import MemoryStore

R = TypeVar("R")

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "celery-chatops/snapshot"
SNAPSHOT_VERSION = 1

class SnapshotError(ValueError):
    """The snapshot file exists but is not a snapshot this version can read."""


def read_snapshot(path: str | os.PathLike[str]) -> tuple[list[Task], list[Worker]] | None:
    """Tasks and workers of the snapshot at ``path``; None when there is no file.

    Raises :class:`SnapshotError` when the file cannot be read or parsed.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotError(f"cannot read {file}: {exc.strerror or exc}") from exc
    try:
        document = decode(raw)
        if not isinstance(document, dict) or document.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"{file} is not a celery-chatops snapshot")
        if document.get("version") != SNAPSHOT_VERSION:
            raise SnapshotError(f"{file}: unsupported snapshot version {document.get('version')!r}")
        tasks = _readable(document["tasks"], task_from_dict, file)
        workers = _readable(document["workers"], worker_from_dict, file)
    except SnapshotError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SnapshotError(f"{file} is corrupt: {type(exc).__name__}: {exc}") from exc
    return tasks, workers


def _readable(items: Any, decode_one: Callable[[Any], R], file: Path) -> list[R]:
    """The records that decode; one that does not is skipped and counted in the log, never a
    reason to lose the rest of the snapshot (or to load a record of the wrong types)."""
    found: list[R] = []
    skipped = 0
    for item in items:
        try:
            found.append(decode_one(item))
        except (ValueError, TypeError, KeyError, AttributeError):
            skipped += 1
    if skipped:
        log.warning("Snapshot %s: skipped %d unreadable records", file, skipped)
    return found


def write_snapshot(
    path: str | os.PathLike[str],
    tasks: list[Task],
    workers: list[Worker],
    written_at: float | None = None,
) -> int:
    """Write atomically; returns the size in bytes. Raises ``OSError`` on failure."""
    file = Path(path)
    document = {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "written_at": time.time() if written_at is None else written_at,
        "tasks": [task_to_dict(task) for task in tasks],
        "workers": [worker_to_dict(worker) for worker in workers],
    }
    data = encode(document)
    directory = file.parent
    directory.mkdir(parents=True, exist_ok=True)
    # Same directory as the target: os.replace is atomic only within one filesystem.
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    return len(data)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move_aside(path: str | os.PathLike[str], now: float | None = None) -> Path | None:
    """Rename ``path`` to ``<path>.corrupt-<UTC timestamp>``; None if even that fails."""
    file = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = file.with_name(f"{file.name}.corrupt-{stamp}")
    counter = 1
    while target.exists():
        target = file.with_name(f"{file.name}.corrupt-{stamp}-{counter}")
        counter += 1
    try:
        os.replace(file, target)
    except OSError:
        return None
    return target


class SnapshotWriter:
    """Keeps ``path`` up to date with ``store``'s tasks and workers.

    Call :meth:`load` once before events are applied, then :meth:`start`; :meth:`stop` writes a
    last snapshot. A write is skipped when nothing changed since the previous one.
    """

    def __init__(
        self,
        store: MemoryStore,
        path: str | os.PathLike[str],
        interval: float = 60.0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.store = store
        self.path = Path(path)
        self.interval = float(interval)
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()  # one write at a time (periodic vs. stop)
        self._written_signature: tuple[Any, ...] | None = None
        self.last_write_seconds: float | None = None
        self.last_write_bytes: int | None = None
        self.last_error: str | None = None
        self.moved_aside: Path | None = None

    def load(self) -> int:
        """Warm the (empty) store from the snapshot; returns how many tasks were loaded.

        A missing file loads nothing; an unreadable or corrupt one is moved aside, logged,
        and loads nothing. Never raises for a bad file.
        """
        try:
            loaded = read_snapshot(self.path)
        except SnapshotError as exc:
            self.moved_aside = move_aside(self.path, self._clock())
            where = f"moved to {self.moved_aside}" if self.moved_aside else "could not be moved"
            log.warning("Snapshot %s unusable (%s); %s; starting empty", self.path, exc, where)
            return 0
        if loaded is None:
            return 0
        tasks, workers = loaded
        self.store.load(tasks, workers)
        # The file already holds this content: no need to rewrite it until something changes.
        self._written_signature = self._signature()
        log.info("Loaded %d tasks and %d workers from %s", len(tasks), len(workers), self.path)
        return len(tasks)

    def _signature(self) -> tuple[Any, ...]:
        health = self.store.health()
        return (len(self.store), health.events_total, health.malformed, health.tasks_evicted)

    def write(self, force: bool = False) -> bool:
        """Write a snapshot now (unless unchanged); True when a file was written."""
        with self._write_lock:
            signature = self._signature()
            if not force and signature == self._written_signature:
                return False
            started = time.monotonic()
            # Each call copies records under the store's lock and returns; no I/O under it.
            tasks = self.store.tasks(limit=max(len(self.store), self.store.max_tasks))
            workers = self.store.workers()
            try:
                size = write_snapshot(self.path, tasks, workers, written_at=self._clock())
            except OSError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("Could not write snapshot %s: %s", self.path, self.last_error)
                return False
            self._written_signature = signature
            self.last_error = None
            self.last_write_seconds = time.monotonic() - started
            self.last_write_bytes = size
        if self.last_write_seconds > self.interval * 0.1:
            log.warning(
                "Writing the snapshot took %.2fs (%d tasks); consider a longer interval",
                self.last_write_seconds,
                len(tasks),
            )
        return True

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="chatops-snapshot", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.write()
            except Exception:  # pragma: no cover - keep snapshotting whatever went wrong
                log.exception("Snapshot write failed")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the periodic writer and write a final snapshot."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.write()
