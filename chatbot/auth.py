"""Who may request and who may approve control actions.

Identity is the Slack user ID from the signed payload (``U...`` or ``W...``), never a display
name: names can be changed by their owner, IDs cannot (Errbot's ACL bugs all came from
matching names). ``CHATOPS_OPERATORS`` and ``CHATOPS_APPROVERS`` hold user IDs and user-group
IDs (``S...``); a group's members are looked up through a :class:`GroupResolver` and cached
for ``cache_ttl`` seconds, or until Slack reports a group change (:meth:`forget_groups`). A
lookup that fails never grants anything: the user is refused with the reason, and the failure
is not cached, so the next click tries again.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chatbot.config import Settings
from chatbot.slackerrors import error_code

__all__ = [
    "DEFAULT_GROUP_CACHE_TTL",
    "Authorizer",
    "Decision",
    "GroupLookupError",
    "GroupResolver",
    "SlackGroupResolver",
    "is_user_id",
]

logger = logging.getLogger(__name__)

DEFAULT_GROUP_CACHE_TTL = 300.0

_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_GROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")


def is_user_id(value: str) -> bool:
    """A Slack user ID as found in a signed payload (``U...``; ``W...`` on Enterprise Grid)."""
    return bool(_USER_ID.match(value or ""))


class GroupLookupError(RuntimeError):
    """A user group's members could not be read (one line, no secrets)."""


class GroupResolver(Protocol):
    """Members of a Slack user group; raises on any failure rather than answering empty."""

    def members(self, group_id: str) -> Iterable[str]: ...


class UsergroupsClient(Protocol):
    """The one ``slack_sdk.WebClient`` method the Slack resolver needs."""

    def usergroups_users_list(self, *, usergroup: str, **kwargs: Any) -> Any: ...


class SlackGroupResolver:
    """Resolves ``S...`` groups with ``usergroups.users.list`` (scope ``usergroups:read``)."""

    def __init__(self, client: UsergroupsClient) -> None:
        self._client = client

    def members(self, group_id: str) -> list[str]:
        try:
            response = self._client.usergroups_users_list(usergroup=group_id)
        except Exception as exc:
            # slack_sdk raises SlackApiError for ok=false; its text carries the Slack error
            # code (no_such_subteam, missing_scope, ratelimited), which is what people need.
            raise GroupLookupError(_slack_error_text(exc)) from exc
        users = response.get("users") if hasattr(response, "get") else None
        if not isinstance(users, list):
            raise GroupLookupError("usergroups.users.list returned no user list")
        return [str(user) for user in users]


def _slack_error_text(exc: BaseException) -> str:
    code = error_code(exc)
    if code:
        return f"usergroups.users.list failed: {code}"
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"usergroups.users.list failed: {first_line[:200]}"


@dataclass(frozen=True)
class Decision:
    """``allowed`` and, either way, a sentence saying why (shown to the person asking)."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class _CachedGroup:
    members: frozenset[str]
    fetched_at: float


class Authorizer:
    """Answers "may this Slack user request / approve a control action?".

    ``operators`` and ``approvers`` are user IDs and user-group IDs as configured
    (``approvers`` already defaulted to the operators, see ``Settings.effective_approvers``).
    """

    def __init__(
        self,
        operators: Sequence[str],
        approvers: Sequence[str],
        resolver: GroupResolver | None = None,
        cache_ttl: float = DEFAULT_GROUP_CACHE_TTL,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.operators = tuple(dict.fromkeys(i.strip() for i in operators if i.strip()))
        self.approvers = tuple(dict.fromkeys(i.strip() for i in approvers if i.strip()))
        self._resolver = resolver
        self._cache_ttl = max(0.0, float(cache_ttl))
        self._clock = clock
        self._lock = threading.Lock()
        self._groups: dict[str, _CachedGroup] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        resolver: GroupResolver | None = None,
        cache_ttl: float = DEFAULT_GROUP_CACHE_TTL,
    ) -> Authorizer:
        return cls(settings.operators, settings.effective_approvers, resolver, cache_ttl)

    # -- the two questions ----------------------------------------------------------------
    def can_request(self, user_id: str) -> Decision:
        if not self.operators:
            return Decision(
                False,
                "Control commands are disabled: nobody is an operator. Set CHATOPS_OPERATORS"
                " to Slack user IDs (U...) or user-group IDs (S...).",
            )
        return self._check(user_id, self.operators, "an operator", "CHATOPS_OPERATORS")

    def can_approve(self, user_id: str) -> Decision:
        if not self.approvers:
            return Decision(
                False,
                "Nobody may approve control actions: CHATOPS_APPROVERS is set but empty."
                " Set it to Slack user IDs (U...) or user-group IDs (S...), or unset it so"
                " the operators approve.",
            )
        return self._check(user_id, self.approvers, "an approver", "CHATOPS_APPROVERS")

    # -- internals ------------------------------------------------------------------------
    def _check(self, user_id: str, allowed: Sequence[str], role: str, setting: str) -> Decision:
        if not is_user_id(user_id):
            # Defence in depth: the faces pass the signed payload's user ID; anything else
            # (a name, an empty string) must never match an entry by accident.
            return Decision(False, f"Not allowed: {user_id!r} is not a Slack user ID.")
        if user_id in allowed:
            return Decision(True, f"<@{user_id}> is {role} ({setting}).")
        failures: list[str] = []
        for group_id in allowed:
            if not _GROUP_ID.match(group_id):
                continue
            try:
                members = self._members(group_id)
            except GroupLookupError as exc:
                logger.warning("user group %s could not be resolved: %s", group_id, exc)
                failures.append(f"{group_id}: {exc}")
                continue
            if user_id in members:
                return Decision(True, f"<@{user_id}> is {role} (member of {group_id}).")
        if failures:
            return Decision(
                False,
                f"Not allowed: you are not listed in {setting}, and membership of its user"
                f" groups could not be checked ({'; '.join(failures)}). Try again shortly.",
            )
        return Decision(False, f"Not allowed: you are not {role} (see {setting}).")

    def _members(self, group_id: str) -> frozenset[str]:
        now = self._clock()
        with self._lock:
            cached = self._groups.get(group_id)
            if cached is not None and now - cached.fetched_at < self._cache_ttl:
                return cached.members
        if self._resolver is None:
            raise GroupLookupError("no user-group resolver is configured")
        # The lookup is network I/O: done outside the lock, so one slow group does not
        # block checks that the cache can answer.
        try:
            members = frozenset(self._resolver.members(group_id))
        except GroupLookupError:
            raise
        except Exception as exc:
            raise GroupLookupError(f"{type(exc).__name__}: {exc}"[:200]) from exc
        with self._lock:
            self._groups[group_id] = _CachedGroup(members, now)
        return members

    def forget_groups(self) -> None:
        """Drop cached memberships: the Slack face calls it on ``subteam_members_changed`` and
        ``subteam_updated``, so a membership change counts at once, not after ``cache_ttl``."""
        with self._lock:
            self._groups.clear()
