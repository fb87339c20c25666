"""Counters of the Slack face, served on ``GET /metrics`` after the fleet's.

The one number that decides whether Slack shows "This slash command experienced a problem"
is how long the ack takes; it is measured here (as a histogram) in production, while
``bench/`` measures it under load. Label values are bounded: command names come from the
registry (anything else is ``unknown``), outcomes from a fixed set.

prometheus_client's own types keep the counts (they are thread-safe), on a private
``CollectorRegistry``: never the library's process-global one, so two bots in one process
(as in the tests) never share or collide on a counter.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ACK_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class SlackMetrics:
    """The Slack face's counters on ``registry`` (a fresh private one when none is passed)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        on = self.registry
        self._commands = Counter(
            "chatops_slack_commands_total", "Slash commands answered.",
            ("command", "answer", "outcome"), registry=on,
        )
        self._acks = Histogram(
            "chatops_slack_ack_seconds", "Time from listener entry to ack().",
            ("kind",), buckets=ACK_BUCKETS, registry=on,
        )
        self._responses = Counter(
            "chatops_slack_response_url_posts_total", "Answers posted to a response_url.",
            ("outcome",), registry=on,
        )
        self._actions = Counter(
            "chatops_slack_actions_total", "Button clicks handled.",
            ("action_id", "outcome"), registry=on,
        )
        self._home = Counter(
            "chatops_slack_home_publishes_total", "App Home views published.",
            ("outcome",), registry=on,
        )
        self._pending = Gauge(
            "chatops_slack_pending", "Answers acked and not yet posted.", registry=on
        )
        self._refused_requests = Counter(
            "chatops_slack_requests_refused_total",
            "Requests to the Slack endpoint answered before Bolt: unauthenticated (401),"
            " malformed (400) or replayed (answered once already).",
            ("reason",), registry=on,
        )
        self._refused_busy = Counter(
            "chatops_slack_busy_refusals_total",
            "Slow commands refused: too many pending.", registry=on,
        )

    # -- recording ------------------------------------------------------------------------
    def command(self, name: str, answer: str, outcome: str) -> None:
        """``answer``: ``ack`` or ``response_url``; ``outcome``: ``ok``, ``usage``, ``error``."""
        self._commands.labels(name or "unknown", answer, outcome).inc()

    def ack_seconds(self, kind: str, seconds: float) -> None:
        """``kind``: ``command``, ``action`` or ``event``."""
        self._acks.labels(kind).observe(seconds)

    def response_post(self, outcome: str) -> None:
        self._responses.labels(outcome).inc()

    def action(self, action_id: str, outcome: str) -> None:
        """``action_id``: a registered one, or ``unregistered``."""
        self._actions.labels(action_id, outcome).inc()

    def home_publish(self, outcome: str) -> None:
        self._home.labels(outcome).inc()

    def pending(self, delta: int) -> None:
        self._pending.inc(delta)

    def request_refused(self, reason: str) -> None:
        """``reason``: ``unauthenticated``, ``malformed`` or ``replayed``."""
        self._refused_requests.labels(reason).inc()

    def refused_busy(self) -> None:
        self._refused_busy.inc()

    # -- exposition -----------------------------------------------------------------------
    def text(self) -> str:
        """The registry in Prometheus text format 0.0.4."""
        return generate_latest(self.registry).decode("utf-8")
