"""Counters of the Slack face, appended to ``GET /metrics``.

The one number that decides whether Slack shows "This slash command experienced a problem"
is how long the ack takes; it is measured here (as a histogram) in production, while
``bench/`` measures it under load. Label values are bounded: command names come from the
registry (anything else is ``unknown``), outcomes from a fixed set.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterable

ACK_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += 1
        self.sum += value


class SlackMetrics:
    """Thread-safe counters; :meth:`text` renders them in Prometheus text format 0.0.4."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._commands: Counter[tuple[str, str, str]] = Counter()  # command, answer, outcome
        self._acks: dict[str, _Histogram] = {}  # by kind: command, action, event
        self._responses: Counter[str] = Counter()  # response_url posts by outcome
        self._actions: Counter[tuple[str, str]] = Counter()  # action_id (registered), outcome
        self._home: Counter[str] = Counter()
        self._pending = 0
        self._refused_busy = 0

    # -- recording ------------------------------------------------------------------------
    def command(self, name: str, answer: str, outcome: str) -> None:
        """``answer``: ``ack`` or ``response_url``; ``outcome``: ``ok``, ``usage``, ``error``."""
        with self._lock:
            self._commands[(name or "unknown", answer, outcome)] += 1

    def ack_seconds(self, kind: str, seconds: float) -> None:
        with self._lock:
            histogram = self._acks.get(kind)
            if histogram is None:
                histogram = self._acks[kind] = _Histogram(ACK_BUCKETS)
            histogram.observe(seconds)

    def response_post(self, outcome: str) -> None:
        with self._lock:
            self._responses[outcome] += 1

    def action(self, action_id: str, outcome: str) -> None:
        with self._lock:
            self._actions[(action_id, outcome)] += 1

    def home_publish(self, outcome: str) -> None:
        with self._lock:
            self._home[outcome] += 1

    def pending(self, delta: int) -> None:
        with self._lock:
            self._pending += delta

    def refused_busy(self) -> None:
        with self._lock:
            self._refused_busy += 1

    # -- exposition -----------------------------------------------------------------------
    def text(self) -> str:
        with self._lock:
            lines = [
                "# HELP chatops_slack_commands_total Slash commands answered.",
                "# TYPE chatops_slack_commands_total counter",
            ]
            for (name, answer, outcome), count in sorted(self._commands.items()):
                labels = _labels([("command", name), ("answer", answer), ("outcome", outcome)])
                lines.append(f"chatops_slack_commands_total{labels} {count}")
            lines += [
                "# HELP chatops_slack_ack_seconds Time from listener entry to ack().",
                "# TYPE chatops_slack_ack_seconds histogram",
            ]
            for kind, histogram in sorted(self._acks.items()):
                cumulative = 0
                for bound, count in zip(histogram.buckets, histogram.counts, strict=True):
                    cumulative += count
                    labels = _labels([("kind", kind), ("le", f"{bound:g}")])
                    lines.append(f"chatops_slack_ack_seconds_bucket{labels} {cumulative}")
                labels = _labels([("kind", kind), ("le", "+Inf")])
                lines.append(f"chatops_slack_ack_seconds_bucket{labels} {histogram.total}")
                kind_label = _labels([("kind", kind)])
                lines.append(f"chatops_slack_ack_seconds_sum{kind_label} {histogram.sum:.6f}")
                lines.append(f"chatops_slack_ack_seconds_count{kind_label} {histogram.total}")
            lines += [
                "# HELP chatops_slack_response_url_posts_total Answers posted to a response_url.",
                "# TYPE chatops_slack_response_url_posts_total counter",
            ]
            for outcome, count in sorted(self._responses.items()):
                labels = _labels([("outcome", outcome)])
                lines.append(f"chatops_slack_response_url_posts_total{labels} {count}")
            lines += [
                "# HELP chatops_slack_actions_total Button clicks handled.",
                "# TYPE chatops_slack_actions_total counter",
            ]
            for (action_id, outcome), count in sorted(self._actions.items()):
                labels = _labels([("action_id", action_id), ("outcome", outcome)])
                lines.append(f"chatops_slack_actions_total{labels} {count}")
            lines += [
                "# HELP chatops_slack_home_publishes_total App Home views published.",
                "# TYPE chatops_slack_home_publishes_total counter",
            ]
            for outcome, count in sorted(self._home.items()):
                labels = _labels([("outcome", outcome)])
                lines.append(f"chatops_slack_home_publishes_total{labels} {count}")
            lines += [
                "# HELP chatops_slack_pending Answers acked and not yet posted.",
                "# TYPE chatops_slack_pending gauge",
                f"chatops_slack_pending {self._pending}",
                "# HELP chatops_slack_busy_refusals_total Slow commands refused: too many pending.",
                "# TYPE chatops_slack_busy_refusals_total counter",
                f"chatops_slack_busy_refusals_total {self._refused_busy}",
            ]
        return "\n".join(lines) + "\n"
