"""Settings: read once from the environment and an optional config file, validated up front.

Every setting of the README's configuration tables is a field here. A config file (``--config FILE``
or ``CHATOPS_CONFIG``) holds the same keys as ``KEY=VALUE`` lines; the environment wins over the
file. A missing or malformed setting raises :class:`ConfigError` whose message is one line naming
the setting; secrets are never part of that message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_REDACT_KEYS = (
    "password,passwd,secret,token,api_key,apikey,authorization,cookie,credentials"
)

SECRET_KEYS = frozenset(
    {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "CHATOPS_API_TOKENS"}
)

# An API token is a password a runbook holds: short ones can be guessed.
MIN_API_TOKEN_LENGTH = 16


class ConfigError(ValueError):
    """A setting is missing or malformed. ``str(err)`` is one line that names the setting."""


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _int_parser(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and {maximum}" if maximum is not None else ""
            between = f"between {minimum}{upper}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{name}: must be {between}, got {value}")
        return value

    return parse


def _float_parser(minimum: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name}: must be >= {minimum:g}, got {value:g}")
        return value

    return parse


def _csv(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _str(name: str, raw: str) -> str:
    return raw.strip()


_SLACK_ID = re.compile(r"^[USW][A-Z0-9]{2,}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")


def _slack_ids(name: str, raw: str) -> tuple[str, ...]:
    ids = _csv(name, raw)
    for item in ids:
        if not _SLACK_ID.match(item):
            raise ConfigError(
                f"{name}: {item!r} is not a Slack user ID (U...) or user-group ID (S...)"
            )
    return ids


def _console_user(name: str, raw: str) -> str:
    value = raw.strip()
    if value and not re.match(r"^[UW][A-Z0-9]{2,}$", value):
        raise ConfigError(f"{name}: {value!r} is not a Slack user ID (U...)")
    return value


def _channel_id(name: str, raw: str) -> str:
    value = raw.strip()
    if value and not _CHANNEL_ID.match(value):
        raise ConfigError(f"{name}: {value!r} is not a Slack channel ID (C..., G... or D...)")
    return value


def broker_url_error(url: str) -> str | None:
    """Why ``url`` is not a broker URL the bot can read, or None (never echoes the URL)."""
    scheme = urlsplit(url).scheme
    if scheme not in {"redis", "rediss", "amqp", "amqps", "pyamqp"}:
        return (
            f"unsupported scheme {scheme + '://' if scheme else '(none)'};"
            " use redis://, rediss:// or amqp://"
        )
    return None


def _broker_url(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        return ""
    problem = broker_url_error(value)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    return value


# Per-cluster keys (CHATOPS_CLUSTER_<NAME>_<SETTING>) are collected as they are and checked,
# with CHATOPS_CLUSTERS and CHATOPS_CHANNEL_CLUSTERS, by chatbot/cluster_config.py.
CLUSTER_KEY_PREFIX = "CHATOPS_CLUSTER_"


def _is_cluster_key(key: str) -> bool:
    return key.startswith(CLUSTER_KEY_PREFIX) and len(key) > len(CLUSTER_KEY_PREFIX)


def _redact_cluster_list(raw: str) -> str:
    """``a=redis://:pw@h,b=...`` with every password removed, for describe()."""
    shown = []
    for item in raw.split(","):
        name, sep, url = item.strip().partition("=")
        shown.append(f"{name}={redact_url(url.strip())}" if sep else "(malformed)")
    return ",".join(shown) if raw.strip() else ""


def _state_url(name: str, raw: str) -> str:
    value = raw.strip() or "memory://"
    scheme = urlsplit(value).scheme
    if scheme not in {"memory", "redis", "rediss"}:
        raise ConfigError(f"{name}: expected memory://, redis://... or rediss://..., got {scheme}://")
    return value


def _api_url(name: str, raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"{name}: expected an http(s) URL such as https://slack.com/api/")
    return value if value.endswith("/") else value + "/"


