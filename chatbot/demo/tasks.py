"""The sample fleet of ``celery-chatops demo`` (and of ``compose.yaml``'s worker).

A small shop whose tasks misbehave the way real ones do:

- ``shop.charge_card`` usually succeeds; about one call in four is declined by the "payment
  gateway", raising :class:`CardDeclined` from two frames down, so ``/celery task`` has a real
  traceback to show. Its ``api_key`` keyword argument shows redaction at work.
- ``reports.build_daily_report`` takes a few seconds and succeeds.
- ``inventory.sync_supplier_feed`` hangs: it waits on a supplier that never answers, which is
  the stuck task to find with ``/celery stuck`` and end with ``/celery revoke --terminate``.
- ``shop.send_receipt`` is routed to the ``emails`` queue, which no worker consumes (its worker
  "was never redeployed"), so that queue builds a backlog.

Run it as a worker with ``celery -A chatbot.demo.tasks worker -E``; the broker comes from
``CELERY_BROKER_URL`` (Celery reads that variable itself). :class:`Producer` keeps submitting
a mix of these tasks; ``python -m chatbot.demo.tasks`` runs one until interrupted (the load of
``compose.yaml``'s sample fleet).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

from celery import Celery

__all__ = [
    "BUILD_REPORT",
    "CHARGE_CARD",
    "EMAIL_QUEUE",
    "SEND_RECEIPT",
    "SYNC_SUPPLIER_FEED",
    "WORKER_QUEUES",
    "CardDeclined",
    "Producer",
    "make_app",
]

logger = logging.getLogger(__name__)

CHARGE_CARD = "shop.charge_card"
SEND_RECEIPT = "shop.send_receipt"
BUILD_REPORT = "reports.build_daily_report"
SYNC_SUPPLIER_FEED = "inventory.sync_supplier_feed"

DEFAULT_QUEUE = "celery"
EMAIL_QUEUE = "emails"
# What the demo worker consumes: everything but the e-mail queue.
WORKER_QUEUES = (DEFAULT_QUEUE,)

DECLINE_REASONS = ("insufficient_funds", "card_expired", "do_not_honor")
# How long the supplier "takes" to answer: far beyond any stuck threshold.
SUPPLIER_SILENCE_SECONDS = 6 * 3600

# The producer's pace: one card charge per tick, the rest every so many ticks. Receipts pile
# up in the unconsumed queue at one every two seconds.
PRODUCER_TICK = 1.0
REPORT_EVERY_TICKS = 5
RECEIPT_EVERY_TICKS = 2
FIRST_BURST_CHARGES = 6
DECLINE_RATE = 0.25


class CardDeclined(Exception):
    """The payment gateway refused the charge."""


class _PaymentGateway:
    """A stand-in for a payment provider's client library."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    def charge(self, card_token: str, amount_cents: int) -> str:
        return self._post("/v1/charges", card_token, amount_cents)

    def _post(self, path: str, card_token: str, amount_cents: int) -> str:
        # Deterministic per card, so a retried charge fails the same way a real decline does.
        rng = random.Random(card_token)
        if rng.random() < DECLINE_RATE:
            reason = rng.choice(DECLINE_REASONS)
            raise CardDeclined(
                f"card {card_token[-4:]} declined by issuer ({reason}) for {amount_cents} cents"
            )
        time.sleep(0.05 + rng.random() * 0.3)
        return f"ch_{rng.getrandbits(48):012x}"


