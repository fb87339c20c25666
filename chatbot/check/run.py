"""``celery-chatops check``: every check in one run, in this order:

1. the settings as a whole (:mod:`chatbot.check.config`);
2. the state store, when it is Redis (:mod:`chatbot.check.state`);
3. the broker, then the workers, queues and events behind it (:mod:`chatbot.check.broker`):
   with several clusters (``CHATOPS_CLUSTERS``), each one's, every line named after it;
4. Slack: the bot token, its scopes, the app-level token, the channels
   (:mod:`chatbot.check.slack`).

A failure does not stop the run: a broker that is down and a token that is wrong are both
reported. Only what cannot be asked without the failed part is skipped (no workers to ping
without a broker, no channels to look up without a working token, nothing without the setting
it needs).
"""

from __future__ import annotations

from typing import TextIO

from chatbot.check.broker import check_broker
from chatbot.check.config import check_config
from chatbot.check.report import ClusterReport, Report, Timeouts
from chatbot.check.slack import check_slack
from chatbot.check.state import check_state_store
from chatbot.cluster_config import load_clusters
from chatbot.config import Settings

__all__ = ["run_checks"]


def run_checks(settings: Settings, out: TextIO, timeouts: Timeouts | None = None) -> int:
    """Print one line per check and return the exit status (see :mod:`chatbot.check`)."""
    limits = timeouts or Timeouts()
    report = Report(settings, out)
    check_config(settings, report)
    check_state_store(settings, report, timeout=limits.broker)
    clusters = load_clusters(settings)
    if not clusters.several:
        if settings.broker_url:
            check_broker(settings, report, limits)
    else:
        # Each cluster's broker, workers, queues and events, its lines named after it.
        for cluster in clusters:
            named = ClusterReport(report, cluster.name, cluster.settings)
            check_broker(cluster.settings, named, limits)
    check_slack(settings, report, timeout=limits.slack)
    return report.exit_code
