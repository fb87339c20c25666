"""The Slack app manifests against the manifest schema's rules, and against what the bot uses.

The rules are those of Slack's published JSON schema for manifest version 1
(slackapi/manifest-schema, ``schemas/manifest.schema.1.0.0.json``): allowed keys, required
keys, string lengths and URL patterns. Slack also rejects scope and event names it does not
know, which no schema lists: the tables below are Slack's bot-token scopes and the bot events
with the scope each one needs (Slack's scope and event references), so a typo such as
``chat:writes`` or ``usergroup:read`` fails here instead of in Slack's app settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # PyYAML: in the `test` extra; a manifest that cannot be read is not "passing"

from chatbot.check import ESSENTIAL_SCOPES, REQUIRED_BOT_SCOPES
from chatbot.slack.app import GROUP_EVENTS

REPO_ROOT = Path(__file__).resolve().parent.parent
HTTP_MANIFEST = REPO_ROOT / "manifest.yml"
SOCKET_MANIFEST = REPO_ROOT / "manifest.socket-mode.yml"
MANIFESTS = (HTTP_MANIFEST, SOCKET_MANIFEST)
EVENTS_PATH = "/slack/events"

# Slack's bot-token scopes (granular bot tokens), spelled as Slack spells them.
VALID_BOT_SCOPES = frozenset(
    {
        "app_mentions:read",
        "assistant:write",
        "bookmarks:read",
        "bookmarks:write",
        "calls:read",
        "calls:write",
        "canvases:read",
        "canvases:write",
        "channels:history",
        "channels:join",
        "channels:manage",
        "channels:read",
        "channels:write.invites",
        "channels:write.topic",
        "chat:write",
        "chat:write.customize",
        "chat:write.public",
        "commands",
        "conversations.connect:manage",
        "conversations.connect:read",
        "conversations.connect:write",
        "dnd:read",
        "emoji:read",
        "files:read",
        "files:write",
        "groups:history",
        "groups:read",
        "groups:write",
        "groups:write.invites",
        "groups:write.topic",
        "im:history",
        "im:read",
        "im:write",
        "im:write.topic",
        "incoming-webhook",
        "links.embed:write",
        "links:read",
        "links:write",
        "lists:read",
        "lists:write",
        "metadata.message:read",
        "mpim:history",
        "mpim:read",
        "mpim:write",
        "mpim:write.topic",
        "pins:read",
        "pins:write",
        "reactions:read",
        "reactions:write",
        "reminders:read",
        "reminders:write",
        "remote_files:read",
        "remote_files:share",
        "remote_files:write",
        "team.billing:read",
        "team.preferences:read",
        "team:read",
        "tokens.basic",
        "triggers:read",
        "triggers:write",
        "usergroups:read",
        "usergroups:write",
        "users.profile:read",
        "users:read",
        "users:read.email",
        "users:write",
        "workflow.steps:execute",
    }
)

# Bot events and the scopes that allow subscribing to them (any one of them suffices);
# an empty tuple means the event needs no scope.
BOT_EVENT_SCOPES: dict[str, tuple[str, ...]] = {
    "app_home_opened": (),
    "app_mention": ("app_mentions:read",),
    "app_uninstalled": (),
    "tokens_revoked": (),
    "channel_archive": ("channels:read",),
    "channel_created": ("channels:read",),
    "channel_deleted": ("channels:read",),
    "channel_rename": ("channels:read",),
    "channel_unarchive": ("channels:read",),
    "group_archive": ("groups:read",),
    "group_rename": ("groups:read",),
    "member_joined_channel": ("channels:read", "groups:read"),
    "member_left_channel": ("channels:read", "groups:read"),
    "message.channels": ("channels:history",),
    "message.groups": ("groups:history",),
    "message.im": ("im:history",),
    "message.mpim": ("mpim:history",),
    "reaction_added": ("reactions:read",),
    "reaction_removed": ("reactions:read",),
    "subteam_created": ("usergroups:read",),
    "subteam_members_changed": ("usergroups:read",),
    "subteam_updated": ("usergroups:read",),
    "team_join": ("users:read",),
    "user_change": ("users:read",),
    "link_shared": ("links:read",),
    "pin_added": ("pins:read",),
    "file_shared": ("files:read",),
    "emoji_changed": ("emoji:read",),
}

# Allowed keys per object (schema v1, the parts a Slack app such as this one can use).
TOP_KEYS = {"_metadata", "display_information", "features", "oauth_config", "settings"}
METADATA_KEYS = {"major_version", "minor_version"}
DISPLAY_KEYS = {"name", "description", "background_color", "long_description"}
FEATURE_KEYS = {"app_home", "bot_user", "shortcuts", "slash_commands", "unfurl_domains"}
APP_HOME_KEYS = {"home_tab_enabled", "messages_tab_enabled", "messages_tab_read_only_enabled"}
BOT_USER_KEYS = {"display_name", "always_online"}
SLASH_KEYS = {"command", "url", "description", "usage_hint", "should_escape"}
OAUTH_KEYS = {"redirect_urls", "scopes", "token_management_enabled", "pkce_enabled"}
SCOPE_KEYS = {"bot", "user", "bot_optional", "user_optional"}
SETTINGS_KEYS = {
    "allowed_ip_address_ranges",
    "event_subscriptions",
    "incoming_webhooks",
    "interactivity",
    "org_deploy_enabled",
    "socket_mode_enabled",
    "token_rotation_enabled",
}
EVENT_KEYS = {"request_url", "bot_events", "user_events", "metadata_subscriptions"}
INTERACTIVITY_KEYS = {"is_enabled", "request_url", "message_menu_options_url"}
SETTINGS_BOOLEANS = ("org_deploy_enabled", "socket_mode_enabled", "token_rotation_enabled")

_COLOR = re.compile(r"^#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?$")
_BOT_DISPLAY_NAME = re.compile(r"^[a-z0-9._-]+$")
_URL = re.compile(r"^https?://")


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), f"{path.name}: not a mapping"
    return document


def schema_problems(manifest: dict[str, Any]) -> list[str]:
    """Every violation of the schema's rules, as ``path: what``; empty when valid."""
    problems: list[str] = []

    def keys(where: str, value: Any, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping")
            return {}
        problems.extend(f"{where}.{k}: unknown key" for k in sorted(set(value) - allowed))
        problems.extend(f"{where}.{k}: required" for k in required if k not in value)
        return value

    def text(where: str, value: Any, low: int, high: int, pattern: re.Pattern[str] | None = None):
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string")
        elif not low <= len(value) <= high:
            problems.append(f"{where}: length {len(value)} not within {low}..{high}")
        elif pattern is not None and not pattern.search(value):
            problems.append(f"{where}: {value!r} does not match {pattern.pattern}")

    def boolean(where: str, value: Any) -> None:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false")

    def string_list(where: str, value: Any, max_items: int, max_length: int) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{where}: expected a list of strings")
            return []
        if len(value) > max_items:
            problems.append(f"{where}: more than {max_items} items")
        if len(set(value)) != len(value):
            problems.append(f"{where}: duplicates")
        problems.extend(f"{where}: {v!r} longer than {max_length}" for v in value
                        if len(v) > max_length)  # fmt: skip
        return value

    top = keys("manifest", manifest, TOP_KEYS, required=("display_information",))
    meta = keys("_metadata", top.get("_metadata", {}), METADATA_KEYS)
    if "major_version" in meta and meta["major_version"] not in (1, 2):
        problems.append("_metadata.major_version: only 1 and 2 exist")
    if "minor_version" in meta and not isinstance(meta["minor_version"], int):
        problems.append("_metadata.minor_version: expected an integer")

    display = keys("display_information", top.get("display_information"), DISPLAY_KEYS, ("name",))
    text("display_information.name", display.get("name"), 1, 35)
    if "description" in display:
        text("display_information.description", display["description"], 1, 140)
    if "long_description" in display:
        text("display_information.long_description", display["long_description"], 175, 4000)
    if "background_color" in display:
        text("display_information.background_color", display["background_color"], 4, 7, _COLOR)

    features = keys("features", top.get("features", {}), FEATURE_KEYS)
    for name, value in keys("features.app_home", features.get("app_home", {}),
                            APP_HOME_KEYS).items():  # fmt: skip
        boolean(f"features.app_home.{name}", value)
    if "bot_user" in features:
        bot = keys("features.bot_user", features["bot_user"], BOT_USER_KEYS, ("display_name",))
        text("features.bot_user.display_name", bot.get("display_name"), 1, 80, _BOT_DISPLAY_NAME)
        if "always_online" in bot:
            boolean("features.bot_user.always_online", bot["always_online"])
    commands = features.get("slash_commands", [])
    if not isinstance(commands, list) or not 1 <= len(commands) <= 50:
        problems.append("features.slash_commands: expected 1..50 commands")
        commands = []
    for index, raw in enumerate(commands):
        where = f"features.slash_commands[{index}]"
        command = keys(where, raw, SLASH_KEYS, ("command", "description"))
        text(f"{where}.command", command.get("command"), 2, 32, re.compile(r"^/[a-z0-9_-]+$"))
        text(f"{where}.description", command.get("description"), 1, 2000)
        if "usage_hint" in command:
            text(f"{where}.usage_hint", command["usage_hint"], 1, 1000)
        if "url" in command:
            text(f"{where}.url", command["url"], 1, 3000, _URL)
        if "should_escape" in command:
            boolean(f"{where}.should_escape", command["should_escape"])

    oauth = keys("oauth_config", top.get("oauth_config", {}), OAUTH_KEYS)
    scopes = keys("oauth_config.scopes", oauth.get("scopes", {}), SCOPE_KEYS)
    for kind in ("bot", "bot_optional"):
        for scope in string_list(f"oauth_config.scopes.{kind}", scopes.get(kind, []), 255, 50):
            if scope not in VALID_BOT_SCOPES:
                problems.append(f"oauth_config.scopes.{kind}: {scope!r} is not a bot scope")

    settings = keys("settings", top.get("settings", {}), SETTINGS_KEYS)
    for name in SETTINGS_BOOLEANS:
        if name in settings:
            boolean(f"settings.{name}", settings[name])
    events = keys(
        "settings.event_subscriptions", settings.get("event_subscriptions", {}), EVENT_KEYS
    )
    if "request_url" in events:
        text("settings.event_subscriptions.request_url", events["request_url"], 1, 3500, _URL)
    granted = set(scopes.get("bot", []))
    bot_events = string_list(
        "settings.event_subscriptions.bot_events", events.get("bot_events", []), 100, 50
    )
    for event in bot_events:
        if event not in BOT_EVENT_SCOPES:
            problems.append(f"settings.event_subscriptions.bot_events: unknown event {event!r}")
        elif BOT_EVENT_SCOPES[event] and not granted & set(BOT_EVENT_SCOPES[event]):
            needed = " or ".join(BOT_EVENT_SCOPES[event])
            problems.append(f"bot event {event} needs the {needed} scope")
    interactivity = keys(
        "settings.interactivity",
        settings.get("interactivity", {"is_enabled": False}),
        INTERACTIVITY_KEYS,
        ("is_enabled",),
    )
    if "is_enabled" in interactivity:
        boolean("settings.interactivity.is_enabled", interactivity["is_enabled"])
    if "request_url" in interactivity:
        text("settings.interactivity.request_url", interactivity["request_url"], 1, 3500, _URL)
    return problems


def request_urls(manifest: dict[str, Any]) -> list[str]:
    settings = manifest.get("settings", {})
    urls = [c.get("url") for c in manifest["features"]["slash_commands"]]
    urls.append(settings.get("event_subscriptions", {}).get("request_url"))
    urls.append(settings.get("interactivity", {}).get("request_url"))
    return [url for url in urls if url is not None]


# -- the manifests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_follows_the_schema(path: Path) -> None:
    assert schema_problems(load(path)) == []


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_declares_the_celery_command_with_a_usage_hint(path: Path) -> None:
    manifest = load(path)
    (command,) = manifest["features"]["slash_commands"]
    assert command["command"] == "/celery"
    assert "revoke" in command["usage_hint"] and "stuck" in command["usage_hint"]
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert "app_home_opened" in manifest["settings"]["event_subscriptions"]["bot_events"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_subscribes_to_the_group_events_the_app_listens_to(path: Path) -> None:
    # Without them a removed operator keeps their rights until the group cache expires.
    bot_events = load(path)["settings"]["event_subscriptions"]["bot_events"]
    assert set(GROUP_EVENTS) == {"subteam_members_changed", "subteam_updated"}
    assert set(GROUP_EVENTS) <= set(bot_events)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_scopes_are_exactly_what_the_bot_needs(path: Path) -> None:
    # The same table drives `celery-chatops check`'s scope check: one list, no drift.
    bot_scopes = load(path)["oauth_config"]["scopes"]["bot"]
    assert bot_scopes == list(REQUIRED_BOT_SCOPES)
    assert set(ESSENTIAL_SCOPES) <= set(bot_scopes)


def test_http_manifest_sends_everything_to_slack_events_over_https() -> None:
    manifest = load(HTTP_MANIFEST)
    assert manifest["settings"]["socket_mode_enabled"] is False
    urls = request_urls(manifest)
    assert len(urls) == 3, "the command, events and interactivity each need the request URL"
    assert len(set(urls)) == 1, "one Bolt endpoint serves all three"
    parts = urlsplit(urls[0])
    assert parts.scheme == "https" and parts.netloc
    assert parts.path == EVENTS_PATH
    assert not parts.query and not parts.fragment


def test_socket_mode_manifest_has_no_request_urls() -> None:
    manifest = load(SOCKET_MANIFEST)
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert request_urls(manifest) == []
    assert "redirect_urls" not in manifest.get("oauth_config", {})


def test_both_manifests_describe_the_same_app_but_for_the_urls() -> None:
    def without_urls(manifest: dict[str, Any]) -> dict[str, Any]:
        for command in manifest["features"]["slash_commands"]:
            command.pop("url", None)
        settings = manifest["settings"]
        settings["event_subscriptions"].pop("request_url", None)
        settings["interactivity"].pop("request_url", None)
        settings.pop("socket_mode_enabled")
        return manifest

    assert without_urls(load(HTTP_MANIFEST)) == without_urls(load(SOCKET_MANIFEST))


# -- the validator itself catches what Slack would reject -----------------------------------------
def _broken(change: Callable[[dict[str, Any]], None]) -> list[str]:
    manifest = load(HTTP_MANIFEST)
    change(manifest)
    return schema_problems(manifest)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m["display_information"].update(name="x" * 36), "name: length 36"),
        (lambda m: m["display_information"].update(description="d" * 141), "description"),
        (lambda m: m["display_information"].update(long_description="short"), "long_description"),
        (lambda m: m["_metadata"].update(major_version=3), "major_version"),
        (lambda m: m["features"]["slash_commands"][0].update(command="celery"), "command"),
        (lambda m: m["features"]["slash_commands"][0].update(command="/" + "c" * 32), "command"),
        (lambda m: m["features"]["slash_commands"][0].update(usage_hint="u" * 1001), "usage_hint"),
        (lambda m: m["features"]["slash_commands"][0].update(url="ftp://x/slack/events"), "url"),
        (lambda m: m["oauth_config"]["scopes"]["bot"].append("chat:writes"), "'chat:writes'"),
        (lambda m: m["oauth_config"]["scopes"]["bot"].append("usergroup:read"), "usergroup:read"),
        (
            lambda m: m["settings"]["event_subscriptions"]["bot_events"].append("app_mention"),
            "needs the app_mentions:read scope",
        ),
        (
            lambda m: m["settings"]["event_subscriptions"]["bot_events"].append("app_home_open"),
            "unknown event",
        ),
        (lambda m: m["settings"].update(socket_mode=True), "settings.socket_mode: unknown key"),
        (lambda m: m.pop("display_information"), "display_information: required"),
    ],
)
def test_schema_check_rejects(change: Callable[[dict[str, Any]], None], expected: str) -> None:
    problems = _broken(change)
    assert any(expected in problem for problem in problems), problems
