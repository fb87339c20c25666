"""Settings: read once from the environment and an optional config file, validated up front.

Every setting of SPEC.md's configuration table is a field here. A config file (``--config FILE``
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


def _broker_url(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        return ""
    scheme = urlsplit(value).scheme
    if scheme not in {"redis", "rediss", "amqp", "amqps", "pyamqp"}:
        raise ConfigError(
            f"{name}: unsupported scheme {scheme + '://' if scheme else '(none)'};"
            " use redis://, rediss:// or amqp://"
        )
    return value


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


@dataclass(frozen=True, repr=False)
class Settings:
    """All settings; field metadata ``env`` names the variable of SPEC.md."""

    broker_url: str = field(default="", metadata={"env": "CELERY_BROKER_URL", "parse": _broker_url})
    slack_bot_token: str = field(
        default="", repr=False, metadata={"env": "SLACK_BOT_TOKEN", "parse": _token("xoxb-")}
    )
    slack_signing_secret: str = field(
        default="", repr=False, metadata={"env": "SLACK_SIGNING_SECRET", "parse": _str}
    )
    slack_app_token: str = field(
        default="", repr=False, metadata={"env": "SLACK_APP_TOKEN", "parse": _token("xapp-")}
    )
    slack_api_url: str = field(
        default="https://slack.com/api/", metadata={"env": "SLACK_API_URL", "parse": _api_url}
    )
    host: str = field(default="0.0.0.0", metadata={"env": "CHATOPS_HOST", "parse": _str})
    port: int = field(
        default=3000, metadata={"env": "CHATOPS_PORT", "parse": _int_parser(0, 65535)}
    )
    max_tasks: int = field(
        default=10000, metadata={"env": "CHATOPS_MAX_TASKS", "parse": _int_parser(1)}
    )
    max_workers: int = field(
        default=5000, metadata={"env": "CHATOPS_MAX_WORKERS", "parse": _int_parser(1)}
    )
    state_url: str = field(
        default="memory://", metadata={"env": "CHATOPS_STATE_URL", "parse": _state_url}
    )
    snapshot_path: str = field(
        default="", metadata={"env": "CHATOPS_SNAPSHOT_PATH", "parse": _str}
    )
    queues: tuple[str, ...] = field(default=(), metadata={"env": "CHATOPS_QUEUES", "parse": _csv})
    alert_channel: str = field(
        default="", metadata={"env": "CHATOPS_ALERT_CHANNEL", "parse": _channel_id}
    )
    audit_channel: str = field(
        default="", metadata={"env": "CHATOPS_AUDIT_CHANNEL", "parse": _channel_id}
    )
    check_interval: float = field(
        default=30.0, metadata={"env": "CHATOPS_CHECK_INTERVAL", "parse": _float_parser(0.1)}
    )
    backlog_threshold: int = field(
        default=100, metadata={"env": "CHATOPS_BACKLOG_THRESHOLD", "parse": _int_parser(1)}
    )
    failure_spike_threshold: int = field(
        default=10, metadata={"env": "CHATOPS_FAILURE_SPIKE_THRESHOLD", "parse": _int_parser(1)}
    )
    failure_window: float = field(
        default=300.0, metadata={"env": "CHATOPS_FAILURE_WINDOW", "parse": _float_parser(1)}
    )
    stuck_after: float = field(
        default=600.0, metadata={"env": "CHATOPS_STUCK_AFTER", "parse": _float_parser(1)}
    )
    operators: tuple[str, ...] = field(
        default=(), metadata={"env": "CHATOPS_OPERATORS", "parse": _slack_ids}
    )
    # None means "the operators" (SPEC default); an explicit empty value means nobody.
    approvers: tuple[str, ...] | None = field(
        default=None, metadata={"env": "CHATOPS_APPROVERS", "parse": _slack_ids}
    )
    self_approval: bool = field(
        default=False, metadata={"env": "CHATOPS_SELF_APPROVAL", "parse": _parse_bool}
    )
    approval_ttl: float = field(
        default=900.0, metadata={"env": "CHATOPS_APPROVAL_TTL", "parse": _float_parser(1)}
    )
    redact_keys: tuple[str, ...] = field(
        default=tuple(DEFAULT_REDACT_KEYS.split(",")),
        metadata={"env": "CHATOPS_REDACT_KEYS", "parse": _csv},
    )
    # Settings beyond SPEC.md's table (additions are allowed by the contract).
    silence_after: float = field(
        default=120.0, metadata={"env": "CHATOPS_SILENCE_AFTER", "parse": _float_parser(1)}
    )
    alert_cooldown: float = field(
        default=300.0, metadata={"env": "CHATOPS_ALERT_COOLDOWN", "parse": _float_parser(0)}
    )
    approval_required: tuple[str, ...] = field(
        default=("revoke", "shutdown"),
        metadata={"env": "CHATOPS_APPROVAL_REQUIRED", "parse": _csv},
    )
    control_timeout: float = field(
        default=2.0, metadata={"env": "CHATOPS_CONTROL_TIMEOUT", "parse": _float_parser(0.1)}
    )
    enable_events_interval: float = field(
        default=30.0,
        metadata={"env": "CHATOPS_ENABLE_EVENTS_INTERVAL", "parse": _float_parser(0)},
    )
    # Who the person at ``celery-chatops console`` is, for operator checks: a Slack user ID
    # listed in CHATOPS_OPERATORS lets the console request (and approve) control actions.
    console_user: str = field(
        default="", metadata={"env": "CHATOPS_CONSOLE_USER", "parse": _console_user}
    )
    state_prefix: str = field(
        default="chatops", metadata={"env": "CHATOPS_STATE_PREFIX", "parse": _str}
    )
    log_level: str = field(
        default="INFO", metadata={"env": "CHATOPS_LOG_LEVEL", "parse": _log_level}
    )
    # The REST API's credentials: (Slack user ID, token) pairs. Empty: the API is off.
    api_tokens: tuple[tuple[str, str], ...] = field(
        default=(), repr=False, metadata={"env": "CHATOPS_API_TOKENS", "parse": _api_tokens}
    )

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

    def require_for_run(self) -> None:
        self.require("broker_url", "slack_bot_token")
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
            elif isinstance(value, tuple):
                shown[env] = ",".join(value)
            else:
                shown[env] = "" if value is None else str(value)
        return shown


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
        if key not in known:
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
        if env_name in raw:
            values[f.name] = f.metadata["parse"](env_name, raw[env_name])
    values.update(overrides or {})
    settings = Settings(**values)
    if settings.snapshot_path and not settings.state_url.startswith("memory://"):
        raise ConfigError("CHATOPS_SNAPSHOT_PATH: only used with CHATOPS_STATE_URL=memory://")
    return settings
