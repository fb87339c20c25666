"""Transport-free `/celery` commands: parse, run, return a :class:`~chatbot.render.Message`.

Faces (Slack, console) build one :class:`Dispatcher` over :func:`build_registry` and a
:class:`CommandContext` per invocation; later issues add commands with ``registry.register``.
"""

from __future__ import annotations

from chatbot.commands.context import CommandContext
from chatbot.commands.parser import ArgSpec, Flag, ParsedArgs, Positional, UsageError
from chatbot.commands.readonly import register_readonly
from chatbot.commands.registry import CommandSpec, Dispatcher, Handler, Prepared, Registry


def build_registry() -> Registry:
    """A registry with the read-only commands; control, alerts and mute are added by others."""
    return register_readonly(Registry())


__all__ = [
    "ArgSpec",
    "CommandContext",
    "CommandSpec",
    "Dispatcher",
    "Flag",
    "Handler",
    "ParsedArgs",
    "Positional",
    "Prepared",
    "Registry",
    "UsageError",
    "build_registry",
]
