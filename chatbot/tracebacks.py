"""Readable tracebacks: the frames an on-call engineer can act on, the exception, nothing else.

A Celery task's traceback opens with the worker's own frames (``celery/app/trace.py``) and, when
the task talks to a broker, carries runs of kombu/amqp frames in the middle; Python 3.11+ adds
``^^^^`` / ``~~~`` marker lines under most code lines. :func:`readable_traceback`:

- drops the marker lines (they point at columns of a line the reader already sees);
- folds every run of consecutive frames from the messaging framework (celery, kombu, billiard,
  vine, amqp, as installed packages) into one ``… N framework frames (celery)`` line, where N
  is the number of frames actually folded;
- keeps every other frame (the application's, and libraries' like redis-py), the chained
  exception separators and the exception lines as they are.

The text is whatever the store kept: it keeps the *tail* of a long traceback
(:func:`chatbot.redaction.clip_tail`, which starts it with ``…``), so the counts cover the
frames that are there, and ``clipped`` says frames before them were already cut.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from chatbot.redaction import ELLIPSIS

__all__ = ["FRAMEWORK_PACKAGES", "ReadableTraceback", "readable_traceback"]

FRAMEWORK_PACKAGES = ("celery", "kombu", "billiard", "vine", "amqp")

# ``  File "/path/x.py", line 12, in func`` with what precedes it kept (indent, and the ``|``
# of an exception group's sub-tracebacks).
_FRAME = re.compile(r'^(?P<lead>[ |]*)File "(?P<path>[^"]*)", line \d+(?P<function>, in )?')
# A line of only carets and tildes (Python 3.11+ position markers), after the lead.
_MARKER = re.compile(r"^[ |]*[\^~][\^~ ]*$")


@dataclass(frozen=True, slots=True)
class ReadableTraceback:
    text: str
    framework_frames: int  # frames folded into "… N framework frames" lines
    markers_dropped: int
    clipped: bool  # the traceback was already cut at its head before it got here


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" |"))


def _framework_package(path: str, packages: Sequence[str]) -> str | None:
    """The framework package an installed file belongs to (``site-packages/kombu/...``)."""
    parts = re.split(r"[\\/]", path)
    for index, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages") and parts[index + 1] in packages:
            return parts[index + 1]
    return None


def _folded(lead: str, packages: list[str]) -> str:
    count = len(packages)
    names = ", ".join(dict.fromkeys(packages))  # in order of appearance, once each
    plural = "" if count == 1 else "s"
    return f"{lead}{ELLIPSIS} {count} framework frame{plural} ({names})"


def readable_traceback(
    text: str, packages: Sequence[str] = FRAMEWORK_PACKAGES
) -> ReadableTraceback:
    lines = text.splitlines()
    out: list[str] = []
    folded = 0
    markers = 0
    run: list[str] = []  # packages of the framework frames in the current run
    run_lead = ""

    def flush() -> None:
        nonlocal folded
        if run:
            out.append(_folded(run_lead, run))
            folded += len(run)
            run.clear()

    clipped = bool(lines) and lines[0].strip() == ELLIPSIS
    seen_frame = False
    index = 0
    while index < len(lines):
        line = lines[index]
        frame = _FRAME.match(line)
        if frame is None:
            if clipped and not seen_frame and index > 0 and _MARKER.match(line):
                markers += 1  # under the code line of a frame whose head was cut
            else:
                flush()
                out.append(line)
            index += 1
            continue
        seen_frame = True
        # The frame's body: the more-indented lines under it (its code line, its markers).
        end = index + 1
        while end < len(lines) and _indent(lines[end]) > _indent(line) and lines[end].strip():
            if _FRAME.match(lines[end]):
                break
            end += 1
        body = lines[index + 1 : end]
        # A SyntaxError's "frame" (no function) points at the column that is wrong: its
        # caret line is the message, so it stays.
        droppable = frame.group("function") is not None
        kept = [text_line for text_line in body if not (droppable and _MARKER.match(text_line))]
        markers += len(body) - len(kept)
        package = _framework_package(frame.group("path"), packages)
        if package is not None:
            if not run:
                run_lead = frame.group("lead")
            run.append(package)
        else:
            flush()
            out.append(line)
            out.extend(kept)
        index = end
    flush()
    result = "\n".join(out)
    if text.endswith("\n"):
        result += "\n"
    return ReadableTraceback(result, folded, markers, clipped)
