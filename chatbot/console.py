"""The terminal face: the same `/celery` commands, typed at a prompt and rendered as text.

It knows nothing about the store or Slack: it is given ``run_command(text) -> Message`` (the
dispatcher bound to a context) and streams. ``confirm`` asks a yes/no question on the same
streams; the wiring hands it to commands that need an interactive approval (``revoke`` in the
demo) through ``CommandContext.confirm``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable
from typing import TextIO

from chatbot.console_text import row_menus, to_text
from chatbot.render import Message
from chatbot.task_actions import command_for, parse_value, worker_command

logger = logging.getLogger(__name__)

EXIT_WORDS = frozenset({"quit", "exit", "q", ":q"})
YES_WORDS = frozenset({"y", "yes"})
BANNER = "celery-chatops console: type help for the commands, quit to leave."
# `details 3`, `revoke 3`, `retry 3` ... act on row 3 of the last list (its menu's choices).
_ROW_ACTION = re.compile(
    r"^(details|revoke|terminate|retry|traceback|grow|shrink|shutdown)\s+(\d{1,3})$", re.I
)


class Console:
    def __init__(
        self,
        run_command: Callable[[str], Message],
        stdin: TextIO,
        stdout: TextIO,
        prompt: str = "celery> ",
        confirm: Callable[[str], bool] | None = None,
        banner: str | None = BANNER,
    ) -> None:
        self.run_command = run_command
        self.stdin = stdin
        self.stdout = stdout
        self.prompt = prompt
        self.banner = banner
        self._confirm = confirm
        # The menus of the last answer that had rows: what `revoke 3` refers to.
        self.rows: list[list[str]] = []
        # A real terminal gets line editing and history (readline, through input()).
        self._terminal = stdin is sys.stdin and stdin.isatty()
        if self._terminal:
            # Not on every platform; the console works without it.
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (imported for its side effect on input())

    def confirm(self, question: str) -> bool:
        """Ask a yes/no question; anything but yes (including end of input) is no."""
        if self._confirm is not None:
            return self._confirm(question)
        answer = self._read_line(f"{question} [y/N] ")
        if not answer:
            self._write("\n")
            return False
        return answer.strip().lower() in YES_WORDS

    def run_once(self, line: str) -> bool:
        """Run one typed line; False when it asked to leave."""
        text = line.strip()
        if not text:
            return True
        if text.lower() in EXIT_WORDS:
            return False
        row_action = _ROW_ACTION.match(text)
        if row_action is not None:
            command = self._row_command(row_action.group(1).lower(), int(row_action.group(2)))
            if command is None:
                return True
            self._write(f"/celery {command}\n")
            text = command
        try:
            message = self.run_command(text)
        except Exception as exc:
            # The dispatcher already turns failures into messages; this guards the wiring.
            logger.exception("console command failed: %s", text)
            self._write(f"error: {type(exc).__name__}: {exc}\n")
            return True
        menus = row_menus(message)
        if menus:
            self.rows = menus
        self._write(to_text(message, numbered=bool(menus)))
        return True

    def _row_command(self, verb: str, number: int) -> str | None:
        """The command ``verb`` stands for on row ``number`` of the last list (None: said why)."""
        if not 1 <= number <= len(self.rows):
            shown = f"the last list had {len(self.rows)}" if self.rows else "no list shown yet"
            self._write(f"no row {number} ({shown})\n")
            return None
        offered = self.rows[number - 1]
        for value in offered:
            if value.split(":", 1)[0] != verb:
                continue
            chosen = parse_value(value)
            command = command_for(chosen) if chosen else worker_command(value)
            if command is not None:
                return command
        verbs = ", ".join(value.split(":", 1)[0] for value in offered)
        self._write(f"row {number} offers: {verbs}\n")
        return None

    def run(self) -> int:
        """The read-eval-print loop, until quit, exit, end of input or Ctrl-C; returns 0."""
        if self.banner:
            self._write(self.banner + "\n")
        while True:
            try:
                line = self._read_line(self.prompt)
            except KeyboardInterrupt:
                self._write("\n")
                return 0
            if not line:  # end of input
                self._write("\n")
                return 0
            try:
                if not self.run_once(line):
                    return 0
            except KeyboardInterrupt:
                self._write("\ninterrupted\n")

    def _read_line(self, prompt: str) -> str:
        """One line with its newline; "" at end of input."""
        if self._terminal:
            try:
                return input(prompt) + "\n"  # line editing and history
            except EOFError:
                return ""
        self._write(prompt)
        return self.stdin.readline()

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
