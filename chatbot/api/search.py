"""Flower's task-search syntax (``GET /api/tasks?search=...``), over the store's task records.

The syntax is Flower 2.2's task filter, so a runbook's query means the same here:

- whitespace between terms is AND; ``AND`` and upper-case ``OR`` are explicit; parentheses
  group, at most five levels deep;
- ``"quoted phrases"`` (a backslash escapes ``"`` and ``\\``);
- qualifiers ``name:``, ``state:`` (exact), ``worker:``, ``args:``, ``kwargs:`` (``kwargs:k=v``
  is an exact key/value pair), ``result:``; a bare term looks in the uuid, name, state,
  worker, args, kwargs and result;
- substring terms need at least 3 characters; no negation (``NOT``, ``-term``); at most 2048
  characters and 128 tokens.

Matching is case-insensitive. The parser is a small recursive descent written here: the grammar
is a dozen lines, and no parsing library is a dependency of the bot.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from chatbot.model import Task

__all__ = ["MAX_QUERY_LENGTH", "QuerySyntaxError", "compile_query"]

FIELDS = frozenset({"name", "state", "worker", "args", "kwargs", "result"})
MIN_SUBSTRING = 3
MAX_QUERY_LENGTH = 2048
MAX_TOKENS = 128
MAX_DEPTH = 5

Predicate = Callable[[Task], bool]


class QuerySyntaxError(ValueError):
    """A query that cannot be parsed; ``str()`` says why and where (Flower's wording)."""

    def __init__(self, message: str, position: int | None = None) -> None:
        where = "" if position is None else f" at position {position}"
        super().__init__(f"{message}{where}.")


@dataclass(frozen=True)
class _Token:
    kind: str  # TERM, AND, OR, LPAREN, RPAREN, END
    text: str
    position: int


def _tokens(query: str) -> list[_Token]:
    found: list[_Token] = []

    def add(token: _Token) -> None:
        found.append(token)
        if len(found) > MAX_TOKENS:
            raise QuerySyntaxError(f"Query exceeds {MAX_TOKENS} tokens")

    i, n = 0, len(query)
    while i < n:
        char = query[i]
        if char.isspace():
            i += 1
            continue
        if char in "()":
            add(_Token("LPAREN" if char == "(" else "RPAREN", char, i))
            i += 1
            continue
        start, quoted, inside, text = i, False, False, []
        while i < n:
            char = query[i]
            if char == "\\" and i + 1 < n and query[i + 1] in '"\\':
                text.append(query[i + 1])
                i += 2
            elif char == '"':
                quoted, inside = True, not inside
                i += 1
            elif not inside and (char.isspace() or char in "()"):
                break
            else:
                text.append(char)
                i += 1
        if inside:
            raise QuerySyntaxError("Unterminated quoted phrase", start)
        word = "".join(text)
        if not word:
            raise QuerySyntaxError("Empty search term", start)
        if not quoted and word in ("AND", "OR"):
            add(_Token(word, word, start))
        elif not quoted and word == "NOT":
            raise QuerySyntaxError("NOT is not supported", start)
        else:
            add(_Token("TERM", word, start))
    found.append(_Token("END", "", n))
    return found


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.at = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def query(self) -> Predicate:
        if self.current.kind == "END":
            return lambda _task: True
        predicate = self.either(0)
        if self.current.kind != "END":
            raise QuerySyntaxError(f"Unexpected {self.current.text!r}", self.current.position)
        return predicate

    def either(self, depth: int) -> Predicate:
        options = [self.both(depth)]
        while self.current.kind == "OR":
            operator = self.take()
            if self.current.kind in ("END", "RPAREN", "AND", "OR"):
                raise QuerySyntaxError("OR must be followed by a search term", operator.position)
            options.append(self.both(depth))
        if len(options) == 1:
            return options[0]
        return lambda task: any(option(task) for option in options)

    def both(self, depth: int) -> Predicate:
        parts = [self.primary(depth)]
        while self.current.kind not in ("END", "RPAREN", "OR"):
            if self.current.kind == "AND":
                operator = self.take()
                if self.current.kind in ("END", "RPAREN", "AND", "OR"):
                    raise QuerySyntaxError(
                        "AND must be followed by a search term", operator.position
                    )
            parts.append(self.primary(depth))
        if len(parts) == 1:
            return parts[0]
        return lambda task: all(part(task) for part in parts)

    def primary(self, depth: int) -> Predicate:
        token = self.current
        if token.kind == "LPAREN":
            if depth >= MAX_DEPTH:
                raise QuerySyntaxError(f"Query nesting exceeds {MAX_DEPTH} levels", token.position)
            self.take()
            if self.current.kind == "RPAREN":
                raise QuerySyntaxError("Empty group", token.position)
            inner = self.either(depth + 1)
            if self.current.kind != "RPAREN":
                raise QuerySyntaxError("Missing closing parenthesis", token.position)
            self.take()
            return inner
        if token.kind != "TERM":
            raise QuerySyntaxError("Expected a search term", token.position)
        self.take()
        return _term(token)


def _text(value: object) -> str:
    return "" if value is None else str(value).casefold()


def _anywhere(task: Task, wanted: str) -> bool:
    values = (task.uuid, task.name, task.state, task.worker, task.args, task.kwargs, task.result)
    return any(wanted in _text(value) for value in values)


def _kwargs_pairs(kwargs: str | None) -> frozenset[str]:
    """``{"k=v", ...}`` from a kwargs repr; empty when it is not a dict literal (cut, redacted)."""
    if not kwargs:
        return frozenset()
    try:
        # Celery's reprs are at most 1 KiB (argsrepr_maxsize); literal_eval never runs code.
        parsed = ast.literal_eval(kwargs)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return frozenset()
    if not isinstance(parsed, dict):
        return frozenset()
    return frozenset(f"{_text(key)}={_text(item)}" for key, item in parsed.items())


def _term(token: _Token) -> Predicate:
    field: str | None = None
    value = token.text
    if ":" in value:
        head, rest = value.split(":", 1)
        if head.casefold() in FIELDS:
            field, value = head.casefold(), rest
    if field is None and value.startswith("-"):
        raise QuerySyntaxError("Negation with '-' is not supported", token.position)
    if not value:
        raise QuerySyntaxError("Search qualifier requires a value", token.position)
    wanted = value.casefold()
    if field == "state":
        return lambda task: _text(task.state) == wanted
    if field == "kwargs" and "=" in wanted:
        key, item = wanted.split("=", 1)
        pair = f"{key.strip()}={item.strip()}"
        return lambda task: pair in _kwargs_pairs(task.kwargs)
    if len(value.strip()) < MIN_SUBSTRING:
        raise QuerySyntaxError(
            f"Substring search terms must contain at least {MIN_SUBSTRING} characters",
            token.position,
        )
    if field is None:
        return lambda task: _anywhere(task, wanted)
    name = field
    return lambda task: wanted in _text(getattr(task, name))


def compile_query(query: str) -> Predicate:
    """A predicate over tasks for ``query``; QuerySyntaxError when it is not valid."""
    text = (query or "").strip()
    if len(text) > MAX_QUERY_LENGTH:
        raise QuerySyntaxError(f"Query exceeds {MAX_QUERY_LENGTH} characters")
    return _compiled(text)


@lru_cache(maxsize=256)
def _compiled(text: str) -> Predicate:
    # A runbook polls with the same query: parse it once.
    return _Parser(_tokens(text)).query()
