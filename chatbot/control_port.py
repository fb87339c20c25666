"""The one port through which the rest of the program drives and asks the Celery workers.

:class:`chatbot.control.FleetControl` is the real implementation; the approvals (control
actions), the read-only commands (``inspect``) and worker discovery all take this Protocol,
so a recorded test double stands in for it without subclassing. Results are the concrete
:class:`~chatbot.control.ControlResult` (plain data), not look-alike Protocols of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from chatbot.control import ControlResult
from chatbot.retry import RetryPlan

__all__ = ["ControlPort"]


class ControlPort(Protocol):
    """Remote control and inspection of the workers, as :class:`FleetControl` offers them."""

    def revoke(
        self,
        task_ids: Sequence[str],
        *,
        terminate: bool = False,
        signal: str = "SIGTERM",
        destination: Sequence[str] | None = None,
        expected: Sequence[str] = (),
    ) -> ControlResult: ...

    def pool_grow(self, worker: str, n: int = 1) -> ControlResult: ...

    def pool_shrink(self, worker: str, n: int = 1) -> ControlResult: ...

    def autoscale(self, worker: str, max: int, min: int) -> ControlResult: ...

    def rate_limit(
        self, task_name: str, rate: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult: ...

    def time_limit(
        self,
        task_name: str,
        soft: float | None,
        hard: float | None,
        worker: str | None = None,
        expected: Sequence[str] = (),
    ) -> ControlResult: ...

    def shutdown(self, worker: str) -> ControlResult: ...

    def resend(self, plans: Sequence[RetryPlan]) -> ControlResult:
        """Re-send failed tasks; one reply per failed task id (the new id as its value)."""
        ...

    def add_consumer(
        self, queue: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult: ...

    def cancel_consumer(
        self, queue: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult: ...

    def inspect(
        self, method: str, worker: str | None = None, expected: Sequence[str] = (), **kw: Any
    ) -> ControlResult:
        """A read-only inspect command; each worker's data is in its reply's ``value``."""
        ...


if TYPE_CHECKING:
    # mypy proves the real class satisfies the port (no runtime import of it needed here).
    from chatbot.control import FleetControl

    def _conforms(control: FleetControl) -> None:
        port: ControlPort = control
        del port
