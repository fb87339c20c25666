"""The command line: ``celery-chatops run | console | demo | check``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from chatbot import __version__
from chatbot.config import ConfigError, Settings, load_settings
from chatbot.logs import setup_logging

logger = logging.getLogger("chatbot")

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celery-chatops",
        description="Triage a Celery incident from Slack.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a KEY=VALUE file holding the same settings as the environment (CHATOPS_CONFIG)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="consume events from CELERY_BROKER_URL and serve Slack")
    sub.add_parser("console", help="the /celery commands in a terminal, no Slack needed")
    demo = sub.add_parser(
        "demo", help="zero-config demo: embedded Redis, a demo worker, and the console"
    )
    demo.add_argument(
        "--script",
        metavar="FILE",
        help="read console commands from FILE instead of the terminal (for a recorded demo)",
    )
    sub.add_parser("check", help="validate the configuration, reach the broker and Slack")
    return parser


def _settings(args: argparse.Namespace, stderr: TextIO) -> Settings | None:
    try:
        return load_settings(config_path=args.config)
    except ConfigError as exc:
        print(f"celery-chatops: configuration error: {exc}", file=stderr)
        return None


def main(argv: Sequence[str] | None = None, stderr: TextIO | None = None) -> int:
    err = stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(err)
        return EXIT_CONFIG
    settings = _settings(args, err)
    if settings is None:
        return EXIT_CONFIG
    setup_logging(settings.log_level, secrets=settings.secret_values)
    try:
        if args.command == "run":
            from chatbot.runner import run

            settings.require_for_run()
            return run(settings)
        if args.command == "console":
            from chatbot.runner import run_console

            settings.require("broker_url")
            return run_console(settings, sys.stdin, sys.stdout)
        if args.command == "demo":
            from chatbot.demo.run import run_demo

            return run_demo(settings, script=args.script)
        if args.command == "check":
            from chatbot.check import run_checks

            return run_checks(settings, sys.stdout)
    except ConfigError as exc:
        print(f"celery-chatops: configuration error: {exc}", file=err)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return EXIT_CONFIG  # pragma: no cover - parser.error exits
