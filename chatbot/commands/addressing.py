"""Which cluster a ``/celery`` line is for: ``@NAME``, the channel's default, or all of them.

``/celery @prod failed`` addresses the cluster ``prod``; without ``@NAME`` a channel bound by
``CHATOPS_CHANNEL_CLUSTERS`` addresses its cluster, and a bot with one cluster addresses it.
With several clusters and no default, a read-only command answers for every cluster (one
section each, named), and a control command is refused until a cluster is named: an action on
the wrong fleet is worse than a second try. ``@all`` asks every cluster explicitly.

:class:`ClusterDispatcher` has the face-facing members of
:class:`~chatbot.commands.registry.Dispatcher` (``prepare``, ``execute``, ``run``,
``internal_error``), so the faces stay as they are: they pass the context of their user and
channel, and each cluster's own dispatcher runs the command with that cluster's context (its
store, broker, control and settings), so a task id resolves within the addressed cluster only.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from chatbot.approvals import APPROVE_ACTION_ID, DENY_ACTION_ID
from chatbot.cluster_config import address_value
from chatbot.commands.context import CommandContext
from chatbot.commands.parser import COMMAND_WORDS, SHARE_FLAG, UsageError
from chatbot.commands.registry import Dispatcher, Prepared, Registry
from chatbot.render import Message, Renderer, fit_message

__all__ = [
    "ALL_CLUSTERS",
    "Address",
    "AddressedPrepared",
    "ClusterDirectory",
    "ClusterDispatcher",
    "addressed_blocks",
    "split_address",
]

ALL_CLUSTERS = "all"
# Commands whose answer does not depend on a cluster: answered once.
CLUSTER_FREE = frozenset({"help"})
_TOKEN = re.compile(r"\S+")
_ADDRESS = re.compile(r"^@([A-Za-z0-9][A-Za-z0-9_-]*)$")


@dataclass(frozen=True)
class Address:
    """A command line's cluster address and the line without it."""

    text: str
    cluster: str | None = None  # the name after "@" (lower-cased); None: none given


def split_address(text: str) -> Address:
    """``/celery @prod failed --share`` -> ``Address("/celery failed --share", "prod")``.

    The address is the first word after the optional ``/celery`` and any ``--share``. A word
    that starts with ``@`` but is not a name is an error: silently running the command on the
    default cluster instead would answer for the wrong fleet.
    """
    for match in _TOKEN.finditer(text):
        word = match.group(0)
        if word.lower() in COMMAND_WORDS or word == SHARE_FLAG:
            continue
        if not word.startswith("@"):
            break
        found = _ADDRESS.match(word)
        if found is None:
            raise UsageError(f"{word[:40]!r} is not a cluster: write @NAME, e.g. @prod")
        rest = (text[: match.start()] + text[match.end() :].lstrip()).strip()
        return Address(rest, found.group(1).lower())
    return Address(text)


