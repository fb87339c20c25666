"""Authorizer: Slack user IDs and user groups (through the local Slack Web API double)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient

from chatbot.auth import Authorizer, GroupLookupError, SlackGroupResolver
from chatbot.config import Settings, load_settings
from chatbot.service import Service
from chatbot.slack import HttpServer, build_app, make_executor, make_web_client
from tests.support.slack_api import MockSlackAPI
from tests.support.slack_payloads import JSON, event_callback, post_signed

ALICE = "UALICE01"
BOB = "UBOB0001"
CAROL = "UCAROL01"
ONCALL = "SONCALL1"
SECRET = "auth-test-signing-secret"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingResolver:
    def __init__(self, groups: dict[str, list[str]]) -> None:
        self.groups = groups
        self.calls: list[str] = []
        self.fail = False

    def members(self, group_id: str) -> list[str]:
        self.calls.append(group_id)
        if self.fail:
            raise GroupLookupError("usergroups.users.list failed: ratelimited")
        return self.groups[group_id]


@pytest.fixture
def slack() -> Iterator[MockSlackAPI]:
    with MockSlackAPI() as api:
        yield api


def test_no_operators_refuses_everyone_and_names_the_setting() -> None:
    auth = Authorizer(operators=(), approvers=())
    decision = auth.can_request(ALICE)
    assert not decision.allowed
    assert "CHATOPS_OPERATORS" in decision.reason
    assert not auth.can_approve(ALICE).allowed


def test_user_ids_are_matched_exactly() -> None:
    auth = Authorizer(operators=(ALICE,), approvers=(BOB,))
    assert auth.can_request(ALICE).allowed
    assert not auth.can_request(BOB).allowed
    assert auth.can_approve(BOB).allowed
    refused = auth.can_approve(ALICE)
    assert not refused.allowed and "CHATOPS_APPROVERS" in refused.reason


@pytest.mark.parametrize("identity", ["alice", "@alice", "", "ualice01", "<@UALICE01>", ONCALL])
def test_anything_but_a_user_id_is_refused(identity: str) -> None:
    # A display name, a mention or a group id is never an identity, even if it looks close.
    auth = Authorizer(operators=(ALICE, ONCALL), approvers=(ALICE,))
    assert not auth.can_request(identity).allowed


def test_approvers_default_to_the_operators_and_empty_means_nobody() -> None:
    defaulted = Authorizer.from_settings(load_settings({"CHATOPS_OPERATORS": ALICE}))
    assert defaulted.can_approve(ALICE).allowed
    nobody = Authorizer.from_settings(
        load_settings({"CHATOPS_OPERATORS": ALICE, "CHATOPS_APPROVERS": ""})
    )
    decision = nobody.can_approve(ALICE)
    assert not decision.allowed and "CHATOPS_APPROVERS" in decision.reason


def test_group_membership_through_the_slack_api_is_cached(slack: MockSlackAPI) -> None:
    slack.set_usergroup(ONCALL, [BOB, CAROL])
    clock = FakeClock()
    client = WebClient(token="xoxb-test", base_url=slack.url)
    auth = Authorizer(
        operators=(ALICE, ONCALL),
        approvers=(ONCALL,),
        resolver=SlackGroupResolver(client),
        cache_ttl=60,
        clock=clock,
    )
    assert auth.can_request(ALICE).allowed  # listed directly: no API call
    assert slack.calls("usergroups.users.list") == []

    assert auth.can_request(BOB).allowed
    assert auth.can_approve(CAROL).allowed
    assert not auth.can_approve(ALICE).allowed
    calls = slack.calls("usergroups.users.list")
    assert len(calls) == 1 and calls[0].params["usergroup"] == ONCALL

    # Membership changes are seen once the cache entry is older than the TTL.
    slack.set_usergroup(ONCALL, [CAROL])
    clock.now += 30
    assert auth.can_request(BOB).allowed  # still cached
    clock.now += 31
    assert not auth.can_request(BOB).allowed
    assert len(slack.calls("usergroups.users.list")) == 2


def test_a_failed_group_lookup_denies_with_the_reason_and_is_not_cached(
    slack: MockSlackAPI,
) -> None:
    slack.set_usergroup(ONCALL, [BOB])
    client = WebClient(token="xoxb-test", base_url=slack.url)
    auth = Authorizer(operators=(ONCALL,), approvers=(ONCALL,), resolver=SlackGroupResolver(client))
    slack.fail_next("usergroups.users.list", "internal_error")
    decision = auth.can_request(BOB)
    assert not decision.allowed
    assert "could not be checked" in decision.reason and "internal_error" in decision.reason
    # The failure was not remembered: the next check asks again and succeeds.
    assert auth.can_request(BOB).allowed


def test_unknown_group_and_missing_scope_deny(slack: MockSlackAPI) -> None:
    client = WebClient(token="xoxb-test", base_url=slack.url)
    auth = Authorizer(operators=("SNOSUCH1",), approvers=(), resolver=SlackGroupResolver(client))
    decision = auth.can_request(BOB)
    assert not decision.allowed and "no_such_subteam" in decision.reason

    slack.set_usergroup(ONCALL, [BOB])
    slack.set_scopes(["commands", "chat:write"])
    scoped = Authorizer(operators=(ONCALL,), approvers=(), resolver=SlackGroupResolver(client))
    decision = scoped.can_request(BOB)
    assert not decision.allowed and "missing_scope" in decision.reason


def test_no_resolver_configured_denies_group_members() -> None:
    auth = Authorizer(operators=(ONCALL,), approvers=(ONCALL,))
    decision = auth.can_request(BOB)
    assert not decision.allowed and "resolver" in decision.reason


def test_any_resolver_exception_denies_and_is_retried() -> None:
    resolver = CountingResolver({ONCALL: [BOB]})
    resolver.fail = True
    auth = Authorizer(operators=(ONCALL,), approvers=(ONCALL,), resolver=resolver)
    assert not auth.can_request(BOB).allowed
    resolver.fail = False
    assert auth.can_request(BOB).allowed
    assert auth.can_approve(BOB).allowed
    assert resolver.calls == [ONCALL, ONCALL]  # the success is cached, the failure was not


# -- group changes reach the cache through Slack's events ----------------------------------
@pytest.mark.parametrize("event_type", ["subteam_members_changed", "subteam_updated"])
def test_a_signed_group_event_drops_cached_memberships(
    slack: MockSlackAPI, redis_url: str, event_type: str
) -> None:
    # Members are cached for 5 minutes: only the event makes BOB's removal count before then.
    settings = Settings(broker_url=redis_url, operators=(ONCALL,), slack_signing_secret=SECRET)
    client = make_web_client("xoxb-test", slack.url)
    service = Service(settings, web_client=client, consume_events=False)
    slack.set_usergroup(ONCALL, [BOB, CAROL])
    with make_executor(2) as executor:
        app = build_app(service, client=client, signing_secret=SECRET, executor=executor)
        with HttpServer(app, service, "127.0.0.1", 0) as server:
            assert service.authorizer.can_request(BOB).allowed
            slack.set_usergroup(ONCALL, [CAROL])
            assert service.authorizer.can_request(BOB).allowed  # still the cached list

            if event_type == "subteam_members_changed":
                event: dict[str, Any] = {
                    "type": event_type,
                    "subteam_id": ONCALL,
                    "team_id": "T0TEAM0001",
                    "added_users": [],
                    "added_users_count": 0,
                    "removed_users": [BOB],
                    "removed_users_count": 1,
                    "event_ts": "1700000000.000200",
                }
            else:
                event = {
                    "type": event_type,
                    "subteam": {"id": ONCALL, "users": [CAROL], "user_count": 1},
                    "event_ts": "1700000000.000200",
                }
            response = post_signed(
                server.url + "/slack/events",
                event_callback(event),
                signing_secret=SECRET,
                content_type=JSON,
            )
            assert response.status == 200, response.text

            refused = service.authorizer.can_request(BOB)
            assert not refused.allowed and "not an operator" in refused.reason
            assert service.authorizer.can_request(CAROL).allowed
            assert len(slack.calls("usergroups.users.list")) == 2  # asked again after the event
    service.stop()
