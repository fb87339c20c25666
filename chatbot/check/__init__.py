"""``celery-chatops check``: is this configuration going to work, and if not, what to fix.

One line per check, ``ok``, ``warn`` or ``FAIL``, each failure naming the fix; every check
runs, so one run reports every problem (:mod:`chatbot.check.run` has the order and what is
skipped when something it needs failed).

Secrets never appear: tokens are not printed, the broker password is masked everywhere,
including in error texts quoted from libraries (:mod:`chatbot.check.report`).

Exit status: 0 when nothing failed (warnings allowed), 2 when the configuration cannot work as
set (as for any configuration error on the command line), else 1 when a broker, state store or
Slack check failed.
"""

from __future__ import annotations

from chatbot.check.report import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, CheckLine, Timeouts
from chatbot.check.run import run_checks
from chatbot.check.slack import ESSENTIAL_SCOPES, REQUIRED_BOT_SCOPES

__all__ = [
    "ESSENTIAL_SCOPES",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "REQUIRED_BOT_SCOPES",
    "CheckLine",
    "Timeouts",
    "run_checks",
]