class ClusterDirectory(Protocol):
    """What addressing needs to know of the configured clusters (``cluster_config.Clusters``)."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def several(self) -> bool: ...

    def default_for(self, channel_id: str) -> str | None: ...


@dataclass(frozen=True)
class AddressedPrepared(Prepared):
    """A prepared command and the cluster it names (``ALL_CLUSTERS`` for ``@all``)."""

    cluster: str | None = None


# How a face's context (user, channel, confirm) becomes a context of one cluster.
ContextFor = Callable[[str, CommandContext], CommandContext]


class ClusterDispatcher:
    """Routes each command to its cluster's :class:`Dispatcher`; several answers are joined."""

    def __init__(
        self,
        dispatchers: Mapping[str, Dispatcher],
        directory: ClusterDirectory,
        context_for: ContextFor,
    ) -> None:
        if not dispatchers or set(dispatchers) != set(directory.names):
            raise ValueError("one dispatcher per configured cluster")
        self._dispatchers = dict(dispatchers)
        self._directory = directory
        self._context_for = context_for
        # Every cluster's registry has the same commands: any of them parses a line.
        self._parser = self._dispatchers[directory.names[0]]

    # -- what a face uses (the members of Dispatcher) ------------------------------------------
    @property
    def registry(self) -> Registry:
        return self._parser.registry

    @property
    def renderer(self) -> Renderer:
        return self._parser.renderer

    @property
    def prefix(self) -> str:
        return self._parser.prefix

    def dispatcher(self, cluster: str) -> Dispatcher:
        return self._dispatchers[cluster]

    def prepare(self, text: str) -> Prepared:
        try:
            address = split_address(text)
        except UsageError as exc:
            return Prepared(text, reply=self._parser.usage_error(exc))
        cluster = address.cluster
        if cluster is not None and cluster != ALL_CLUSTERS and cluster not in self._dispatchers:
            error = UsageError(
                f"unknown cluster {cluster!r} (clusters: {', '.join(self._directory.names)})"
            )
            return Prepared(text, reply=self._parser.usage_error(error))
        prepared = self._parser.prepare(address.text)
        fields = {f.name: getattr(prepared, f.name) for f in dataclasses.fields(Prepared)}
        return AddressedPrepared(**fields, cluster=cluster)

    def execute(self, prepared: Prepared, ctx: CommandContext) -> Message:
        if prepared.reply is not None:
            return prepared.reply
        named = prepared.cluster if isinstance(prepared, AddressedPrepared) else None
        spec = prepared.spec
        if spec is not None and spec.name in CLUSTER_FREE:
            message = self._execute_on(self._directory.names[0], prepared, ctx)
            return self._with_cluster_help(message, ctx.channel_id)
        targets = self._targets(named, ctx.channel_id)
        if spec is not None and spec.control and len(targets) != 1:
            return self._parser.usage_error(
                UsageError(
                    f"{spec.name} changes a fleet: name its cluster, e.g."
                    f" {self.prefix} @{self._directory.names[0]} {spec.name} ..."
                    f" (clusters: {', '.join(self._directory.names)})",
                    command=spec.name,
                )
            )
        if len(targets) == 1:
            return self._run_on(targets[0], prepared, ctx)
        return self._joined(targets, prepared, ctx)

    def run(self, text: str, ctx: CommandContext) -> Message:
        return self.execute(self.prepare(text), ctx)

    def usage_error(self, error: UsageError) -> Message:
        return self._parser.usage_error(error)

    def internal_error(self, name: str, reference: str) -> Message:
        return self._parser.internal_error(name, reference)

    def _with_cluster_help(self, message: Message, channel_id: str) -> Message:
        """``help`` with several clusters: how to address one, and this channel's default."""
        if not self._directory.several:
            return message
        names = ", ".join(self._directory.names)
        default = self._directory.default_for(channel_id)
        here = (
            f"Here `{self.prefix} COMMAND` is for *{default}*."
            if default
            else "Here, without @NAME, read-only commands answer for every cluster and control"
            " commands ask you to name one."
        )
        note = {
            "type": "context",
            "block_id": "clusters-help",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"Clusters: {names}. Address one with `{self.prefix} @NAME COMMAND`"
                    f" (`@all` for every one). {here}",
                }
            ],
        }
        text, blocks = fit_message({"text": message.text, "blocks": [*message.blocks, note]})
        return dataclasses.replace(message, text=text, blocks=blocks)

    # -- routing -------------------------------------------------------------------------------
    def _targets(self, named: str | None, channel_id: str) -> Sequence[str]:
        if named == ALL_CLUSTERS:
            return self._directory.names
        if named is not None:
            return (named,)
        default = self._directory.default_for(channel_id)
        return (default,) if default is not None else self._directory.names

    def _execute_on(self, cluster: str, prepared: Prepared, ctx: CommandContext) -> Message:
        """Run on ``cluster`` with ITS command specs: a handler is bound to its cluster's parts
        (approvals, alerts), so the line is parsed again by that cluster's dispatcher rather
        than run with the handler the parsing dispatcher found."""
        dispatcher = self._dispatchers[cluster]
        own = prepared if dispatcher is self._parser else dispatcher.prepare(prepared.text)
        return dispatcher.execute(own, self._context_for(cluster, ctx))

    def _run_on(self, cluster: str, prepared: Prepared, ctx: CommandContext) -> Message:
        message = self._execute_on(cluster, prepared, ctx)
        if not self._directory.several or message.approval_id:
            # One cluster: exactly the answer it always was. An approval card names its cluster
            # itself (it is re-rendered on every decision, and would lose a line added here),
            # and its buttons carry an approval id that finds its cluster by itself.
            return message
        return _join(message.ephemeral, [(cluster, message)])

    def _joined(self, clusters: Sequence[str], prepared: Prepared, ctx: CommandContext) -> Message:
        def answer(cluster: str) -> Message:
            return self._execute_on(cluster, prepared, ctx)

        if prepared.slow:
            # Each cluster's workers and broker answer in their own time: ask them together.
            with ThreadPoolExecutor(max_workers=len(clusters)) as pool:
                answers = list(pool.map(answer, clusters))
        else:
            answers = [answer(cluster) for cluster in clusters]
        ephemeral = all(message.ephemeral for message in answers)
        return _join(ephemeral, list(zip(clusters, answers, strict=True)))


