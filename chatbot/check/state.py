"""The state store, when it is Redis: one ping with a short timeout."""

from __future__ import annotations

from chatbot.check.report import Report
from chatbot.config import Settings, redact_url

__all__ = ["check_state_store"]


def check_state_store(settings: Settings, report: Report, *, timeout: float) -> None:
    url = settings.state_url
    if not url.startswith(("redis://", "rediss://")):
        return
    import redis

    shown = redact_url(url)
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except Exception as exc:  # whatever the client raises, the store is unusable
        report.fail(
            "state",
            f"cannot reach CHATOPS_STATE_URL {shown}: {report.error_text(exc)}; check the"
            " URL, its password and that the Redis server is running",
        )
        return
    finally:
        client.close()
    report.ok("state", f"{shown} reachable")
