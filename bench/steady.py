"""When a store under test has reached its steady state: every structure it bounds is full.

A store's cost per event changes each time one of its bounded structures fills, not only when
its task cap is reached, so a "steady" rate is only steady once all of them are full:

- celery's ``State`` keeps, beside its task LRU, a list of one entry per task event, bounded
  at ``max_tasks_in_memory * heap_multiplier`` (4x). Once it is full, every task event also
  drops its oldest entry with ``list.pop(0)``, which celery's own comment calls "an O(n)
  operation": a move of the whole 400,000-entry list at a cap of 100,000. With the reference
  fleet's ~3.2 events per task that list fills about 85,000 events *after* the task cap, so a
  run measuring 100,000 events from the cap measured mostly the cheaper regime before it
  (Flower's ``EventsState`` is a ``State`` and is the same).
- our ``MemoryStore`` keeps a ring of evicted ids against phantoms (``recent_ids``, by
  default an eighth of the cap), full after that many evictions; so does the Redis-backed
  store's writer, which is one.

Every bench that compares steady rates feeds each store, untimed, until :func:`settled`.
"""

from __future__ import annotations

from typing import Any


def settled(store: Any) -> bool:
    """True once ``store``'s task cap and every other bound it keeps are reached."""
    heap = getattr(store, "_taskheap", None)
    if heap is not None:  # celery.events.state.State and its subclasses
        cap = int(store.max_tasks_in_memory)
        return len(store.tasks) >= cap and len(heap) >= cap * int(store.heap_multiplier)
    ring = getattr(store, "_gone_order", None)
    if ring is not None:  # chatbot.store.memory.MemoryStore
        return len(store) >= store.max_tasks and len(ring) >= store._recent_ids
    writer = getattr(store, "_writer", None)
    if writer is not None:  # chatbot.store.redis's write-behind store: its MemoryStore
        return settled(writer.memory)
    return len(store) >= store.max_tasks
