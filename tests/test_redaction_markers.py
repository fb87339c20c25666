"""The redactor's first look (any marker at all?) is a prefix tree of the markers: it must find
a marker exactly where the plain alternation of the same literals does."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot.redaction import _TOKEN_MARKERS, DEFAULT_KEYS, Redactor, _prefix_tree

_MARKERS = (*DEFAULT_KEYS, *_TOKEN_MARKERS, "://")
_FLAT = re.compile("|".join(re.escape(m) for m in _MARKERS))
# Text built from pieces of the markers, so near misses (``passw``, ``gh_``, ``:/``) are common.
_PIECES = st.sampled_from(
    [m[:cut] for m in _MARKERS for cut in range(1, len(m) + 1)] + [" ", "x", "_", "-", "é"]
)


@settings(max_examples=500)
@given(st.lists(_PIECES, max_size=30).map("".join))
def test_the_prefix_tree_finds_a_marker_exactly_where_the_alternation_does(text: str) -> None:
    tree = Redactor(DEFAULT_KEYS)._any_marker
    assert (tree.search(text) is None) == (_FLAT.search(text) is None)


def test_a_literal_that_is_the_prefix_of_another_still_matches() -> None:
    pattern = re.compile(_prefix_tree(["ab", "abc", "b:/"]))
    assert pattern.search("xxab") is not None
    assert pattern.search("xb:/") is not None
    assert pattern.search("a b") is None