def _token(prefix: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip()
        if value and not value.startswith(prefix):
            # The value is a secret: say what is wrong without echoing it.
            raise ConfigError(f"{name}: expected a token starting with {prefix!r}")
        return value

    return parse


def _api_tokens(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``U123=TOKEN,U456=TOKEN2``: the Slack user each REST API token acts as.

    Errors name the identity or the position, never the token.
    """
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for position, item in enumerate(raw.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        identity, sep, token = (part.strip() for part in item.partition("="))
        if not sep or not identity:
            raise ConfigError(f"{name}: entry {position} is not IDENTITY=TOKEN")
        if not re.match(r"^[UW][A-Z0-9]{2,}$", identity):
            raise ConfigError(f"{name}: {identity!r} is not a Slack user ID (U...)")
        if len(token) < MIN_API_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise ConfigError(
                f"{name}: the token of {identity} must be at least {MIN_API_TOKEN_LENGTH}"
                " characters without spaces"
            )
        if token in seen:
            # One token for two identities: which one acted could not be told apart.
            raise ConfigError(f"{name}: the token of {identity} is also another entry's token")
        seen.add(token)
        pairs.append((identity, token))
    return tuple(pairs)


def _log_level(name: str, raw: str) -> str:
    value = raw.strip().upper() or "INFO"
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"{name}: expected DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return value


def _event_reader(name: str, raw: str) -> str:
    value = raw.strip().lower() or "process"
    if value not in {"process", "process-raw", "thread"}:
        raise ConfigError(f"{name}: expected process, process-raw or thread, got {raw!r}")
    return value


# What a setting is about; ``--help`` of each subcommand lists the topics it reads.
BROKER = "broker"
SLACK = "slack"
STATE = "state"
TROUBLE = "what counts as trouble"
ALERTS = "alerts"
CONTROL = "control actions"
CONSOLE = "console"
OUTPUT = "output"
API = "REST API"
TOPICS = (BROKER, SLACK, STATE, TROUBLE, ALERTS, CONTROL, API, CONSOLE, OUTPUT)


def _meta(env: str, parse: Callable[[str, str], Any], topic: str, help: str) -> dict[str, Any]:
    """A field's row of the setting table: its variable, parser, topic and one-line help."""
    return {"env": env, "parse": parse, "topic": topic, "help": help}


@dataclass(frozen=True, repr=False)
class Settings:
    """All settings: the setting table. Field metadata names the variable (``env``, as in the
    README), its parser, its topic and the one line ``--help`` shows for it."""

    broker_url: str = field(
        default="",
        metadata=_meta(
            "CELERY_BROKER_URL", _broker_url, BROKER,
            "the fleet's broker: redis://, rediss:// or amqp:// (required by run)",
        ),
    )  # fmt: skip
    slack_bot_token: str = field(
        default="",
        repr=False,
        metadata=_meta(
            "SLACK_BOT_TOKEN", _token("xoxb-"), SLACK,
            "the Bot User OAuth Token, xoxb-... (required by run)",
        ),
    )  # fmt: skip
    slack_signing_secret: str = field(
        default="",
        repr=False,
        metadata=_meta(
            "SLACK_SIGNING_SECRET", _str, SLACK,
            "the app's signing secret (required in HTTP mode)",
        ),
    )  # fmt: skip
    slack_app_token: str = field(
        default="",
        repr=False,
        metadata=_meta(
            "SLACK_APP_TOKEN", _token("xapp-"), SLACK,
            "an app-level token, xapp-...: switches to Socket Mode",
        ),
    )  # fmt: skip
    slack_api_url: str = field(
        default="https://slack.com/api/",
        metadata=_meta(
            "SLACK_API_URL", _api_url, SLACK,
            "the Slack Web API base URL (GovSlack, a proxy, tests)",
        ),
    )  # fmt: skip
    host: str = field(
        default="0.0.0.0",
        metadata=_meta("CHATOPS_HOST", _str, SLACK, "address of the HTTP listener"),
    )
    port: int = field(
        default=3000,
        metadata=_meta(
            "CHATOPS_PORT", _int_parser(0, 65535), SLACK,
            "port of the HTTP listener (Slack events, /healthz, /metrics)",
        ),
    )  # fmt: skip
    max_tasks: int = field(
        default=10000,
        metadata=_meta(
            "CHATOPS_MAX_TASKS", _int_parser(1), STATE,
            "task records kept (finished successes are evicted first, running tasks and failures"
            " last)",
        ),
    )  # fmt: skip
    max_workers: int = field(
        default=5000,
        metadata=_meta("CHATOPS_MAX_WORKERS", _int_parser(1), STATE, "worker records kept"),
    )
    state_url: str = field(
        default="memory://",
        metadata=_meta(
            "CHATOPS_STATE_URL", _state_url, STATE,
            "memory://, or redis://... to keep state, approvals and alerts across restarts"
            " and share them between replicas",
        ),
    )  # fmt: skip
    snapshot_path: str = field(
        default="",
        metadata=_meta(
            "CHATOPS_SNAPSHOT_PATH", _str, STATE,
            "with memory://: a snapshot file that carries the state across restarts",
        ),
    )  # fmt: skip
    queues: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "CHATOPS_QUEUES", _csv, BROKER,
            "extra queue names to watch, comma separated (the consumed ones are found)",
        ),
    )  # fmt: skip
    alert_channel: str = field(
        default="",
        metadata=_meta(
            "CHATOPS_ALERT_CHANNEL", _channel_id, ALERTS,
            "channel ID (C...) for alerts; unset: no alerts",
        ),
    )  # fmt: skip
    audit_channel: str = field(
        default="",
        metadata=_meta(
            "CHATOPS_AUDIT_CHANNEL", _channel_id, CONTROL,
            "channel ID that receives every control request and its outcome",
        ),
    )  # fmt: skip
    check_interval: float = field(
        default=30.0,
        metadata=_meta(
            "CHATOPS_CHECK_INTERVAL", _float_parser(0.1), ALERTS,
            "seconds between alert checks",
        ),
    )  # fmt: skip
    backlog_threshold: int = field(
        default=100,
        metadata=_meta(
            "CHATOPS_BACKLOG_THRESHOLD", _int_parser(1), TROUBLE,
            "queue length that counts as a backlog",
        ),
    )  # fmt: skip
    failure_spike_threshold: int = field(
        default=10,
        metadata=_meta(
            "CHATOPS_FAILURE_SPIKE_THRESHOLD", _int_parser(1), TROUBLE,
            "failures of one task name within the failure window that count as a spike",
        ),
    )  # fmt: skip
    failure_window: float = field(
        default=300.0,
        metadata=_meta(
            "CHATOPS_FAILURE_WINDOW", _float_parser(1), TROUBLE,
            "seconds of failures counted for a spike",
        ),
    )  # fmt: skip
    stuck_after: float = field(
        default=600.0,
        metadata=_meta(
            "CHATOPS_STUCK_AFTER", _float_parser(1), TROUBLE,
            "seconds an active task may run before it counts as stuck",
        ),
    )  # fmt: skip
    operators: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "CHATOPS_OPERATORS", _slack_ids, CONTROL,
            "Slack user IDs (U...) or user-group IDs (S...) that may request control"
            " actions; empty: nobody",
        ),
    )  # fmt: skip
    # None means "the operators" (the documented default); an explicit empty value means nobody.
    approvers: tuple[str, ...] | None = field(
        default=None,
        metadata=_meta(
            "CHATOPS_APPROVERS", _slack_ids, CONTROL,
            "who may approve a control action; unset: the operators",
        ),
    )  # fmt: skip
    self_approval: bool = field(
        default=False,
        metadata=_meta(
            "CHATOPS_SELF_APPROVAL", _parse_bool, CONTROL,
            "may a requester approve their own request",
        ),
    )  # fmt: skip
    approval_ttl: float = field(
        default=900.0,
        metadata=_meta(
            "CHATOPS_APPROVAL_TTL", _float_parser(1), CONTROL,
            "seconds before an unanswered request expires",
        ),
    )  # fmt: skip
    redact_keys: tuple[str, ...] = field(
        default=tuple(DEFAULT_REDACT_KEYS.split(",")),
        metadata=_meta(
            "CHATOPS_REDACT_KEYS", _csv, OUTPUT,
            "keyword-argument names whose values are never shown (matched case-insensitively as"
            " substrings)",
        ),
    )  # fmt: skip
    # The README's additional settings (not part of the stable contract).
    silence_after: float = field(
        default=120.0,
        metadata=_meta(
            "CHATOPS_SILENCE_AFTER", _float_parser(1), TROUBLE,
            "seconds without any event, while workers were known, before the event stream"
            " counts as silent",
        ),
    )  # fmt: skip
    alert_cooldown: float = field(
        default=300.0,
        metadata=_meta(
            "CHATOPS_ALERT_COOLDOWN", _float_parser(0), ALERTS,
            "seconds after an alert resolved in which its return reopens the same thread",
        ),
    )  # fmt: skip
    approval_required: tuple[str, ...] = field(
        default=("revoke", "shutdown", "retry"),
        metadata=_meta(
            "CHATOPS_APPROVAL_REQUIRED", _csv, CONTROL,
            "control commands that need an approval (the others run at once for operators)",
        ),
    )  # fmt: skip
    control_timeout: float = field(
        default=2.0,
        metadata=_meta(
            "CHATOPS_CONTROL_TIMEOUT", _float_parser(0.1), BROKER,
            "seconds to wait for workers' replies to inspect and control commands",
        ),
    )  # fmt: skip
    enable_events_interval: float = field(
        default=30.0,
        metadata=_meta(
            "CHATOPS_ENABLE_EVENTS_INTERVAL", _float_parser(0), BROKER,
            "seconds between enable_events broadcasts (0: never), so workers started without"
            " -E send task events",
        ),
    )  # fmt: skip
    event_reader: str = field(
        default="process",
        metadata=_meta(
            "CHATOPS_EVENT_READER", _event_reader, BROKER,
            "who reads a Redis broker's event subscription: a child process that also decodes"
            " the events (process), which keeps draining it while this one is busy; the same"
            " handing raw messages over (process-raw); or a thread of this process (thread)",
        ),
    )  # fmt: skip
    # Who the person at ``celery-chatops console`` is, for operator checks: a Slack user ID
    # listed in CHATOPS_OPERATORS lets the console request (and approve) control actions.
    console_user: str = field(
        default="",
        metadata=_meta(
            "CHATOPS_CONSOLE_USER", _console_user, CONSOLE,
            "the Slack user ID (U...) the person at the console acts as",
        ),
    )  # fmt: skip
    state_prefix: str = field(
        default="chatops",
        metadata=_meta(
            "CHATOPS_STATE_PREFIX", _str, STATE,
            "key prefix in the Redis state store, so several bots can share one Redis",
        ),
    )  # fmt: skip
    log_level: str = field(
        default="INFO",
        metadata=_meta(
            "CHATOPS_LOG_LEVEL", _log_level, OUTPUT,
            "DEBUG, INFO, WARNING or ERROR",
        ),
    )  # fmt: skip
    # The REST API's credentials: (Slack user ID, token) pairs. Empty: the API is off.
    api_tokens: tuple[tuple[str, str], ...] = field(
        default=(),
        repr=False,
        metadata=_meta(
            "CHATOPS_API_TOKENS", _api_tokens, API,
            "IDENTITY=TOKEN pairs for the REST API (/api/*), IDENTITY a Slack user ID; unset: off",
        ),
    )  # fmt: skip
    # Several clusters (the README's "Several clusters"): kept as written here, parsed and
    # checked by chatbot/cluster_config.py when the settings are loaded.
    clusters: str = field(
        default="",
        metadata=_meta(
            "CHATOPS_CLUSTERS", _str, BROKER,
            "NAME=BROKER_URL pairs, one per Celery cluster; unset: CELERY_BROKER_URL is 'default'",
        ),
    )  # fmt: skip
    channel_clusters: str = field(
        default="",
        metadata=_meta(
            "CHATOPS_CHANNEL_CLUSTERS", _str, BROKER,
            "CHANNEL_ID=NAME pairs: the cluster a channel addresses when none is named",
        ),
    )  # fmt: skip
    # Every CHATOPS_CLUSTER_<NAME>_<SETTING> key, as (key, raw value) pairs: collected by
    # load_settings (no parser of its own), checked by chatbot/cluster_config.py.
    cluster_overrides: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata={
            **_meta(
                CLUSTER_KEY_PREFIX + "<NAME>_<KEY>", _str, BROKER,
                "one cluster's own KEY (QUEUES, ALERT_CHANNEL, BACKLOG_THRESHOLD...), see README",
            ),
            "parse": None,
        },
    )  # fmt: skip

    @property
    def effective_approvers(self) -> tuple[str, ...]:
        return self.operators if self.approvers is None else self.approvers

    @property
    def api_enabled(self) -> bool:
        return bool(self.api_tokens)

    @property
    def secret_values(self) -> tuple[str, ...]:
        """Every secret's value, for the log scrubber (tokens, signing secret)."""
        values = (self.slack_bot_token, self.slack_signing_secret, self.slack_app_token)
        return tuple(v for v in (*values, *(token for _, token in self.api_tokens)) if v)

    @property
    def socket_mode(self) -> bool:
        return bool(self.slack_app_token)

    def require(self, *names: str) -> None:
        """Raise ConfigError for the first of ``names`` (field names) that is empty."""
        by_name = {f.name: f for f in fields(self)}
        for name in names:
            if not getattr(self, name):
                env = by_name[name].metadata["env"]
                raise ConfigError(f"{env}: required but not set")

    def require_broker(self) -> None:
        """A broker to read: CELERY_BROKER_URL, or the clusters of CHATOPS_CLUSTERS."""
        if not self.clusters.strip():
            self.require("broker_url")

    def require_for_run(self) -> None:
        self.require_broker()
        self.require("slack_bot_token")
        if not self.socket_mode:
            self.require("slack_signing_secret")

    def __repr__(self) -> str:
        # A repr ends up in logs and tracebacks: only ever the masked view.
        shown = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"Settings({shown})"

    def describe(self) -> dict[str, str]:
        """Settings as shown to people: secrets masked, broker password removed."""
        shown: dict[str, str] = {}
        for f in fields(self):
            env = f.metadata["env"]
            value = getattr(self, f.name)
            if env in SECRET_KEYS:
                shown[env] = "(set)" if value else "(unset)"
            elif f.name in {"broker_url", "state_url"}:
                shown[env] = redact_url(value)
            elif f.name == "clusters":
                shown[env] = _redact_cluster_list(value)
            elif f.name == "cluster_overrides":
                shown[env] = ",".join(key for key, _ in value)
            elif isinstance(value, tuple):
                shown[env] = ",".join(value)
            else:
                shown[env] = "" if value is None else str(value)
        return shown


