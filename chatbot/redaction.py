"""Redaction and truncation of task payloads: applied at ingest, and again on the way out.

Everything a task sends is a string the bot did not write: Celery's ``args``/``kwargs`` reprs
(cut at 1024 characters by the worker), the result's repr, the exception text, the traceback.
A secret can sit in any of them, in any of these forms:

- a keyword argument or dictionary key that names a secret (``CHATOPS_REDACT_KEYS``):
  ``password=hunter2``, ``password: hunter2``, ``{'password': 'hunter2'}``, ``"token": "..."``;
- credentials in a URL: ``redis://user:hunter2@host``;
- a header: ``Authorization: Bearer ...``, ``Authorization: Basic ...``, ``Bearer ...``;
- a token with a well-known shape whatever it is called: Slack (``xoxb-``, ``xapp-``...), AWS
  access key ids, GitHub tokens, JSON Web Tokens, PEM private-key blocks.

:class:`Redactor` replaces the secret part and keeps the rest readable. It runs once at ingest
(so a secret never even sits in memory or in the state store) and :func:`scrub` runs again
on every task-derived string on its way out (Slack, the API, the audit log, the bot's logs),
so a value that reached the store some other way (an older record, a bug) is still caught.

The shapes follow what secret scanners look for (e.g. the plugins of detect-secrets: keyword
assignments, URL basic auth, AWS, GitHub, Slack, JWT, private keys); the patterns are written
here for reprs and log text, not source files. Every quantifier is bounded, so a hostile string
cannot make a pattern backtrack for long, and a pre-check keeps the common case (no marker
anywhere) to one ``lower()`` and one search: this runs for every received task.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

REDACTED = "'[redacted]'"
# How far past what is kept a secret's key may stand and still be found (see clipped()).
_WINDOW_MARGIN = 512
REDACTED_TEXT = "[redacted]"
WITHHELD = "[withheld: mentions a redacted key and could not be parsed]"
ELLIPSIS = "…"

# The keys redacted when no configuration says otherwise (config.py's CHATOPS_REDACT_KEYS
# default is the same list).
DEFAULT_KEYS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "credentials",
)

# Lower-case substrings that must appear somewhere for a token pattern to match. The URL
# pattern needs "://" and "@" both; see _mentions_token.
_TOKEN_MARKERS = (
    "xox",
    "xapp-",
    "akia",
    "asia",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "eyj",
    "private key",
    "bearer",
)

# Well-known token shapes, replaced whole.
_TOKENS = re.compile(
    r"""
      \bx(?:ox[abposre]|app)-[A-Za-z0-9-]{6,300}                 # Slack bot/user/app tokens
    | \b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b  # AWS access key ids
    | \bgh[pousr]_[A-Za-z0-9_]{30,255}                         # GitHub tokens
    | \bgithub_pat_[A-Za-z0-9_]{30,255}                        # GitHub fine-grained tokens
    | \beyJ[A-Za-z0-9_-]{5,2000}\.eyJ[A-Za-z0-9_-]{2,8000}(?:\.[A-Za-z0-9_-]{0,2000})?  # JWT
    | -----BEGIN[A-Z ]{0,40}PRIVATE\ KEY(?:\ BLOCK)?-----
      (?:[\s\S]{0,20000}?-----END[A-Z ]{0,40}PRIVATE\ KEY(?:\ BLOCK)?-----|[\s\S]{0,20000})
    """,
    re.VERBOSE,
)
# ``Bearer abc``: the scheme stays, the credential goes. (``Basic`` and ``token`` are ordinary
# words in prose; after ``Authorization:`` the keyword pattern takes them.) No ``\b``: a
# pattern that must start at a word boundary is dodged by gluing a letter in front.
_AUTH_SCHEME = re.compile(r"(?i)(bearer)(\s{1,10})(?!\[redacted\])[A-Za-z0-9._~+/=-]{4,4000}")
# ``scheme://user:password@host``: the password goes, the user and host stay.
_URL_CREDENTIALS = re.compile(
    r"(?i)([a-z][a-z0-9+.-]{0,30}://[^\s:/?#@'\"]{0,256}):([^\s@/?#'\"]{1,1024})@"
)


@dataclass(frozen=True, slots=True)
class FieldLimits:
    """Caps in characters, so memory is bounded in bytes as well as in count."""

    args: int = 1024
    kwargs: int = 1024
    result: int = 1024
    exception: int = 1024
    traceback: int = 4096  # keeps the last lines: the raising frame is at the end


class Redactor:
    """Removes secrets from the strings a task sends (see the module notes for the forms)."""

    def __init__(self, keys: Iterable[str] = DEFAULT_KEYS) -> None:
        self.keys = tuple(sorted({k.strip().lower() for k in keys if k.strip()}))
        words = "|".join(re.escape(k) for k in self.keys)
        self._sensitive = re.compile(words, re.IGNORECASE) if self.keys else None
        # A quoted dictionary key that mentions a sensitive word: ``'db_password':``.
        self._quoted_key = (
            re.compile(r"""['"][^'"]{0,200}(?:""" + words + r""")[^'"]{0,200}['"]\s*:""", re.I)
            if self.keys
            else None
        )
        # ``key = value``, ``key: value``, ``'key': 'value'``, ``"key": "value"``, ``?key=v&``
        # where the key mentions a sensitive word. The value is a quoted string (to its closing
        # quote, or to the end when the repr was cut), or a bare run up to a delimiter. The key
        # group keeps its own quote so the output stays a well-formed repr.
        self._assignment = (
            re.compile(
                r"""(?P<key>[\w.-]{0,60}(?:""" + words + r""")[\w.-]{0,60}['"]?)"""
                r"""(?P<sep>\s{0,5}(?:=|:)\s{0,5})"""
                r"""(?P<value>\[redacted\]"""  # already done: stays as it is (idempotent)
                r"""|'[^'\n]{0,4000}(?:'|$)|"[^"\n]{0,4000}(?:"|$)"""
                r"""|(?:bearer|basic|token|digest)\s{1,10}(?:\[redacted\]|[^\s,;&)}\['"]{1,4000})"""
                r"""|(?!\s)[^\s,;&)}\['"]{1,4000})""",
                re.IGNORECASE,
            )
            if self.keys
            else None
        )

        # The one look every string gets: any keyword, token marker or "://" at all? Searched
        # in the lower-cased text with one compiled alternation of literals, which measured
        # faster than a loop of ``in`` tests or a case-insensitive pattern (bench.events'
        # args and kwargs); only a string that has one goes on to the patterns. The
        # alternation is written as a prefix tree (``a(?:kia|pi(?:_key|key)|...)``): the same
        # literals, but a position is ruled out after one or two characters instead of one
        # try per literal (~35 % less time on args, kwargs and a fleet's tracebacks).
        markers = (*self.keys, *_TOKEN_MARKERS, "://")
        self._any_marker = re.compile(_prefix_tree(markers))

    def _mentions_key(self, lowered: str) -> bool:
        # A plain substring test first: it is several times faster than the case-insensitive
        # regex, and it runs on every received task's args and kwargs.
        return any(key in lowered for key in self.keys)

    def is_sensitive(self, key: str) -> bool:
        return self._sensitive is not None and self._sensitive.search(key) is not None

    def text(self, value: Any) -> str | None:
        """Any task-derived text (result, exception, traceback, a repr) with secrets replaced."""
        if value is None:
            return None
        text = value if isinstance(value, str) else str(value)
        lowered = text.lower()
        if self._any_marker.search(lowered) is None:
            return text  # the common case: nothing that could be a secret
        # Token shapes first: ``token=xoxb-...`` then reads ``token=[redacted]``, which the
        # keyword pattern leaves as it is.
        if _mentions_token(lowered):
            text = _scrub_tokens(text)
        if self._mentions_key(lowered) and self._assignment is not None:
            text = self._assignment.sub(_replace_value, text)
        return text

    def clipped(self, value: Any, limit: int) -> str | None:
        """:meth:`text` of the first ``limit`` characters, cut with :func:`clip`.

        Only a window a little wider than what is kept is searched (a task can send megabytes;
        searching them all would cost ingest far more than it could show), wide enough that
        a key cut off at the window's edge cannot leave its value readable in what is kept.
        """
        if value is None:
            return None
        text = value if isinstance(value, str) else str(value)
        return clip(self.text(text[: limit + _WINDOW_MARGIN]), limit)

    def clipped_tail(self, value: Any, limit: int) -> str | None:
        """:meth:`text` of the last ``limit`` characters, cut with :func:`clip_tail`."""
        if value is None:
            return None
        text = value if isinstance(value, str) else str(value)
        return clip_tail(self.text(text[-(limit + _WINDOW_MARGIN) :]), limit)

    def kwargs(self, value: Any) -> str | None:
        """The kwargs repr with sensitive values replaced."""
        if value is None:
            return None
        if isinstance(value, dict):
            return self.text(repr(self._redact_mapping(value)))
        text = value if isinstance(value, str) else repr(value)
        lowered = text.lower()
        if self._any_marker.search(lowered) is None:
            return text
        if self._mentions_key(lowered):
            parsed = _literal(text)
            if isinstance(parsed, dict):
                text = repr(self._redact_mapping(parsed))
            elif parsed is _UNPARSEABLE and self._quoted_key_in(text):
                return WITHHELD
        return self.text(text)

    def args(self, value: Any) -> str | None:
        """The args repr with sensitive values of any dictionary inside replaced, and any
        secret in a positional string (``'password=hunter2'``) removed."""
        if value is None:
            return None
        text = value if isinstance(value, str) else repr(value)
        lowered = text.lower()
        if self._any_marker.search(lowered) is None:
            return text
        if self._mentions_key(lowered) and self._quoted_key_in(text):
            parsed = _literal(text)
            if parsed is _UNPARSEABLE:
                return WITHHELD
            text = repr(self._redact_any(parsed))
        return self.text(text)

    def _quoted_key_in(self, text: str) -> bool:
        return self._quoted_key is not None and self._quoted_key.search(text) is not None

    def _redact_mapping(self, mapping: dict[Any, Any]) -> dict[Any, Any]:
        clean: dict[Any, Any] = {}
        for key, item in mapping.items():
            if isinstance(key, str) and self.is_sensitive(key):
                clean[key] = _Redacted()
            else:
                clean[key] = self._redact_any(item)
        return clean

    def _redact_any(self, value: Any) -> Any:
        if isinstance(value, dict):
            return self._redact_mapping(value)
        if isinstance(value, list):
            return [self._redact_any(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._redact_any(v) for v in value)
        return value


def _replace_value(match: re.Match[str]) -> str:
    value = match.group("value")
    if value[:1] in {"'", '"'}:
        quote = value[0]
        closed = len(value) > 1 and value.endswith(quote)
        replacement = f"{quote}{REDACTED_TEXT}{quote if closed else ''}"
    else:
        replacement = REDACTED_TEXT
    return f"{match.group('key')}{match.group('sep')}{replacement}"


def _prefix_tree(literals: Iterable[str]) -> str:
    """A pattern that matches where any of ``literals`` starts (for ``search``: it stops at
    the shortest literal where one is the prefix of another, which is a match all the same)."""
    by_first: dict[str, list[str]] = {}
    for literal in sorted(set(literals)):
        if literal:
            by_first.setdefault(literal[0], []).append(literal[1:])
    branches = []
    for first, rests in by_first.items():
        if "" in rests:  # the literal ends here: longer ones add nothing to a search
            branches.append(re.escape(first))
        elif len(rests) == 1:
            branches.append(re.escape(first + rests[0]))
        else:
            branches.append(f"{re.escape(first)}(?:{_prefix_tree(rests)})")
    return "|".join(branches)


def _mentions_token(lowered: str) -> bool:
    if "://" in lowered and "@" in lowered:
        return True
    return any(marker in lowered for marker in _TOKEN_MARKERS)


def _scrub_tokens(text: str) -> str:
    text = _TOKENS.sub(REDACTED_TEXT, text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED_TEXT}", text)
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}:{REDACTED_TEXT}@", text)


_DEFAULT = Redactor(DEFAULT_KEYS)


def scrub(value: Any, redactor: Redactor | None = None) -> str:
    """The second look on the way out: ``value`` as text with every secret form replaced.

    Idempotent and cheap when nothing looks like a secret; ``redactor`` carries the configured
    keys where the caller has them (the default keys otherwise).
    """
    text = value if isinstance(value, str) else str(value)
    return (redactor or _DEFAULT).text(text) or ""


class _Redacted:
    def __repr__(self) -> str:
        return REDACTED


_UNPARSEABLE = object()


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _UNPARSEABLE


def clip(value: Any, limit: int) -> str | None:
    """At most ``limit`` characters, marking a cut with an ellipsis."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + ELLIPSIS


def clip_tail(value: Any, limit: int) -> str | None:
    """The last ``limit`` characters, starting at a line boundary where possible."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    tail = text[-(limit - 2) :]
    newline = tail.find("\n")
    if 0 <= newline < len(tail) // 2:
        tail = tail[newline + 1 :]
    return ELLIPSIS + "\n" + tail
