"""Redaction and truncation of task payloads, applied once at ingest.

Celery sends ``args`` and ``kwargs`` as reprs (strings cut at 1024 characters by the worker).
A keyword argument whose name contains one of the redact keys has its value replaced before the
record is stored, so a secret never even sits in memory. When a repr cannot be parsed (a custom
object's repr, or a repr cut short by Celery) and a sensitive name appears in it, the whole value
is withheld: showing a little less is the safe failure.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

REDACTED = "'[redacted]'"
WITHHELD = "[withheld: mentions a redacted key and could not be parsed]"
ELLIPSIS = "…"


@dataclass(frozen=True, slots=True)
class FieldLimits:
    """Caps in characters, so memory is bounded in bytes as well as in count."""

    args: int = 1024
    kwargs: int = 1024
    result: int = 1024
    exception: int = 1024
    traceback: int = 4096  # keeps the last lines: the raising frame is at the end


class Redactor:
    """Replaces the values of sensitive keyword arguments in Celery's argument reprs."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(sorted({k.strip().lower() for k in keys if k.strip()}))
        words = "|".join(re.escape(k) for k in self.keys)
        self._sensitive = re.compile(words, re.IGNORECASE) if self.keys else None
        # A quoted dictionary key that mentions a sensitive word: ``'db_password':``.
        self._quoted_key = (
            re.compile(r"""['"][^'"]*(?:""" + words + r""")[^'"]*['"]\s*:""", re.IGNORECASE)
            if self.keys
            else None
        )

    def _mentions_key(self, text: str) -> bool:
        # A plain substring test first: it is several times faster than the case-insensitive
        # regex, and it runs on every received task's args and kwargs.
        lowered = text.lower()
        return any(key in lowered for key in self.keys)

    def is_sensitive(self, key: str) -> bool:
        return self._sensitive is not None and self._sensitive.search(key) is not None

    def kwargs(self, value: Any) -> str | None:
        """The kwargs repr with sensitive values replaced."""
        if value is None:
            return None
        if isinstance(value, dict):
            return repr(self._redact_mapping(value))
        text = value if isinstance(value, str) else repr(value)
        if not self._mentions_key(text):
            return text  # the common case: no sensitive name anywhere, no parsing needed
        parsed = _literal(text)
        if isinstance(parsed, dict):
            return repr(self._redact_mapping(parsed))
        return WITHHELD

    def args(self, value: Any) -> str | None:
        """The args repr with sensitive values of any dictionary inside replaced."""
        if value is None:
            return None
        text = value if isinstance(value, str) else repr(value)
        if not self._mentions_key(text) or self._quoted_key is None:
            return text
        if self._quoted_key.search(text) is None:
            return text
        parsed = _literal(text)
        if parsed is _UNPARSEABLE:
            return WITHHELD
        return repr(self._redact_any(parsed))

    def _redact_mapping(self, mapping: dict[Any, Any]) -> dict[Any, Any]:
        clean: dict[Any, Any] = {}
        for key, item in mapping.items():
            if isinstance(key, str) and self.is_sensitive(key):
                clean[key] = _Redacted()
            else:
                clean[key] = self._redact_any(item)
        return clean

    def _redact_any(self, value: Any) -> Any:
        if isinstance(value, dict):
            return self._redact_mapping(value)
        if isinstance(value, list):
            return [self._redact_any(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._redact_any(v) for v in value)
        return value


class _Redacted:
    def __repr__(self) -> str:
        return REDACTED


_UNPARSEABLE = object()


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _UNPARSEABLE


def clip(value: Any, limit: int) -> str | None:
    """At most ``limit`` characters, marking a cut with an ellipsis."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + ELLIPSIS


def clip_tail(value: Any, limit: int) -> str | None:
    """The last ``limit`` characters, starting at a line boundary where possible."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    tail = text[-(limit - 2) :]
    newline = tail.find("\n")
    if 0 <= newline < len(tail) // 2:
        tail = tail[newline + 1 :]
    return ELLIPSIS + "\n" + tail
