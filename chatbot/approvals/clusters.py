"""Approvals of several clusters behind the one face the Slack buttons and sweeps use.

Each cluster has its own :class:`ApprovalService` (its records, its store, its control app),
so a request can only ever run on the cluster it was made for. The buttons only carry an
approval id: :class:`ClusterApprovals` finds the cluster whose records hold it and hands the
click to that cluster's service alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from chatbot.approvals.persistence import StateStoreUnavailable
from chatbot.approvals.records import Approval, DecisionOutcome
from chatbot.approvals.service import ApprovalService
from chatbot.render import Message

__all__ = ["ClusterApprovals"]

logger = logging.getLogger(__name__)


class ClusterApprovals:
    """The members of :class:`ApprovalService` a face uses, routed by approval id."""

    def __init__(self, services: Mapping[str, ApprovalService]) -> None:
        if not services:
            raise ValueError("at least one cluster")
        self.services = dict(services)

    def owner(self, approval_id: str) -> ApprovalService:
        """The service of the cluster holding ``approval_id``; the first one if none does
        (it then answers "unknown request", as a one-cluster bot would)."""
        first = next(iter(self.services.values()))
        for service in self.services.values():
            try:
                if service.get(approval_id) is not None:
                    return service
            except StateStoreUnavailable:
                # That cluster's records cannot be read now: its service says so when asked.
                return service
        return first

    def decide(self, approval_id: str, user_id: str, approve: bool) -> DecisionOutcome:
        return self.owner(approval_id).decide(approval_id, user_id, approve)

    def get(self, approval_id: str) -> Approval | None:
        return self.owner(approval_id).get(approval_id)

    def attach_message(self, approval_id: str, channel: str, ts: str) -> Approval | None:
        return self.owner(approval_id).attach_message(approval_id, channel, ts)

    def confirm_revoke_in_background(
        self, approval_id: str, on_done: Callable[[Approval], None]
    ) -> threading.Thread:
        return self.owner(approval_id).confirm_revoke_in_background(approval_id, on_done)

    def card(self, approval: Approval) -> Message:
        service = self.services.get(approval.cluster) or self.owner(approval.id)
        return service.card(approval)

    def expire_due(self) -> list[Approval]:
        expired: list[Approval] = []
        for name, service in self.services.items():
            try:
                expired.extend(service.expire_due())
            except Exception:
                # One cluster's state store being down must not keep the others' cards open.
                logger.exception("expiring the approvals of cluster %s failed", name)
        return expired