def make_app(broker_url: str | None = None) -> Celery:
    """The shop's Celery app on ``broker_url``; without one Celery reads ``CELERY_BROKER_URL``."""
    app = Celery("demo-shop", broker=broker_url or None, set_as_current=False)
    app.conf.update(
        # What the bot needs to see everything: task events from workers, task-sent from us.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_ignore_result=True,
        task_routes={SEND_RECEIPT: {"queue": EMAIL_QUEUE}},
        # One task at a time per pool process: the hanging task must not hold others back.
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Celery 5 warns at every start unless this is set explicitly.
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )

    @app.task(name=CHARGE_CARD)
    def charge_card(order_id: int, amount_cents: int, card_token: str, api_key: str) -> str:
        return _PaymentGateway(api_key).charge(card_token, amount_cents)

    @app.task(name=SEND_RECEIPT)
    def send_receipt(order_id: int, email: str) -> str:
        return f"receipt for order {order_id} sent to {email}"

    @app.task(name=BUILD_REPORT)
    def build_daily_report(day: str, seconds: float = 3.0) -> dict[str, Any]:
        time.sleep(seconds)
        return {"day": day, "orders": random.randint(80, 140)}

    @app.task(name=SYNC_SUPPLIER_FEED)
    def sync_supplier_feed(supplier: str) -> int:
        # The supplier's API accepts the connection and never answers; no timeout was set.
        time.sleep(SUPPLIER_SILENCE_SECONDS)
        return 0

    return app


def _declining_card_tokens() -> Iterator[str]:
    """Card tokens the gateway declines: the first failures need not wait for luck."""
    for number in itertools.count(4000):
        token = f"tok_visa_{number}"
        if random.Random(token).random() < DECLINE_RATE:
            yield token


class Producer(threading.Thread):
    """Submits the shop's tasks until stopped: the load the bot watches.

    It starts with a burst that holds a declined charge and the hanging supplier sync, so a
    failure and a stuck task exist within seconds; :attr:`hanging_task_id` is that sync.
    """

    def __init__(self, broker_url: str | None = None, *, tick: float = PRODUCER_TICK) -> None:
        super().__init__(name="demo-producer", daemon=True)
        self._app = make_app(broker_url)
        self._tick = tick
        self._stop_event = threading.Event()
        self._orders = itertools.count(1001)
        self._rng = random.Random()
        self.hanging_task_id: str | None = None

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
        self._app.close()

    def run(self) -> None:
        try:
            self._first_burst()
            for tick in itertools.count(1):
                if self._stop_event.wait(self._tick):
                    return
                self._submit_tick(tick)
        except Exception:  # a broker gone at shutdown must not print a traceback over a prompt
            if not self._stop_event.is_set():
                logger.exception("demo producer stopped")

    def _first_burst(self) -> None:
        self._charge(next(_declining_card_tokens()))
        sync = self._app.send_task(SYNC_SUPPLIER_FEED, args=("acme-wholesale",))
        self.hanging_task_id = sync.id
        for _ in range(FIRST_BURST_CHARGES - 1):
            self._charge(self._random_card())
        self._report()

    def _submit_tick(self, tick: int) -> None:
        self._charge(self._random_card())
        if tick % REPORT_EVERY_TICKS == 0:
            self._report()
        if tick % RECEIPT_EVERY_TICKS == 0:
            order = next(self._orders)
            self._app.send_task(SEND_RECEIPT, args=(order, f"customer{order}@example.com"))

    def _random_card(self) -> str:
        return f"tok_visa_{self._rng.randrange(10**6)}"

    def _charge(self, card_token: str) -> None:
        self._app.send_task(
            CHARGE_CARD,
            args=(next(self._orders), self._rng.randrange(500, 25000)),
            # The api_key shows redaction at work: `task <id>` prints it as a placeholder.
            kwargs={"card_token": card_token, "api_key": "sk_live_demo_not_a_real_key"},
        )

    def _report(self) -> None:
        day = time.strftime("%Y-%m-%d")
        self._app.send_task(BUILD_REPORT, args=(day,), kwargs={"seconds": self._rng.uniform(1, 4)})


app = make_app()


def main() -> int:
    """``python -m chatbot.demo.tasks``: submit the sample load to ``CELERY_BROKER_URL``."""
    broker_url = os.environ.get("CELERY_BROKER_URL")
    if not broker_url:
        print("CELERY_BROKER_URL: required: the broker of the sample worker")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    producer = Producer(broker_url)
    producer.start()
    logger.info("sending the sample load to the broker; Ctrl-C stops")
    try:
        while producer.is_alive():
            producer.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        producer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
