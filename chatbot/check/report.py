"""The lines of ``celery-chatops check`` and what is never printed in them.

Each check writes ``ok``, ``warn`` or ``FAIL`` lines through one :class:`Report`, which masks
every secret of the settings (tokens, the signing secret, the broker and state passwords, and
any ``scheme://user:password@`` in a quoted library error) and remembers the worst outcome for
the exit status.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TextIO
from urllib.parse import unquote, urlsplit

from chatbot.config import Settings

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "CheckLine",
    "ClusterReport",
    "Report",
    "Status",
    "Timeouts",
    "names",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

_MIN_SCRUBBED_SECRET = 6
_URL_CREDENTIALS = re.compile(r"(\w[\w+.-]*://[^:/@\s]*:)[^@\s]+@")
_NAMES_SHOWN = 5

Status = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True)
class CheckLine:
    status: Status
    subject: str
    detail: str
    exit_code: int = EXIT_FAILED  # only read for FAIL

    def render(self) -> str:
        # One line per check, however long its fix is: only the line breaks go.
        detail = " ".join(self.detail.split())
        return f"{self.status:<4}  {self.subject}: {detail}"


def names(items: Iterable[str], shown: int = _NAMES_SHOWN) -> str:
    """``a, b, c and 4 more``: a list of hosts or queues kept to one readable line."""
    listed = list(items)
    text = ", ".join(listed[:shown])
    return text + (f" and {len(listed) - shown} more" if len(listed) > shown else "")


class Report:
    """Where the checks write: one line each, secrets masked, the worst failure remembered."""

    def __init__(self, settings: Settings, out: TextIO) -> None:
        self.out = out
        self.lines: list[CheckLine] = []
        self._secrets = tuple(
            secret
            for secret in (
                unquote(urlsplit(settings.broker_url).password or ""),
                unquote(urlsplit(settings.state_url).password or ""),
                settings.slack_bot_token,
                settings.slack_app_token,
                settings.slack_signing_secret,
            )
            # A very short "secret" would mask ordinary letters all over the line; URLs are
            # handled by the pattern whatever their password's length.
            if len(secret) >= _MIN_SCRUBBED_SECRET
        )

    def scrub(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(r"\1***@", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def error_text(self, exc: BaseException) -> str:
        """``Type: first line`` of an exception, secrets masked."""
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        return self.scrub(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)

    def _emit(self, line: CheckLine) -> None:
        line = CheckLine(line.status, line.subject, self.scrub(line.detail), line.exit_code)
        self.lines.append(line)
        self.out.write(line.render() + "\n")
        self.out.flush()

    def ok(self, subject: str, detail: str) -> None:
        self._emit(CheckLine("ok", subject, detail))

    def warn(self, subject: str, detail: str) -> None:
        self._emit(CheckLine("warn", subject, detail))

    def fail(self, subject: str, detail: str, exit_code: int = EXIT_FAILED) -> None:
        self._emit(CheckLine("FAIL", subject, detail, exit_code))

    @property
    def exit_code(self) -> int:
        """0 without failures; else the configuration's 2 if any, before the others' 1."""
        codes = {line.exit_code for line in self.lines if line.status == "FAIL"}
        if not codes:
            return EXIT_OK
        return EXIT_CONFIG if EXIT_CONFIG in codes else max(codes)


class ClusterReport(Report):
    """One cluster's checks with several clusters: every subject is named ``<cluster> <subject>``,
    that cluster's broker password is masked too, and the lines (the exit status) are the
    parent report's."""

    def __init__(self, parent: Report, cluster: str, settings: Settings) -> None:
        super().__init__(settings, parent.out)
        self.lines = parent.lines
        self._secrets = tuple(dict.fromkeys((*parent._secrets, *self._secrets)))
        self.cluster = cluster

    def _emit(self, line: CheckLine) -> None:
        named = f"{self.cluster} {line.subject}"
        super()._emit(CheckLine(line.status, named, line.detail, line.exit_code))


@dataclass(frozen=True)
class Timeouts:
    """How long each check waits for a peer; short, so a dead one costs seconds, not minutes."""

    broker: float = 3.0
    ping: float = 1.0
    # Long enough for a heartbeat at Celery's default 2 s interval if the wake-up request is
    # lost.
    events: float = 3.0
    slack: float = 5.0
