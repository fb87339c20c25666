"""The `/celery` grammar: `<subcommand> [args] [--flags]`, shell-like quoting, typed values.

Everything here is pure: text in, values or a :class:`UsageError` (one readable line) out.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatbot.model import (
    FAILURE,
    PENDING,
    RECEIVED,
    REJECTED,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    TASK_STATES,
)

COMMAND_WORDS = ("/celery", "celery")
SHARE_FLAG = "--share"
MIN_ID_PREFIX = 8
MAX_LIMIT = 500

# Slack clients may turn typed quotes into typographic ones; shlex only knows ASCII quotes.
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'"})


class UsageError(ValueError):
    """Bad input. ``str(err)`` is one line meant for the person who typed the command."""

    def __init__(self, message: str, *, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


Converter = Callable[[str], Any]


@dataclass(frozen=True)
class Flag:
    """``--name VALUE`` (or ``--name=VALUE``); a flag without ``convert`` is a switch."""

    name: str
    help: str
    convert: Converter | None = None
    metavar: str = "VALUE"
    default: Any = None

    @property
    def is_switch(self) -> bool:
        return self.convert is None

    @property
    def usage(self) -> str:
        return f"--{self.name}" if self.is_switch else f"--{self.name} {self.metavar}"


@dataclass(frozen=True)
class Positional:
    name: str
    help: str
    metavar: str = ""
    required: bool = False
    variadic: bool = False  # takes every remaining argument (e.g. several ids)
    convert: Converter | None = None

    @property
    def usage(self) -> str:
        text = (self.metavar or self.name.upper()) + ("..." if self.variadic else "")
        return text if self.required else f"[{text}]"


@dataclass(frozen=True)
class ArgSpec:
    positionals: tuple[Positional, ...] = ()
    flags: tuple[Flag, ...] = ()

    def flag(self, name: str) -> Flag | None:
        return next((f for f in self.flags if f.name == name), None)


class ParsedArgs(Mapping[str, Any]):
    """Converted values by name (positionals and flags share one namespace), with defaults."""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values = dict(values or {})

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ParsedArgs({self._values!r})"


@dataclass(frozen=True)
class CommandLine:
    """A command line split into its subcommand and arguments."""

    subcommand: str
    argv: tuple[str, ...]
    share: bool


def split_command_line(text: str) -> CommandLine:
    """``/celery failed send_email --since 1h --share`` → ``failed``, its argv, share=True."""
    try:
        tokens = shlex.split(text.translate(_QUOTES))
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise UsageError(f"could not split the command: {str(exc).lower()}") from None
    share = SHARE_FLAG in tokens
    tokens = [t for t in tokens if t != SHARE_FLAG]
    if tokens and tokens[0].lower() in COMMAND_WORDS:
        tokens = tokens[1:]
    if not tokens:
        return CommandLine("", (), share)
    return CommandLine(tokens[0].lower(), tuple(tokens[1:]), share)


def parse_args(spec: ArgSpec, argv: Sequence[str], *, command: str | None = None) -> ParsedArgs:
    values: dict[str, Any] = {f.name: f.default for f in spec.flags}
    positionals: list[str] = []
    tokens = list(argv)
    index = 0
    only_positionals = False
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if only_positionals or not token.startswith("--") or token == "--":
            if token == "--" and not only_positionals:
                only_positionals = True
                continue
            positionals.append(token)
            continue
        name, has_value, inline = token[2:].partition("=")
        flag = spec.flag(name)
        if flag is None:
            known = ", ".join(f"--{f.name}" for f in spec.flags) or "none"
            raise UsageError(f"unknown flag --{name} (flags here: {known})", command=command)
        if flag.is_switch:
            if has_value:
                raise UsageError(f"--{name} takes no value", command=command)
            values[flag.name] = True
            continue
        if has_value:
            raw = inline
        elif index < len(tokens) and not tokens[index].startswith("--"):
            raw = tokens[index]
            index += 1
        else:
            # What the value is, in words: "--since needs a value: how far back (30s, 15m...)".
            raise UsageError(f"--{name} needs a value: {flag.help}", command=command)
        values[flag.name] = _convert(flag.convert, raw, f"--{name}", command)

    for positional in spec.positionals:
        if positional.variadic:
            taken, positionals = positionals, []
            values[positional.name] = [
                _convert(positional.convert, t, positional.metavar or positional.name, command)
                for t in taken
            ]
            if positional.required and not taken:
                raise UsageError(f"missing {positional.usage.strip('[]')}", command=command)
            continue
        if positionals:
            raw = positionals.pop(0)
            label = positional.metavar or positional.name.upper()
            values[positional.name] = _convert(positional.convert, raw, label, command)
        elif positional.required:
            raise UsageError(f"missing {positional.usage}", command=command)
        else:
            values[positional.name] = None
    if positionals:
        raise UsageError(f"unexpected argument {positionals[0]!r}", command=command)
    return ParsedArgs(values)


def _convert(convert: Converter | None, raw: str, label: str, command: str | None) -> Any:
    if convert is None:
        return raw
    try:
        return convert(raw)
    except ValueError as exc:
        raise UsageError(f"{label}: {exc}", command=command) from None


# -- value converters (raise ValueError with a readable reason) --------------------------------
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``2h``, ``1d``, ``1h30m``; a bare number is seconds."""
    compact = text.strip().lower().replace(" ", "")
    position = 0
    total = 0.0
    parts = 0
    unitless = False
    for match in _DURATION_PART.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
        parts += 1
        unitless = unitless or not match.group(2)
    # A bare number is seconds only on its own: "1h30" could mean minutes as well.
    if not compact or position != len(compact) or (unitless and parts > 1):
        raise ValueError(f"expected a duration such as 30s, 15m, 2h or 1d, got {text!r}")
    if total <= 0:
        raise ValueError(f"the duration must be more than zero, got {text!r}")
    return total


