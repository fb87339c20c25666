"""`/celery alerts`, `/celery mute KEY DURATION`, `/celery unmute KEY`.

Listing is open to everyone; muting and unmuting are for operators (``CHATOPS_OPERATORS``, user
IDs or user groups, judged by :class:`chatbot.auth.Authorizer`), because a silence hides a
problem from the whole channel. Nothing here waits for Slack: the manager queues the edits of
the alert messages a silence covers.
"""

from __future__ import annotations

from chatbot.alerts.manager import AlertManager, validate_pattern
from chatbot.auth import Authorizer
from chatbot.commands.context import CommandContext
from chatbot.commands.parser import ArgSpec, ParsedArgs, Positional, UsageError, parse_duration
from chatbot.commands.registry import CommandSpec, Registry
from chatbot.render import Message

GROUP = "Alerts"
LISTED = 15


def _pattern(text: str) -> str:
    return validate_pattern(text)


class AlertCommands:
    """Handlers bound to one :class:`AlertManager` and the operators' :class:`Authorizer`."""

    def __init__(self, manager: AlertManager, authorizer: Authorizer) -> None:
        self.manager = manager
        self.authorizer = authorizer

    def alerts(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        return ctx.renderer.render(
            "alerts.json.j2", overview=self.manager.overview(), shown=LISTED, now=ctx.clock()
        )

    def _refused(self, ctx: CommandContext) -> Message | None:
        decision = self.authorizer.can_request(ctx.user_id)
        if decision.allowed:
            return None
        return ctx.renderer.render(
            "error.json.j2",
            error=f"Only operators may mute or unmute alerts. {decision.reason}",
            usage="",
            help_hint="",
        )

    def mute(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        refused = self._refused(ctx)
        if refused is not None:
            return refused
        try:
            silence, covered = self.manager.mute(args["key"], args["duration"], ctx.user_id)
        except ValueError as exc:
            raise UsageError(str(exc), command="mute") from None
        return ctx.renderer.render(
            "alert_mute.json.j2",
            action="muted",
            pattern=silence.pattern,
            silence=silence,
            covered=covered,
            silences=[],
            now=ctx.clock(),
        )

    def unmute(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        refused = self._refused(ctx)
        if refused is not None:
            return refused
        pattern: str = args["key"]
        existed, covered = self.manager.unmute(pattern)
        return ctx.renderer.render(
            "alert_mute.json.j2",
            action="unmuted" if existed else "not_found",
            pattern=pattern,
            silence=None,
            covered=covered,
            silences=[s.pattern for s in self.manager.silences()],
            now=ctx.clock(),
        )


def register_alert_commands(
    registry: Registry, manager: AlertManager, authorizer: Authorizer | None = None
) -> Registry:
    """Add ``alerts``, ``mute`` and ``unmute`` to ``registry``.

    Pass the same ``authorizer`` the control commands use, so user groups in
    ``CHATOPS_OPERATORS`` resolve; without one, only user IDs listed there are operators.
    """
    handlers = AlertCommands(manager, authorizer or Authorizer.from_settings(manager.settings))
    key = Positional(
        "key",
        "an alert key (backlog:celery, failures:NAME, stuck:ID, worker:HOST, stream:silent),"
        " or a prefix ending in * (stuck:*)",
        "KEY",
        required=True,
        convert=_pattern,
    )
    specs = [
        CommandSpec(
            name="alerts",
            summary="open alerts, recently resolved ones and silences",
            usage="alerts",
            handler=handlers.alerts,
            examples=("alerts",),
            group=GROUP,
        ),
        CommandSpec(
            name="mute",
            summary="silence an alert key (or KIND:*) for a while; operators only",
            usage="mute KEY DURATION",
            handler=handlers.mute,
            args=ArgSpec(
                positionals=(
                    key,
                    Positional(
                        "duration",
                        "how long: 30m, 2h, 1d",
                        "DURATION",
                        required=True,
                        convert=parse_duration,
                    ),
                )
            ),
            examples=("mute backlog:celery 1h", "mute stuck:* 30m"),
            group=GROUP,
        ),
        CommandSpec(
            name="unmute",
            summary="end a silence; operators only",
            usage="unmute KEY",
            handler=handlers.unmute,
            args=ArgSpec(
                positionals=(
                    Positional(
                        "key", "the silenced key or pattern, as muted", "KEY", required=True
                    ),
                )
            ),
            examples=("unmute backlog:celery",),
            group=GROUP,
        ),
    ]
    for spec in specs:
        registry.register(spec)
    return registry