@dataclass(frozen=True)
class SettingDoc:
    """One row of the setting table as ``--help`` shows it."""

    env: str
    topic: str
    default: str
    help: str


def setting_table() -> list[SettingDoc]:
    """Every setting, in the order of :class:`Settings`, with its default as shown to people."""
    rows: list[SettingDoc] = []
    for f in fields(Settings):
        env = f.metadata["env"]
        value = f.default
        if f.name == "approvers":
            default = "the operators"
        elif value in ("", ()):
            default = "unset"
        elif isinstance(value, tuple):
            default = ", ".join(value)  # spaces let a long list wrap; the parser strips them
        elif isinstance(value, bool):
            default = str(value).lower()
        elif isinstance(value, float):
            default = f"{value:g}"
        else:
            default = str(value)
        rows.append(SettingDoc(env, f.metadata["topic"], default, f.metadata["help"]))
    return rows


def redact_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def read_config_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines; ``#`` starts a comment line; values may be quoted."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"CHATOPS_CONFIG: cannot read {file}: {exc.strerror}") from None
    values: dict[str, str] = {}
    known = {f.metadata["env"] for f in fields(Settings)}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip()
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"CHATOPS_CONFIG: {file}:{number}: expected KEY=VALUE")
        if key not in known and not _is_cluster_key(key):
            raise ConfigError(f"CHATOPS_CONFIG: {file}:{number}: unknown setting {key}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from a config file and the environment (the environment wins).

    ``overrides`` maps field names to already-typed values (used by ``demo`` and tests).
    """
    env = dict(os.environ if environ is None else environ)
    path = config_path or env.get("CHATOPS_CONFIG")
    raw: dict[str, str] = read_config_file(path) if path else {}
    raw.update({k: v for k, v in env.items() if k != "CHATOPS_CONFIG"})
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env_name = f.metadata["env"]
        if f.metadata["parse"] is not None and env_name in raw:
            values[f.name] = f.metadata["parse"](env_name, raw[env_name])
    values["cluster_overrides"] = tuple(
        sorted((k, v) for k, v in raw.items() if _is_cluster_key(k))
    )
    values.update(overrides or {})
    settings = Settings(**values)
    if settings.snapshot_path and not settings.state_url.startswith("memory://"):
        raise ConfigError("CHATOPS_SNAPSHOT_PATH: only used with CHATOPS_STATE_URL=memory://")
    # Imported here: chatbot.cluster_config builds on Settings (a module-level import would
    # be circular). Checking here means every way of loading settings checks the clusters.
    from chatbot.cluster_config import load_clusters

    load_clusters(settings)
    return settings
