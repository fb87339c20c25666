"""celery-chatops: triage a Celery incident from Slack."""

__version__ = "0.1.0"
