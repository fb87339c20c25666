"""What a command handler gets: the store, the broker and control seen through narrow Protocols.

The broker is seen through what the commands use of ``chatbot.broker.BrokerReader``, the
workers through the one :class:`~chatbot.control_port.ControlPort`. Commands never import the
real classes (structural typing), so they and a recorded test double are interchangeable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from chatbot.config import Settings
from chatbot.control_port import ControlPort
from chatbot.model import StreamHealth
from chatbot.render import Renderer
from chatbot.store import FleetStore


class QueueLengthInfo(Protocol):
    """One queue's length; ``messages`` is None when it could not be read (never guess 0)."""

    @property
    def name(self) -> str: ...

    @property
    def messages(self) -> int | None: ...

    @property
    def consumers(self) -> int | None: ...

    @property
    def error(self) -> str | None: ...

    @property
    def exists(self) -> bool | None:
        """False: the broker says there is no such queue (RabbitMQ); None: cannot tell."""
        ...


class QueueReader(Protocol):
    """The part of ``BrokerReader`` the commands use."""

    @property
    def broker_name(self) -> str: ...

    def queue_lengths(self, names: Sequence[str]) -> Sequence[QueueLengthInfo]: ...


@dataclass(frozen=True)
class CommandContext:
    """Everything a handler may use; built per invocation by the face (Slack or console)."""

    store: FleetStore
    settings: Settings
    renderer: Renderer
    broker: QueueReader | None = None
    control: ControlPort | None = None
    user_id: str = ""
    channel_id: str = ""
    clock: Callable[[], float] = field(default=time.time)
    # Interactive confirmation for faces that have one (the console); None in Slack, where
    # confirmation is an approval message instead.
    confirm: Callable[[str], bool] | None = None
    # The full stream health: the store knows freshness, only the consumer knows connection
    # and event loss, e.g. ``lambda: consumer.health_into(store.health())``.
    health: Callable[[], StreamHealth] | None = None
    # Operational problems of the bot itself that `status` must show, one line each (e.g.
    # "alerts cannot be posted in C123: not_in_channel"); plain text, escaped when shown.
    problems: Callable[[], list[str]] | None = None

    def stream_health(self) -> StreamHealth:
        return self.health() if self.health is not None else self.store.health()


if TYPE_CHECKING:
    # mypy proves the real classes satisfy the Protocols (no runtime import, no cycle).
    from chatbot.broker import BrokerReader

    def _conforms(broker: BrokerReader) -> None:
        reader: QueueReader = broker
        del reader
