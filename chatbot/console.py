"""The terminal face: the same `/celery` commands, typed at a prompt and rendered as text.

It knows nothing about the store or Slack: it is given ``run_command(text) -> Message`` (the
dispatcher bound to a context) and streams. ``confirm`` asks a yes/no question on the same
streams; the wiring hands it to commands that need an interactive approval (``revoke`` in the
demo) through ``CommandContext.confirm``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TextIO

from chatbot.console_text import to_text
from chatbot.render import Message

logger = logging.getLogger(__name__)

EXIT_WORDS = frozenset({"quit", "exit", "q", ":q"})
YES_WORDS = frozenset({"y", "yes"})
BANNER = "celery-chatops console: type help for the commands, quit to leave."


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

    def confirm(self, question: str) -> bool:
        """Ask a yes/no question; anything but yes (including end of input) is no."""
        if self._confirm is not None:
            return self._confirm(question)
        self._write(f"{question} [y/N] ")
        answer = self.stdin.readline()
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
        try:
            message = self.run_command(text)
        except Exception as exc:
            # The dispatcher already turns failures into messages; this guards the wiring.
            logger.exception("console command failed: %s", text)
            self._write(f"error: {type(exc).__name__}: {exc}\n")
            return True
        self._write(to_text(message))
        return True

    def run(self) -> int:
        """The read-eval-print loop, until quit, exit, end of input or Ctrl-C; returns 0."""
        if self.banner:
            self._write(self.banner + "\n")
        while True:
            self._write(self.prompt)
            try:
                line = self.stdin.readline()
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

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
