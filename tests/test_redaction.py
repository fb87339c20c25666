"""Redaction of every secret form the contract lists, in every string a task sends.

Property-based: a secret drawn at random, put in one of the forms inside arbitrary text, never
survives :meth:`Redactor.text`, :func:`scrub` is idempotent, and nothing raises on any input.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chatbot.redaction import DEFAULT_KEYS, WITHHELD, Redactor, scrub

REDACTOR = Redactor(DEFAULT_KEYS)

# Secrets long and random enough that finding one in the output means it leaked, not that the
# surrounding text happened to contain it.
secrets = st.text(alphabet=string.ascii_letters + string.digits, min_size=12, max_size=40)
# Text around the secret: anything, including quotes, newlines and markup.
noise = st.text(max_size=60)

FORMS = [
    "password={s}",
    "password = {s}",
    "Password: {s}",
    "{{'password': '{s}'}}",
    '{{"api_key": "{s}"}}',
    "{{'db_password': '{s}', 'user': 'bob'}}",
    "connect(secret='{s}')",
    "https://example.com/cb?token={s}&page=2",
    "redis://bob:{s}@db.internal:6379/0",
    "amqp://guest:{s}@rabbit//",
    "Authorization: Bearer {s}",
    "authorization=Basic {s}",
    "headers={{'Authorization': 'Bearer {s}'}}",
    "Bearer {s}",
    "cookie: session={s}",
    "CREDENTIALS={s}",
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(secret=secrets, form=st.sampled_from(FORMS), before=noise, after=noise)
def test_a_secret_in_any_listed_form_never_survives(
    secret: str, form: str, before: str, after: str
) -> None:
    assume(secret not in before + " " + after)  # the noise itself must not carry it
    text = before + " " + form.format(s=secret) + " " + after
    assert secret not in (REDACTOR.text(text) or "")
    assert secret not in scrub(text)


TOKENS = [
    "xoxb-" + "1234567890-1234567890-" + "a" * 24,
    "xoxp-1111-2222-3333-" + "b" * 32,
    "xapp-1-A0123456789-1234567890-" + "c" * 64,
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "A1b2C3d4" * 5,
    "github_pat_" + "11ABCDEFG0" * 5,
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
]


@pytest.mark.parametrize("token", TOKENS)
def test_well_known_token_shapes_are_removed_whatever_they_are_called(token: str) -> None:
    for text in (token, f"failed with {token} in the header", f"('{token}', 3)"):
        assert token not in scrub(text)


def test_private_key_blocks_are_removed_even_when_cut_short() -> None:
    body = "MIIEowIBAAKCAQEA7xq" * 20
    whole = f"key=-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----\nnext line"
    cut = f"loading -----BEGIN OPENSSH PRIVATE KEY-----\n{body[:100]}"
    assert body[:40] not in scrub(whole) and "next line" in scrub(whole)
    assert body[:40] not in scrub(cut)


def test_positional_arguments_results_and_exceptions_are_covered() -> None:
    assert "hunter2" not in (REDACTOR.args("('password=hunter2', 3)") or "")
    assert "hunter2" not in (REDACTOR.args("({'password': 'hunter2'},)") or "")
    assert "s3cr3t" not in (REDACTOR.text("{'password': 's3cr3t', 'ok': True}") or "")
    exc = "ConnectionError('login failed for api_key=AbC123xyz789 at host')"
    assert "AbC123xyz789" not in (REDACTOR.text(exc) or "")
    tb = 'Traceback (most recent call last):\n  File "t.py", line 3\n    token = "tk_live_9"\n'
    assert "tk_live_9" not in (REDACTOR.text(tb) or "")


def test_what_is_not_secret_stays_readable() -> None:
    for text in (
        "CardDeclined('card 8773 declined by issuer (do_not_honor) for 14813 cents')",
        "KeyError: 'password'",
        "(1, 2, 'https://example.com/a/b?page=2')",
        "{'user': 'bob', 'amount': 1200}",
    ):
        assert REDACTOR.text(text) == text
        assert scrub(text) == text


def test_kwargs_keep_their_repr_shape_and_unparseable_quoted_keys_are_withheld() -> None:
    assert REDACTOR.kwargs("{'password': 'x', 'n': 1}") == "{'password': '[redacted]', 'n': 1}"
    assert REDACTOR.kwargs("{'password': <object at 0x1>, 'n': 1}") == WITHHELD
    assert REDACTOR.kwargs({"db": {"token": "abc"}}) == "{'db': {'token': '[redacted]'}}"


def test_configured_keys_extend_the_keyword_forms() -> None:
    custom = Redactor(("pin",))
    assert "4321" not in (custom.text("pin=4321") or "")
    # The token shapes apply whatever the configured keys are.
    assert "AKIAIOSFODNN7EXAMPLE" not in (custom.text("AKIAIOSFODNN7EXAMPLE") or "")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_scrub_never_raises_and_is_idempotent(text: str) -> None:
    once = scrub(text)
    assert scrub(once) == once


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="password=:'\"{}[]() @/xob-AKI", max_size=300))
def test_args_and_kwargs_never_raise_on_hostile_reprs(text: str) -> None:
    for result in (REDACTOR.args(text), REDACTOR.kwargs(text), REDACTOR.text(text)):
        assert isinstance(result, str)


def test_a_long_hostile_string_is_handled_in_bounded_work() -> None:
    # Patterns with unbounded repetition could backtrack for minutes on this; bounded ones
    # finish (pytest-timeout bounds a hang, this asserts only the result).
    hostile = "password" + "=" * 50_000 + "'" * 50_000 + "redis://" + "a:" * 20_000
    assert isinstance(scrub(hostile), str)


def test_clipped_windows_search_past_the_cut_and_stay_bounded() -> None:
    # A key whose value starts right at the edge of what is kept is still found.
    head = "x" * 1000 + " password=" + "hunter2secret" + " tail"
    kept = REDACTOR.clipped(head, 1015) or ""
    assert "hunter2" not in kept and len(kept) == 1015
    tail = "password=" + "q" * 30 + "hunter2secret" + "\n" + "frame\n" * 600
    kept_tail = REDACTOR.clipped_tail(tail, 3600) or ""
    assert "hunter2" not in kept_tail and len(kept_tail) <= 3600
    # A megabyte of hostile text costs a window's worth of searching, not a megabyte's.
    huge = ("<https://evil.example|x> @U1 password " * 40_000)[:1_500_000]
    assert len(REDACTOR.clipped_tail(huge, 4096) or "") <= 4096
