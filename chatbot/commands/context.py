"""What a command handler gets: the store, the broker and control seen through narrow Protocols.

The broker is seen through the broker layer's one
:class:`~chatbot.broker.QueueLengthReader`, the workers through the one
:class:`~chatbot.control_port.ControlPort`. Commands never import the real classes (structural
typing), so they and a recorded test double are interchangeable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatbot.broker import QueueLengthReader
from chatbot.config import Settings
from chatbot.control_port import ControlPort
from chatbot.failures import FingerprintMemory
from chatbot.model import StreamHealth
from chatbot.render import Renderer
from chatbot.store import FleetStore


@dataclass(frozen=True)
class CommandContext:
    """Everything a handler may use; built per invocation by the face (Slack or console)."""

    store: FleetStore
    settings: Settings
    renderer: Renderer
    broker: QueueLengthReader | None = None
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
    # First-seen times of failure fingerprints (chatbot/failures.py), so `failed` can mark a
    # group first seen inside its window as new; None: "new" is not shown.
    failure_memory: FingerprintMemory | None = None

    def stream_health(self) -> StreamHealth:
        return self.health() if self.health is not None else self.store.health()


if TYPE_CHECKING:
    # mypy proves the real classes satisfy the Protocols (no runtime import, no cycle).
    from chatbot.broker import BrokerReader

    def _conforms(broker: BrokerReader) -> None:
        reader: QueueLengthReader = broker
        del reader
