"""The command registry and the dispatcher every face calls.

A face (Slack, console) does::

    prepared = dispatcher.prepare(text)        # pure and fast: parse and validate only
    if prepared.reply is not None:              # a usage error or help: answer right away
        answer(prepared.reply)
    elif prepared.slow:                         # asks workers or the broker: ack first,
        ack(); later(dispatcher.execute(prepared, ctx))   # answer via response_url
    else:
        answer(dispatcher.execute(prepared, ctx))

or simply ``dispatcher.run(text, ctx)`` when it can wait. ``execute`` never raises: a usage
error becomes one line plus the usage, anything unexpected an "internal error, logged" line.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from chatbot.commands.context import CommandContext
from chatbot.commands.parser import ArgSpec, ParsedArgs, UsageError, parse_args, split_command_line
from chatbot.render import Message, Renderer
from chatbot.store.redis.connection import StoreUnavailable

logger = logging.getLogger(__name__)

Handler = Callable[[ParsedArgs, CommandContext], Message]

ROOT_USAGE = "COMMAND [ARGS] [--FLAGS] [--share]"


@dataclass(frozen=True)
class CommandSpec:
    """One subcommand. ``help`` and the usage lines are generated from these fields."""

    name: str
    summary: str
    usage: str  # after "/celery ": e.g. "failed [NAME] [--since 15m] [--limit N]"
    handler: Handler
    args: ArgSpec = field(default_factory=ArgSpec)
    examples: tuple[str, ...] = ()
    # Must ask workers or the broker (seconds, maybe a timeout): ack first, answer later.
    slow: bool = False
    # Changes the fleet: subject to operator checks and approval (added by the control issue).
    control: bool = False
    aliases: tuple[str, ...] = ()
    group: str = "Read-only"  # the heading `help` lists it under


class Registry:
    """Subcommands by name; open for later additions (control, alerts, mute, ...)."""

    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}
        self._aliases: dict[str, str] = {}

    def register(self, spec: CommandSpec, *, replace: bool = False) -> CommandSpec:
        names = (spec.name, *spec.aliases)
        for name in names:
            if not replace and (name in self._specs or name in self._aliases):
                raise ValueError(f"command {name!r} is already registered")
        self._specs[spec.name] = spec
        for alias in spec.aliases:
            self._aliases[alias] = spec.name
        return spec

    def get(self, name: str) -> CommandSpec | None:
        key = name.lower()
        return self._specs.get(self._aliases.get(key, key))

    def suggest(self, name: str) -> str | None:
        """The closest known subcommand, for "did you mean"."""
        candidates = [*self._specs, *self._aliases]
        close = difflib.get_close_matches(name.lower(), candidates, n=1, cutoff=0.6)
        if close:
            return self._aliases.get(close[0], close[0])
        prefixed = [c for c in self._specs if c.startswith(name.lower())] if name else []
        return prefixed[0] if len(prefixed) == 1 else None

    def __iter__(self) -> Iterator[CommandSpec]:
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        return len(self._specs)


@dataclass(frozen=True)
class Prepared:
    """A parsed command line. Either ``reply`` is set (answer it now) or it is ready to run."""

    text: str
    spec: CommandSpec | None = None
    args: ParsedArgs | None = None
    share: bool = False
    reply: Message | None = None

    @property
    def slow(self) -> bool:
        return self.reply is None and self.spec is not None and self.spec.slow

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else ""


class Dispatcher:
    """Parses a command line, runs its handler, turns every failure into a readable Message."""

    def __init__(self, registry: Registry, renderer: Renderer, *, prefix: str = "/celery") -> None:
        self.registry = registry
        self.renderer = renderer
        self.prefix = prefix

    def prepare(self, text: str) -> Prepared:
        try:
            line = split_command_line(text)
        except UsageError as exc:
            return Prepared(text, reply=self.usage_error(exc))
        if not line.subcommand:
            line = dataclasses.replace(line, subcommand="help")
        spec = self.registry.get(line.subcommand)
        if spec is None:
            suggestion = self.registry.suggest(line.subcommand)
            hint = f" Did you mean {suggestion}?" if suggestion else ""
            error = UsageError(f"Unknown command {line.subcommand!r}.{hint}")
            return Prepared(text, share=line.share, reply=self.usage_error(error))
        try:
            args = parse_args(spec.args, line.argv, command=spec.name)
        except UsageError as exc:
            exc.command = spec.name
            return Prepared(text, spec=spec, share=line.share, reply=self.usage_error(exc))
        return Prepared(text, spec=spec, args=args, share=line.share)

    def execute(self, prepared: Prepared, ctx: CommandContext) -> Message:
        if prepared.reply is not None:
            return prepared.reply
        if prepared.spec is None or prepared.args is None:
            raise ValueError("execute() needs a prepared command")
        spec = prepared.spec
        try:
            message = spec.handler(prepared.args, ctx)
        except UsageError as exc:  # found while running: an unknown id, worker or name
            exc.command = exc.command or spec.name
            return self.usage_error(exc)
        except StoreUnavailable as exc:
            # Not a bug: a dependency is down, and the person asking should know which.
            logger.warning("command %r: %s", spec.name, exc)
            return self.store_unavailable(spec.name, exc)
        except Exception:
            # Anything else is our bug or a dependency failing: log it in full, say one line.
            reference = uuid.uuid4().hex[:8]
            logger.exception(
                "command %r failed (ref %s, user %s, channel %s)",
                spec.name,
                reference,
                ctx.user_id,
                ctx.channel_id,
            )
            return self.internal_error(spec.name, reference)
        # --share widens a reply; a message its handler made public (a card) stays public.
        return dataclasses.replace(message, ephemeral=message.ephemeral and not prepared.share)

    def run(self, text: str, ctx: CommandContext) -> Message:
        return self.execute(self.prepare(text), ctx)

    # -- messages the dispatcher itself produces ----------------------------------------------
    def usage_error(self, error: UsageError) -> Message:
        spec = self.registry.get(error.command) if error.command else None
        return self.renderer.render(
            "error.json.j2",
            error=str(error),
            usage=f"{self.prefix} {spec.usage if spec else ROOT_USAGE}",
            help_hint=f"{self.prefix} help {spec.name}" if spec else f"{self.prefix} help",
        )

    def store_unavailable(self, name: str, error: StoreUnavailable) -> Message:
        reason = str(error).removeprefix("state store unavailable: ")
        return self.renderer.render(
            "error.json.j2",
            error=f"The state store is unavailable ({reason}), so {name!r} cannot answer now."
            " Try again in a moment.",
            usage="",
            help_hint="",
        )

    def internal_error(self, name: str, reference: str) -> Message:
        return self.renderer.render(
            "error.json.j2",
            error=f"Internal error while running {name!r}; it has been logged (ref {reference}).",
            usage="",
            help_hint="",
        )