def parse_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"must be between 1 and {MAX_LIMIT}, got {value}")
    return value


# Friendly words people type for a state. "queued" is deliberately absent: it could mean
# PENDING, RECEIVED or RETRY, and guessing would hide tasks.
STATE_ALIASES: Mapping[str, str] = {
    "failed": FAILURE,
    "fail": FAILURE,
    "failures": FAILURE,
    "error": FAILURE,
    "errors": FAILURE,
    "succeeded": SUCCESS,
    "successful": SUCCESS,
    "ok": SUCCESS,
    "done": SUCCESS,
    "active": STARTED,
    "running": STARTED,
    "sent": PENDING,
    "retried": RETRY,
    "retrying": RETRY,
    "retries": RETRY,
    "cancelled": REVOKED,
    "canceled": REVOKED,
    "reserved": RECEIVED,
    "rejected": REJECTED,
}


def parse_state(text: str) -> str:
    """A Celery task state, case-insensitive, by name, friendly alias or unique prefix."""
    word = text.strip().lower()
    for state in TASK_STATES:
        if state.lower() == word:
            return state
    if word in STATE_ALIASES:
        return STATE_ALIASES[word]
    matches = sorted({s for s in TASK_STATES if s.lower().startswith(word)}) if word else []
    if len(matches) == 1:
        return matches[0]
    choices = ", ".join(TASK_STATES)
    if len(matches) > 1:
        raise ValueError(f"{text!r} could be {', '.join(matches)}")
    raise ValueError(f"unknown state {text!r} (one of {choices}, or failed/succeeded/active)")


def parse_name(text: str) -> str:
    """A task, worker or queue name: one printable token, sanely bounded."""
    value = text.strip()
    if not value or len(value) > 200 or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError(f"not a valid name: {text[:60]!r}")
    return value


def parse_task_id(text: str) -> str:
    value = text.strip()
    if len(value) > 255 or not value or any(ch.isspace() for ch in value):
        raise ValueError(f"not a task id: {text[:60]!r}")
    return value
