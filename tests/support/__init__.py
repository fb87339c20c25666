"""Test doubles shared by tests/ and bench/: the Slack Web API stand-in, signed payloads,
a Socket Mode server, and a polling helper for waiting on real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that.

    For waiting on real processes in tests: the deadline only bounds a hang, it is not a
    timing assertion. Raises AssertionError naming ``what`` when it runs out.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate!r}")
        time.sleep(interval)
