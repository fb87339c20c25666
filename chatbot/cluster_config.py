"""Several Celery clusters: which brokers, which channel defaults to which, per-cluster settings.

``CHATOPS_CLUSTERS=prod=redis://...,billing=amqp://...`` names one broker per cluster;
``CELERY_BROKER_URL`` alone stays one cluster named ``default``, so an existing deployment
changes nothing. ``CHATOPS_CHANNEL_CLUSTERS=C0123=prod`` makes ``prod`` the default cluster of
that channel. A cluster may override the settings a user expects to differ between fleets
(queues, alert channel and thresholds, retention) with ``CHATOPS_CLUSTER_<NAME>_<SETTING>``
keys, in the environment or the config file: ``CHATOPS_CLUSTER_PROD_BACKLOG_THRESHOLD=500``.
``<NAME>`` is the cluster name upper-cased with ``-`` as ``_``; ``<SETTING>`` is the variable's
name without ``CHATOPS_``.

Each cluster's settings are a whole :class:`~chatbot.config.Settings` (the shared one with the
cluster's broker and overrides), so every part built from settings works for one cluster as it
did for the only one. Everything is validated up front; every error names the cluster.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from chatbot.config import ConfigError, Settings, broker_url_error

__all__ = [
    "CLUSTER_OVERRIDE_PREFIX",
    "DEFAULT_CLUSTER",
    "OVERRIDABLE",
    "ClusterConfig",
    "Clusters",
    "address_value",
    "env_name",
    "load_clusters",
    "parse_channel_clusters",
    "parse_cluster_list",
    "split_value",
]

DEFAULT_CLUSTER = "default"
CLUSTER_OVERRIDE_PREFIX = "CHATOPS_CLUSTER_"
# Words an address may use for "every cluster": no cluster may be named so.
RESERVED_NAMES = frozenset({"all"})
MAX_NAME_LENGTH = 32
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")

# The settings one cluster may set for itself (field names of Settings). Identity, Slack,
# approvals and the state store are the bot's, not a fleet's: they stay shared.
OVERRIDABLE = (
    "queues",
    "alert_channel",
    "backlog_threshold",
    "failure_spike_threshold",
    "failure_window",
    "stuck_after",
    "silence_after",
    "alert_cooldown",
    "max_tasks",
    "max_workers",
    "control_timeout",
)


def _suffix(field_name: str) -> str:
    """``backlog_threshold`` -> ``BACKLOG_THRESHOLD`` (the variable without ``CHATOPS_``)."""
    env = str(_FIELDS[field_name].metadata["env"])
    return env.removeprefix("CHATOPS_")


_FIELDS = {f.name: f for f in fields(Settings)}
_BY_SUFFIX = {_suffix(name): name for name in OVERRIDABLE}


# An interactive element's value that addresses a cluster: "@NAME/VALUE" (alert buttons, the
# buttons and menus of a command's answer when the bot has several clusters).
_ADDRESSED_VALUE = re.compile(r"^@([a-z0-9][a-z0-9_-]{0,31})/(.+)$", re.DOTALL)


def address_value(cluster: str, value: str) -> str:
    """``value`` of a button or menu option, addressed to ``cluster``."""
    return f"@{cluster}/{value}"


def split_value(value: str) -> tuple[str | None, str]:
    """``"@beta/x"`` -> ``("beta", "x")``; a value without an address -> ``(None, value)``."""
    found = _ADDRESSED_VALUE.match(value)
    if found is None:
        return None, value
    return found.group(1), found.group(2)


def env_name(cluster: str) -> str:
    """How a cluster's name appears in its ``CHATOPS_CLUSTER_<NAME>_...`` keys."""
    return cluster.upper().replace("-", "_")


def _check_name(setting: str, name: str) -> None:
    if not name:
        raise ConfigError(f"{setting}: a cluster has an empty name")
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise ConfigError(
            f"{setting}: cluster {name[:40]!r}: a name is lower-case letters, digits, - and _"
            f" (at most {MAX_NAME_LENGTH}, starting with a letter or digit)"
        )
    if name in RESERVED_NAMES:
        raise ConfigError(f"{setting}: cluster {name!r}: the name is reserved (@{name})")


