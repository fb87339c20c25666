"""What Slack said about a failed call: its error code, its HTTP status, how long to wait.

One reading of slack_sdk's failures for every caller (the alert sender, the retry handlers of
the Web API client, the runner, the group resolver, ``check``), so that a rate limit or an
``ok: false`` reply means the same thing everywhere. slack_sdk raises ``SlackApiError`` whose
``response`` is a ``SlackResponse`` (``data``, ``status_code``, ``headers``); its retry
handlers see an ``http_retry.HttpResponse`` (``status_code``, ``headers`` of lists). Both are
read here without importing either: this module sits at layer 0.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Callable, Mapping
from typing import Any

# How long to wait after a 429 that carries no usable Retry-After.
DEFAULT_RETRY_AFTER = 1.0


def error_code(exc: BaseException) -> str | None:
    """The ``error`` of Slack's ``ok: false`` reply carried by ``exc``; None without one."""
    response = getattr(exc, "response", None)
    data = getattr(response, "data", response)
    if isinstance(data, Mapping):
        code = data.get("error")
        if code:
            return str(code)
    return None


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of the reply carried by ``exc``; None when there was no reply."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def header(headers: Any, name: str) -> str | None:
    """One header, by case-insensitive name, from either client's header mapping."""
    if not isinstance(headers, Mapping):
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if str(key).lower() == wanted:
            if isinstance(value, list | tuple):
                value = value[0] if value else None
            return None if value is None else str(value)
    return None


def retry_after(
    response: Any,
    default: float = DEFAULT_RETRY_AFTER,
    *,
    clock: Callable[[], float] = time.time,
) -> float:
    """``Retry-After`` of ``response`` in seconds, never negative.

    HTTP allows delta-seconds or an HTTP-date there; Slack sends seconds, but a proxy in
    between may send a date. ``default`` when the header is missing or unreadable.
    """
    raw = header(getattr(response, "headers", None), "retry-after")
    if raw is None:
        return default
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:  # "-0000": a date in UTC without a stated zone
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, when.timestamp() - clock())
