"""Logs are JSON lines and never carry a secret, even from an exception's text."""

from __future__ import annotations

import io
import json
import logging

from chatbot.logs import scrub, setup_logging


def test_log_lines_are_json_with_extra_fields_and_secrets_scrubbed() -> None:
    stream = io.StringIO()
    handler = setup_logging("INFO", secrets=["signing-secret-value"], stream=stream)
    try:
        log = logging.getLogger("chatbot.test")
        log.info("connected to %s", "amqp://user:pa55@rabbit:5672//", extra={"event": "up"})
        log.info("revoke requested", extra={"targets": "charge(card, password='hunter2')"})
        try:
            raise RuntimeError("token xoxb-1234-5678-abcdef rejected; secret signing-secret-value")
        except RuntimeError:
            log.exception("auth failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["msg"] == "connected to amqp://user:[redacted]@rabbit:5672//"
    assert lines[0]["event"] == "up" and lines[0]["level"] == "info"
    assert lines[1]["targets"] == "charge(card, password='[redacted]')"
    assert "RuntimeError" in lines[2]["exc"]
    text = stream.getvalue()
    assert "pa55" not in text and "xoxb-1234" not in text and "signing-secret-value" not in text
    assert "hunter2" not in text


def test_scrub_leaves_ordinary_text_alone() -> None:
    assert scrub("queue celery has 120 messages") == "queue celery has 120 messages"
    assert scrub("redis://h:6379/0") == "redis://h:6379/0"
    assert scrub("xapp-1-A0-123-abc") == "[redacted]"
