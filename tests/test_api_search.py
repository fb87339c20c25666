"""Flower's search syntax over task records, and the declared-parameter parsing the API uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatbot.api.search import MAX_QUERY_LENGTH, QuerySyntaxError, compile_query
from chatbot.api.spec import ApiError, Param, parse_params
from chatbot.model import Task

CHARGE = Task(
    uuid="3f2a9c1e-0000-4000-8000-000000000001",
    name="shop.charge_card",
    state="FAILURE",
    worker="celery@web-1",
    args="(8812, 'EUR')",
    kwargs="{'order_id': 8812, 'Region': 'eu-west-1'}",
    result=None,
)
RECEIPT = Task(
    uuid="7b1d0f2a-0000-4000-8000-000000000002",
    name="shop.send_receipt",
    state="SUCCESS",
    worker="celery@web-2",
    args="('alice@example.com',)",
    kwargs="{}",
    result="'sent'",
)


def matching(query: str) -> list[str]:
    match = compile_query(query)
    return [task.name or "" for task in (CHARGE, RECEIPT) if match(task)]


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("", ["shop.charge_card", "shop.send_receipt"]),
        ("charge", ["shop.charge_card"]),
        ("SHOP", ["shop.charge_card", "shop.send_receipt"]),  # case-insensitive
        ("state:failure", ["shop.charge_card"]),
        ("state:fail", []),  # state is exact
        ("name:receipt worker:web-2", ["shop.send_receipt"]),
        ("kwargs:order_id=8812", ["shop.charge_card"]),
        ("kwargs:region=EU-WEST-1", ["shop.charge_card"]),  # pairs are normalized too
        ("kwargs:order_id=881", []),  # a pair is exact, not a substring
        ("args:8812 OR result:sent", ["shop.charge_card", "shop.send_receipt"]),
        ("args:8812 AND result:sent", []),
        ('"alice@example"', ["shop.send_receipt"]),
        ("(charge OR receipt) state:success", ["shop.send_receipt"]),
        ("3f2a9c1e", ["shop.charge_card"]),  # a bare term looks in the uuid
        ("unknown:word", []),  # not a qualifier: the whole term is a substring
    ],
)
def test_queries_match_as_flower_documents_them(query: str, names: list[str]) -> None:
    assert matching(query) == names


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("NOT charge", "NOT is not supported"),
        ("-charge", "Negation with '-' is not supported"),
        ("ab", "at least 3 characters"),
        ('"unterminated', "Unterminated quoted phrase"),
        ("charge OR", "OR must be followed by a search term"),
        ("((((((charge))))))", "nesting exceeds 5 levels"),
        ("(charge", "Missing closing parenthesis"),
        ("()", "Empty group"),
        ("name:", "requires a value"),
        ("x" * (MAX_QUERY_LENGTH + 1), f"exceeds {MAX_QUERY_LENGTH} characters"),
        (" ".join(["word"] * 129), "exceeds 128 tokens"),
    ],
)
def test_bad_queries_say_why(query: str, reason: str) -> None:
    with pytest.raises(QuerySyntaxError, match=reason.replace("(", r"\(")):
        compile_query(query)


@given(st.text(max_size=300))
def test_any_text_either_compiles_or_is_a_syntax_error(query: str) -> None:
    try:
        match = compile_query(query)
    except QuerySyntaxError:
        return
    assert isinstance(match(CHARGE), bool) and isinstance(match(RECEIPT), bool)


def test_params_follow_flowers_rules() -> None:
    params = (
        Param("n", "integer", default=1),
        Param("terminate", "boolean", default=False),
        Param("queue", required=True),
        Param("worker", where="path", required=True),
    )
    typed = parse_params(params, {"worker": "celery@w1"}, {"n": ["2", " 4 "], "queue": ["q"]})
    assert typed == {"n": 4, "terminate": False, "queue": "q", "worker": "celery@w1"}
    assert (
        parse_params(params, {"worker": "w"}, {"terminate": ["yes"], "queue": ["q"]})["terminate"]
        is True
    )
    with pytest.raises(ApiError, match="Missing argument queue") as missing:
        parse_params(params, {"worker": "w"}, {"queue": [""]})
    assert missing.value.status == 400
    with pytest.raises(ApiError, match="Invalid argument 'maybe' of type 'bool'"):
        parse_params(params, {"worker": "w"}, {"terminate": ["maybe"], "queue": ["q"]})
    with pytest.raises(ApiError, match="of type 'float'"):
        parse_params((Param("soft", "number"),), {}, {"soft": ["nan"]})


def test_task_json_takes_a_second_look_for_secrets() -> None:
    # A record that bypassed ingest redaction still leaves the API without its secrets.
    from chatbot.api.serializers import task_dict

    leaky = Task(
        uuid="9c0d2b7e-0000-4000-8000-000000000003",
        name="shop.sync",
        state="FAILURE",
        args="('password=hunter2',)",
        kwargs="{'token': 'xoxb-1234567890-abcdefghij'}",
        result="redis://app:dbpass99@db:6379/0",
        exception="AuthError('api_key=AKIAIOSFODNN7EXAMPLE')",
        traceback="Traceback:\n  Authorization: Bearer tok.en.value\n",
    )
    shown = repr(task_dict(leaky))
    for secret in ("hunter2", "xoxb-1234567890", "dbpass99", "AKIAIOSFODNN7EXAMPLE", "tok.en"):
        assert secret not in shown, secret
    assert task_dict(leaky)["name"] == "shop.sync"
