"""``GET /api/tasks?state=FAILURE&limit=50`` at 100,000 retained tasks: ours against Flower's own
handler, over HTTP, in the same run.

Both sides hold the same seeded events (``bench/events.py``), one after the other in this
process (the first is dropped before the second is built, so they never share the heap):

- ours: :class:`~chatbot.store.memory.MemoryStore` fed through ``apply`` in batches (as the
  consumer does), the REST API (``chatbot.api``) under waitress, a Bearer token;
- Flower 2.2: ``EventsState`` fed one ``event()`` per event (as its consumer does), its
  ``ListTasks`` handler in a Tornado application with ``--basic_auth``.

Each is asked the same URLs over one keep-alive connection, after warm-up rounds; the figure
is the median wall time of a request, and the ratio is Flower's over ours. Nothing asserts:
this measures (see ``bench/README.md``).

    python -m bench.api                  # 100,000 tasks, 200 requests per URL
    python -m bench.api --tasks 10000 --requests 50
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import requests
from waitress.server import create_server

from bench.events import FleetEvents, chunks
from chatbot.api import ApiServices, build_api
from chatbot.config import load_settings
from chatbot.store.memory import MemoryStore

TOKEN = "bench-api-token-0123456789"
IDENTITY = "U0BENCH01"
BASIC = ("flower", "bench-password")
URLS = (
    "/api/tasks?state=FAILURE&limit=50",
    "/api/tasks?limit=50",
    "/api/tasks?state=FAILURE&limit=50&search=EUR",
)
WARMUP = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _events(tasks: int, seed: int) -> Iterator[list[dict[str, Any]]]:
    return chunks(FleetEvents(seed).stream(tasks, received=True), 1000)


@contextmanager
def ours(tasks: int, seed: int) -> Iterator[tuple[str, dict[str, str], int]]:
    store = MemoryStore(max_tasks=tasks)
    for batch in _events(tasks, seed):
        store.apply(batch)
    settings = load_settings(environ={"CHATOPS_API_TOKENS": f"{IDENTITY}={TOKEN}"})
    app = build_api(ApiServices(store, settings), settings.api_tokens)
    port = _free_port()
    # waitress, as the bot's listener runs it (its public API: create_server, run, close).
    server = create_server(app, host="127.0.0.1", port=port, threads=4, ident="bench")
    thread = threading.Thread(target=server.run, name="bench-waitress", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}, len(store)
    finally:
        # Handler threads first: a thread finishing after close() would wake a closed loop.
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        server.close()
        thread.join(5)


@contextmanager
def flower(tasks: int, seed: int) -> Iterator[tuple[str, dict[str, str], int]]:
    import tornado.web
    from flower.api.tasks import ListTasks
    from flower.events import EventsState

    state = EventsState(max_tasks_in_memory=tasks)
    for batch in _events(tasks, seed):
        for event in batch:
            state.event(event)
    port = _free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        app = tornado.web.Application([(r"/api/tasks", ListTasks)])
        # What ListTasks and its base handlers read of Flower's application.
        app.options = SimpleNamespace(  # type: ignore[attr-defined, unused-ignore]
            basic_auth=[f"{BASIC[0]}:{BASIC[1]}"],
            auth=None,
            read_only=False,
            url_prefix="",
            debug=False,
            format_task=None,
        )
        app.events = SimpleNamespace(state=state)  # type: ignore[attr-defined, unused-ignore]
        app.listen(port, address="127.0.0.1")
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="bench-tornado", daemon=True)
    thread.start()
    ready.wait(10)
    basic = base64.b64encode(f"{BASIC[0]}:{BASIC[1]}".encode()).decode()
    try:
        yield f"http://127.0.0.1:{port}", {"Authorization": f"Basic {basic}"}, len(state.tasks)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def measure(base: str, headers: dict[str, str], url: str, rounds: int) -> dict[str, float]:
    session = requests.Session()
    session.trust_env = False
    times: list[float] = []
    size = 0
    try:
        for i in range(WARMUP + rounds):
            started = time.perf_counter()
            response = session.get(base + url, headers=headers, timeout=60)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
            if i >= WARMUP:
                times.append(elapsed)
                size = len(response.json())
    finally:
        session.close()
    return {
        "p50": statistics.median(times),
        "p95": sorted(times)[int(0.95 * (len(times) - 1))],
        "tasks": float(size),
    }


def run_side(
    name: str, side: Callable[[int, int], Any], tasks: int, seed: int, rounds: int
) -> dict[str, dict[str, float]]:
    gc.collect()
    started = time.perf_counter()
    with side(tasks, seed) as (base, headers, retained):
        print(
            f"  {name}: {retained:,} tasks retained, fed in {time.perf_counter() - started:.0f} s"
        )
        return {url: measure(base, headers, url, rounds) for url in URLS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per URL")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        f"bench.api: {args.tasks:,} tasks, seed {args.seed}, {args.requests} requests per URL,"
        f" python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    mine = run_side("ours", ours, args.tasks, args.seed, args.requests)
    theirs = run_side("flower 2.2", flower, args.tasks, args.seed, args.requests)
    print()
    print(f"{'URL':<52} {'ours p50':>9} {'flower p50':>11} {'flower/ours':>12} {'rows':>5}")
    for url in URLS:
        a, b = mine[url], theirs[url]
        ratio = b["p50"] / a["p50"] if a["p50"] > 0 else float("inf")
        rows = f"{a['tasks']:.0f}" + ("" if a["tasks"] == b["tasks"] else f"/{b['tasks']:.0f}")
        print(
            f"{url:<52} {a['p50'] * 1000:>7.2f}ms {b['p50'] * 1000:>9.2f}ms"
            f" {ratio:>11.1f}x {rows:>5}"
        )
    print("\nmedian wall time per request over one keep-alive connection, HTTP included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