def parse_cluster_list(setting: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``prod=redis://...,billing=amqp://...`` -> ``(("prod", url), ("billing", url))``."""
    pairs: list[tuple[str, str]] = []
    by_env: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip()
        if not sep:
            # No "=": the item may be a bare URL; never echo it (it may hold a password).
            raise ConfigError(f"{setting}: expected NAME=BROKER_URL pairs separated by commas")
        _check_name(setting, name)
        if not url:
            raise ConfigError(f"{setting}: cluster {name!r}: no broker URL")
        problem = broker_url_error(url)
        if problem:
            raise ConfigError(f"{setting}: cluster {name!r}: {problem}")
        clash = by_env.get(env_name(name))
        if clash == name:
            raise ConfigError(f"{setting}: cluster {name!r} is listed twice")
        if clash is not None:
            raise ConfigError(
                f"{setting}: clusters {clash!r} and {name!r} both have the keys"
                f" {CLUSTER_OVERRIDE_PREFIX}{env_name(name)}_...; rename one"
            )
        by_env[env_name(name)] = name
        pairs.append((name, url))
    return tuple(pairs)


def parse_channel_clusters(setting: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``C0123=prod,C0456=billing`` -> ``(("C0123", "prod"), ...)`` (names checked later)."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        channel, sep, name = item.partition("=")
        channel, name = channel.strip(), name.strip()
        if not sep or not channel or not name:
            raise ConfigError(f"{setting}: expected CHANNEL_ID=CLUSTER pairs, got {item[:60]!r}")
        if not _CHANNEL_ID.match(channel):
            raise ConfigError(
                f"{setting}: {channel[:40]!r} is not a Slack channel ID (C..., G... or D...)"
            )
        if channel in seen:
            raise ConfigError(f"{setting}: channel {channel} is listed twice")
        seen.add(channel)
        pairs.append((channel, name))
    return tuple(pairs)


@dataclass(frozen=True)
class ClusterConfig:
    """One Celery cluster: its name, its settings (broker and overrides applied) and the key
    prefix of its part of the state store."""

    name: str
    settings: Settings

    @property
    def broker_url(self) -> str:
        return self.settings.broker_url

    @property
    def state_prefix(self) -> str:
        return self.settings.state_prefix


@dataclass(frozen=True)
class Clusters:
    """Every configured cluster, in configuration order, and the channels' defaults."""

    clusters: tuple[ClusterConfig, ...]
    channel_defaults: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )

    def __post_init__(self) -> None:
        if not self.clusters:
            raise ValueError("at least one cluster")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clusters)

    @property
    def several(self) -> bool:
        return len(self.clusters) > 1

    def get(self, name: str) -> ClusterConfig | None:
        return next((c for c in self.clusters if c.name == name), None)

    def default_for(self, channel_id: str) -> str | None:
        """The cluster a channel addresses when none is named: its binding, or the only one."""
        if not self.several:
            return self.clusters[0].name
        return self.channel_defaults.get(channel_id)

    def __iter__(self) -> Iterator[ClusterConfig]:
        return iter(self.clusters)

    def __len__(self) -> int:
        return len(self.clusters)


def _cluster_prefix(base: str, name: str) -> str:
    # The cluster named "default" keeps the plain prefix: a deployment that had one broker
    # finds its state (tasks, approvals, the lease) where it left it.
    return base if name == DEFAULT_CLUSTER else f"{base}:cluster:{name}"


def _snapshot_path(path: str, name: str) -> str:
    return path if not path or name == DEFAULT_CLUSTER else f"{path}.{name}"


def _overrides(settings: Settings, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Typed per-cluster values from the ``CHATOPS_CLUSTER_<NAME>_<SETTING>`` keys."""
    by_env = {env_name(n): n for n in names}
    found: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, raw in settings.cluster_overrides:
        rest = key.removeprefix(CLUSTER_OVERRIDE_PREFIX)
        matches = [
            (by_env[rest[: -len(suffix) - 1]], field_name)
            for suffix, field_name in _BY_SUFFIX.items()
            if rest.endswith("_" + suffix) and rest[: -len(suffix) - 1] in by_env
        ]
        if not matches:
            choices = ", ".join(sorted(_BY_SUFFIX))
            known = ", ".join(names)
            raise ConfigError(
                f"{key}: not a cluster setting (clusters: {known}; settings: {choices})"
            )
        if len(matches) > 1:
            raise ConfigError(f"{key}: could mean clusters {matches[0][0]!r} or {matches[1][0]!r}")
        cluster, field_name = matches[0]
        parse = _FIELDS[field_name].metadata["parse"]
        try:
            found[cluster][field_name] = parse(key, raw)
        except ConfigError as exc:
            raise ConfigError(f"cluster {cluster!r}: {exc}") from None
    return found


def load_clusters(settings: Settings) -> Clusters:
    """The clusters of ``settings``; raises :class:`ConfigError` naming the cluster."""
    listed = parse_cluster_list("CHATOPS_CLUSTERS", settings.clusters)
    if listed and settings.broker_url and settings.broker_url not in {u for _, u in listed}:
        raise ConfigError(
            "CHATOPS_CLUSTERS: set together with CELERY_BROKER_URL, which is none of its"
            " clusters; list that broker in CHATOPS_CLUSTERS (NAME=URL) and unset it"
        )
    pairs = listed or ((DEFAULT_CLUSTER, settings.broker_url),)
    names = tuple(name for name, _ in pairs)
    overrides = _overrides(settings, names)
    clusters = tuple(
        ClusterConfig(
            name,
            dataclasses.replace(
                settings,
                broker_url=url,
                state_prefix=_cluster_prefix(settings.state_prefix or "chatops", name),
                snapshot_path=_snapshot_path(settings.snapshot_path, name),
                **overrides[name],
            ),
        )
        for name, url in pairs
    )
    defaults: dict[str, str] = {}
    for channel, name in parse_channel_clusters(
        "CHATOPS_CHANNEL_CLUSTERS", settings.channel_clusters
    ):
        if name not in names:
            raise ConfigError(
                f"CHATOPS_CHANNEL_CLUSTERS: channel {channel}: unknown cluster {name!r}"
                f" (clusters: {', '.join(names)})"
            )
        defaults[channel] = name
    return Clusters(clusters, MappingProxyType(defaults))
