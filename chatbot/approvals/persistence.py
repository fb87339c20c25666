"""Approval records in the :class:`~chatbot.store.RecordStore`, with a store failure told apart.

Each method is one typed call to the RecordStore; whatever the backend raises (Redis down, a
timeout) becomes :class:`StateStoreUnavailable`, which the state machine reports as "nothing
done, try again" rather than as a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from chatbot.store import RecordStore

__all__ = ["APPROVAL_RECORD_KIND", "ApprovalRecords", "StateStoreUnavailable"]

logger = logging.getLogger(__name__)

APPROVAL_RECORD_KIND = "approval"

_T = TypeVar("_T")


class StateStoreUnavailable(RuntimeError):
    """The RecordStore could not be read or written (e.g. Redis is down); one line."""


class ApprovalRecords:
    """The ``approval`` kind of a RecordStore."""

    def __init__(self, records: RecordStore) -> None:
        self.records = records

    def create(self, key: str, value: Mapping[str, Any], ttl: float) -> bool:
        return self._call(
            "create", lambda: self.records.create(APPROVAL_RECORD_KIND, key, value, ttl)
        )

    def get(self, key: str) -> dict[str, Any] | None:
        return self._call("get", lambda: self.records.get(APPROVAL_RECORD_KIND, key))

    def list(self) -> list[dict[str, Any]]:
        return self._call("list", lambda: self.records.list(APPROVAL_RECORD_KIND))

    def transition(
        self, key: str, field: str, expected: Any, updates: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The RecordStore's atomic gate (see :meth:`RecordStore.transition`)."""
        return self._call(
            "transition",
            lambda: self.records.transition(APPROVAL_RECORD_KIND, key, field, expected, updates),
        )

    @staticmethod
    def _call(what: str, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except Exception as exc:  # the backend's own errors: redis-py, sockets, timeouts
            logger.warning("approval state store: %s failed", what, exc_info=True)
            text = str(exc).strip()
            detail = text.splitlines()[0][:200] if text else ""
            raise StateStoreUnavailable(
                "the approval state store is unreachable"
                + (f" ({type(exc).__name__}: {detail})" if detail else f" ({type(exc).__name__})")
            ) from exc