def _cluster_heading(cluster: str) -> dict[str, Any]:
    # Cluster names are checked to be [a-z0-9_-] (cluster_config): nothing to escape.
    return {
        "type": "context",
        "block_id": f"cluster-{cluster}",
        "elements": [{"type": "mrkdwn", "text": f":file_cabinet: Cluster *{cluster}*"}],
    }


_NOT_ADDRESSED = frozenset({APPROVE_ACTION_ID, DENY_ACTION_ID})


def addressed_blocks(blocks: Sequence[Mapping[str, Any]], cluster: str) -> list[dict[str, Any]]:
    """``blocks`` with every button's and menu option's value addressed to ``cluster``
    (``@NAME/VALUE``, see ``cluster_config.split_value``), so that a click on it runs on the
    cluster the answer came from. Approval buttons keep their ids (they find their cluster)."""
    return [_addressed(block, cluster) for block in blocks]


def _addressed(block: Mapping[str, Any], cluster: str) -> dict[str, Any]:
    copy = dict(block)
    if isinstance(copy.get("accessory"), Mapping):
        copy["accessory"] = _addressed_element(copy["accessory"], cluster)
    if isinstance(copy.get("elements"), list):
        copy["elements"] = [
            _addressed_element(e, cluster) if isinstance(e, Mapping) else e
            for e in copy["elements"]
        ]
    return copy


def _addressed_element(element: Mapping[str, Any], cluster: str) -> dict[str, Any]:
    copy = dict(element)
    if copy.get("action_id") in _NOT_ADDRESSED:
        return copy
    if isinstance(copy.get("value"), str):
        copy["value"] = address_value(cluster, copy["value"])
    for key in ("options", "initial_option"):
        options = copy.get(key)
        if isinstance(options, list):
            copy[key] = [_addressed_option(o, cluster) for o in options]
        elif isinstance(options, Mapping):
            copy[key] = _addressed_option(options, cluster)
    return copy


def _addressed_option(option: Any, cluster: str) -> Any:
    if isinstance(option, Mapping) and isinstance(option.get("value"), str):
        return {**option, "value": address_value(cluster, option["value"])}
    return option


def _join(ephemeral: bool, answers: Sequence[tuple[str, Message]]) -> Message:
    """Each cluster's answer under its name, fitted to Block Kit's limits as one message."""
    blocks: list[dict[str, Any]] = []
    texts: list[str] = []
    for index, (cluster, message) in enumerate(answers):
        if index:
            blocks.append({"type": "divider"})
        blocks.append(_cluster_heading(cluster))
        blocks.extend(addressed_blocks(message.blocks, cluster))
        texts.append(f"[{cluster}] {message.text}")
    text, fitted = fit_message({"text": "\n".join(texts), "blocks": blocks})
    return Message(text=text, blocks=fitted, ephemeral=ephemeral)
