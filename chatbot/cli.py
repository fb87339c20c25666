"""The command line: ``celery-chatops run | console | demo | check``."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from chatbot import __version__
from chatbot.config import (
    BROKER,
    CONSOLE,
    CONTROL,
    OUTPUT,
    STATE,
    TOPICS,
    TROUBLE,
    ConfigError,
    Settings,
    load_settings,
    setting_table,
)
from chatbot.logs import setup_logging

logger = logging.getLogger("chatbot")

EXIT_CONFIG = 2


@dataclass(frozen=True)
class Subcommand:
    name: str
    summary: str  # one line, in ``celery-chatops --help``
    description: str  # the first paragraph of its own ``--help``
    topics: tuple[str, ...]  # the settings it uses, by topic of chatbot.config's table


RUN_TOPICS = tuple(topic for topic in TOPICS if topic != CONSOLE)
SUBCOMMANDS = (
    Subcommand(
        "run",
        "consume events from CELERY_BROKER_URL and serve Slack",
        "Consume the fleet's events from CELERY_BROKER_URL and answer /celery in Slack. HTTP"
        " mode (Slack posts to /slack/events on CHATOPS_HOST:CHATOPS_PORT) unless"
        " SLACK_APP_TOKEN is set, then Socket Mode.",
        RUN_TOPICS,
    ),
    Subcommand(
        "console",
        "the /celery commands in a terminal, no Slack needed",
        "The /celery commands in a terminal, against the fleet on CELERY_BROKER_URL; no Slack"
        " needed. Control actions run as CHATOPS_CONSOLE_USER, who must be an operator.",
        (BROKER, STATE, TROUBLE, CONTROL, CONSOLE, OUTPUT),
    ),
    Subcommand(
        "demo",
        "zero-config demo: embedded Redis, a demo worker, and the console",
        "Zero configuration: a private redis-server, a demo worker whose sample tasks fail,"
        " hang and back up, and the console. The demo brings its own broker, state,"
        " thresholds and operator, so it never touches a real fleet or Slack workspace.",
        (OUTPUT,),
    ),
    Subcommand(
        "check",
        "validate the configuration, reach the broker and Slack",
        "Validate the configuration, then reach the state store, the broker (workers, queues,"
        " events) and Slack (token, scopes, channels): one line per check, every problem in"
        " one run. Exit status 0 when nothing failed, 2 when the configuration cannot work,"
        " else 1. It checks the settings of run.",
        RUN_TOPICS,
    ),
)

_CONFIG_HELP = "a KEY=VALUE file holding the same settings as the environment (CHATOPS_CONFIG)"
_WIDTH = 100
_NAME_COLUMN = 34


def settings_help(topics: Sequence[str]) -> str:
    """The settings of ``topics``, from chatbot.config's setting table, for an epilog."""
    rows = setting_table()
    lines = textwrap.wrap(
        "settings it uses (environment variables, or KEY=VALUE lines in --config FILE; the"
        " environment wins):",
        _WIDTH,
    )
    for topic in topics:
        lines += ["", f"{topic}:"]
        for row in (row for row in rows if row.topic == topic):
            text = f"{row.help} [default: {row.default}]"
            lines += textwrap.wrap(
                text,
                _WIDTH,
                initial_indent=f"  {row.env:<{_NAME_COLUMN - 2}}",
                subsequent_indent=" " * _NAME_COLUMN,
                break_on_hyphens=False,
                break_long_words=False,
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celery-chatops",
        description="Triage a Celery incident from Slack.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    # The same option after the subcommand; SUPPRESS keeps a --config given before it when
    # none is given after.
    config_after = argparse.ArgumentParser(add_help=False)
    config_after.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG_HELP
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS:
        subparser = sub.add_parser(
            command.name,
            help=command.summary,
            description="\n".join(textwrap.wrap(command.description, _WIDTH)),
            epilog=settings_help(command.topics),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[config_after],
        )
        if command.name == "demo":
            subparser.add_argument(
                "--script",
                metavar="FILE",
                help="read console commands from FILE instead of the terminal (for a recorded"
                " demo)",
            )
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

            settings.require_broker()
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
