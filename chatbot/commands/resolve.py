"""What a person typed, resolved against what the bot has seen: task ids, workers, task names.

Shared by the read-only and the control commands; a unique prefix or part is accepted, an
ambiguous or unknown one is a :class:`UsageError` that names the candidates.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from chatbot.commands.context import CommandContext
from chatbot.commands.parser import MIN_ID_PREFIX, UsageError

__all__ = ["NameLookup", "resolve_task_id", "resolve_task_name", "resolve_worker"]


def resolve_task_id(ctx: CommandContext, raw: str) -> str:
    """A full id, or a unique prefix of at least MIN_ID_PREFIX characters."""
    if ctx.store.get_task(raw) is not None:
        return raw
    if len(raw) < MIN_ID_PREFIX:
        raise UsageError(
            f"no task with id {raw!r}; give the full id or at least {MIN_ID_PREFIX} characters"
        )
    for candidate in dict.fromkeys((raw, raw.lower())):
        found = ctx.store.find_task_ids(candidate, limit=3)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            shown = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
            raise UsageError(f"{raw!r} matches several tasks ({shown}); give more characters")
    raise UsageError(
        f"unknown task {raw!r}: not among the {len(ctx.store)} tasks retained"
        " (never seen, or evicted)"
    )


def resolve_worker(ctx: CommandContext, raw: str) -> str:
    """A hostname, or a unique part of one (``w1`` for ``celery@w1``)."""
    hostnames = sorted(w.hostname for w in ctx.store.workers())
    if raw in hostnames:
        return raw
    matches = [h for h in hostnames if raw.lower() in h.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(matches[:4]) + (", ..." if len(matches) > 4 else "")
        raise UsageError(f"worker {raw!r} is ambiguous: {shown}")
    known = ", ".join(hostnames[:4]) + (", ..." if len(hostnames) > 4 else "")
    raise UsageError(f"unknown worker {raw!r} (known: {known or 'none yet'})")


@dataclass(frozen=True)
class NameLookup:
    name: str
    known: bool  # seen recently; if not, `suggestions` may help
    suggestions: tuple[str, ...] = ()


def resolve_task_name(ctx: CommandContext, raw: str) -> NameLookup:
    """An exact task name, or a unique last part of one (``send_email``)."""
    names = ctx.store.task_names()
    if raw in names:
        return NameLookup(raw, True)
    by_suffix = [n for n in names if n.endswith("." + raw) or n.rsplit(".", 1)[-1] == raw]
    if len(by_suffix) == 1:
        return NameLookup(by_suffix[0], True)
    if len(by_suffix) > 1:
        raise UsageError(f"task name {raw!r} is ambiguous: {', '.join(by_suffix[:4])}")
    # Suggest, never guess: a name that merely contains the word may be another task.
    containing = [n for n in names if raw.lower() in n.lower()]
    last_parts = {n.rsplit(".", 1)[-1]: n for n in names}
    close = [last_parts[p] for p in difflib.get_close_matches(raw, list(last_parts), n=3)]
    suggestions = list(dict.fromkeys([*containing, *close]))[:3]
    return NameLookup(raw, False, tuple(suggestions))
