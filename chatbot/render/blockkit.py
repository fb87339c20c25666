"""Block Kit's limits, in one place: the enforcer that makes any document fit them and the
validator that reports what breaks them.

:func:`fit_message` is what the renderer applies to every template's output: counts, lengths,
ids and the cumulative text budget; a list that does not fit is paged with a "N more" hint
instead of being dropped silently. :func:`validate_blocks` checks blocks against the same
limits and answers as Slack's ``invalid_blocks`` does (one message per problem, with a JSON
pointer); the local Slack Web API stand-in (``tests/support/slack_api.py``) rejects posts with
it, so enforcer and stand-in cannot drift apart. The tests hold both to an independent oracle,
``slack_sdk.models.blocks``.

This module knows block *types* and their limits, never a particular message's layout (that
lives in ``templates/``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from chatbot.render.text import ELLIPSIS, entity_safe_end

# -- the limits (the *_max_length fields of slack_sdk.models.blocks, and Slack's 50 blocks) ----
MESSAGE_MAX_BLOCKS = 50
VIEW_MAX_BLOCKS = 100  # Home tab and modals
SECTION_TEXT_MAX = 3000
SECTION_FIELDS_MAX = 10
FIELD_TEXT_MAX = 2000
HEADER_TEXT_MAX = 150
CONTEXT_ELEMENTS_MAX = 10
CONTEXT_TEXT_MAX = 3000
MARKDOWN_BLOCK_MAX = 12000
ACTIONS_ELEMENTS_MAX = 25
BUTTON_TEXT_MAX = 75
BUTTON_VALUE_MAX = 2000
BUTTON_URL_MAX = 3000
BUTTON_STYLES = ("primary", "danger")
IMAGE_ALT_TEXT_MAX = 2000
IMAGE_URL_MAX = 3000
ID_MAX = 255  # action_id and block_id
# Slack cuts a message's `text` beyond 40,000 characters.
SLACK_TEXT_MAX = 40_000
# A notification preview needs far less than SLACK_TEXT_MAX.
FALLBACK_TEXT_MAX = 3000
# chat.postMessage rejects messages whose block texts add up to about 12,000 characters
# (msg_blocks_too_long, slackapi/bolt-js#2509 and #2867: rejected even at 11,341); keep a margin.
MESSAGE_TEXT_BUDGET = 10000
# The block types Slack accepts in messages and views; the enforcer passes unknown ones through
# (it may not know a newer type), the validator rejects them as Slack's older API would.
BLOCK_TYPES = frozenset(
    {
        "actions",
        "context",
        "divider",
        "file",
        "header",
        "image",
        "input",
        "markdown",
        "rich_text",
        "section",
        "table",
        "video",
    }
)
TEXT_OBJECT_TYPES = ("plain_text", "mrkdwn")

ITEM_BLOCK_PREFIX = "item-"
MORE_BLOCK_ID = "more"
DEFAULT_NARROW_HINT = "narrow with --limit, --name or --since"


# -- the enforcer ------------------------------------------------------------------------------
def _fit_text(text: str, limit: int) -> str:
    """Cut mrkdwn text to ``limit`` without splitting an entity or leaving a code span open."""
    if len(text) <= limit:
        return text
    suffix = ""
    for _ in range(3):  # the suffix depends on the cut and the cut on the suffix: settle it
        kept = text[: entity_safe_end(text, max(0, limit - len(suffix) - len(ELLIPSIS)))]
        needed = _closing_suffix(kept)
        if needed == suffix:
            return kept + ELLIPSIS + suffix
        suffix = needed
    # Not settled (a run of backticks flips the suffix with each cut): reserve the longest one.
    kept = text[: entity_safe_end(text, max(0, limit - len(_LONGEST_SUFFIX) - len(ELLIPSIS)))]
    return kept + ELLIPSIS + _closing_suffix(kept)


_LONGEST_SUFFIX = "`\n```"


def _closing_suffix(kept: str) -> str:
    """What closes the code span and code block that ``kept`` leaves open."""
    fences = kept.count("```")
    singles = kept.replace("```", "").count("`")
    return ("`" if singles % 2 else "") + ("\n```" if fences % 2 else "")


def _fit_text_object(obj: Any, limit: int) -> dict[str, Any] | None:
    if not isinstance(obj, Mapping):
        return None
    fitted = dict(obj)
    text = str(fitted.get("text") or "")
    if not text.strip():
        return None  # Slack rejects empty text objects
    if fitted.get("type") not in TEXT_OBJECT_TYPES:
        fitted["type"] = "mrkdwn"
    fitted["text"] = _fit_text(text, limit)
    return fitted


def _fit_id(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)[:ID_MAX] or None


def _fit_image(image: Mapping[str, Any]) -> dict[str, Any] | None:
    """An image block or element: dropped without a usable URL, its alt text cut to fit."""
    fitted = dict(image)
    url = fitted.get("image_url")
    if "slack_file" not in fitted and (not isinstance(url, str) or len(url) > IMAGE_URL_MAX):
        return None  # a cut URL would point somewhere else
    alt_text = str(fitted.get("alt_text") or "").strip()
    if not alt_text:
        return None  # Slack requires it, and there is nothing honest to invent
    fitted["alt_text"] = _fit_text(alt_text, IMAGE_ALT_TEXT_MAX)
    return fitted


def _fit_element(element: Any) -> dict[str, Any] | None:
    """Interactive elements (buttons mostly): text, value, url and action_id within limits."""
    if not isinstance(element, Mapping):
        return None
    if element.get("type") == "image":
        return _fit_image(element)
    fitted = dict(element)
    if "action_id" in fitted:
        fitted["action_id"] = _fit_id(fitted["action_id"])
        if fitted["action_id"] is None:
            del fitted["action_id"]
    if fitted.get("type") == "button":
        label = _fit_text_object(fitted.get("text"), BUTTON_TEXT_MAX)
        if label is None:
            return None
        label["type"] = "plain_text"
        fitted["text"] = label
        if "value" in fitted:
            # A value is data, not prose: an ellipsis would corrupt it, so it is cut plainly.
            fitted["value"] = str(fitted["value"])[:BUTTON_VALUE_MAX]
        if "url" in fitted:
            fitted["url"] = str(fitted["url"])[:BUTTON_URL_MAX]
        if "style" in fitted and fitted["style"] not in BUTTON_STYLES:
            del fitted["style"]  # Slack rejects any other style; the default look is safe
    return fitted


def _fit_block(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One block made valid; may become zero blocks (nothing to show) or several (fields)."""
    fitted = dict(block)
    kind = fitted.get("type")
    if "block_id" in fitted:
        fitted["block_id"] = _fit_id(fitted["block_id"])
        if fitted["block_id"] is None:
            del fitted["block_id"]
    if kind == "header":
        text = _fit_text_object(fitted.get("text"), HEADER_TEXT_MAX)
        if text is None:
            return []
        text["type"] = "plain_text"
        text.pop("verbatim", None)
        fitted["text"] = text
        return [fitted]
    if kind == "section":
        text = _fit_text_object(fitted.get("text"), SECTION_TEXT_MAX)
        raw_fields = fitted.get("fields") or []
        fields = [
            f for f in (_fit_text_object(f, FIELD_TEXT_MAX) for f in raw_fields) if f is not None
        ]
        if "accessory" in fitted:
            accessory = _fit_element(fitted["accessory"])
            if accessory is None:
                del fitted["accessory"]
            else:
                fitted["accessory"] = accessory
        if text is None:
            fitted.pop("text", None)
        else:
            fitted["text"] = text
        if not fields:
            fitted.pop("fields", None)
            return [fitted] if text is not None else []
        # More than ten fields: carry the rest in following sections rather than drop them.
        fitted["fields"] = fields[:SECTION_FIELDS_MAX]
        out = [fitted]
        for start in range(SECTION_FIELDS_MAX, len(fields), SECTION_FIELDS_MAX):
            out.append({"type": "section", "fields": fields[start : start + SECTION_FIELDS_MAX]})
        return out
    if kind == "context":
        elements = []
        for element in fitted.get("elements") or []:
            if isinstance(element, Mapping) and element.get("type") in TEXT_OBJECT_TYPES:
                fitted_element = _fit_text_object(element, CONTEXT_TEXT_MAX)
                if fitted_element is not None:
                    elements.append(fitted_element)
            elif isinstance(element, Mapping) and element.get("type") == "image":
                image = _fit_image(element)
                if image is not None:
                    elements.append(image)
            # Anything else Slack does not accept in a context block: dropped.
        if not elements:
            return []
        if len(elements) > CONTEXT_ELEMENTS_MAX:
            # Merge the overflow into the last element so nothing vanishes.
            rest = elements[CONTEXT_ELEMENTS_MAX - 1 :]
            merged = " · ".join(str(e.get("text", "")) for e in rest if "text" in e)
            overflow = {"type": "mrkdwn", "text": _fit_text(merged or ELLIPSIS, CONTEXT_TEXT_MAX)}
            elements = [*elements[: CONTEXT_ELEMENTS_MAX - 1], overflow]
        fitted["elements"] = elements
        return [fitted]
    if kind == "actions":
        elements = [
            e for e in (_fit_element(e) for e in fitted.get("elements") or []) if e is not None
        ]
        if not elements:
            return []
        fitted["elements"] = elements[:ACTIONS_ELEMENTS_MAX]
        _unique_ids(fitted["elements"], "action_id")  # Slack rejects a repeat within a block
        return [fitted]
    if kind == "markdown":
        body = str(fitted.get("text") or "")
        if not body.strip():
            return []
        fitted["text"] = _fit_text(body, MARKDOWN_BLOCK_MAX)
        return [fitted]
    if kind == "image":
        image = _fit_image(fitted)
        return [image] if image is not None else []
    if kind == "divider":
        return [fitted]
    # Unknown types pass through: Slack knows more blocks than this enforcer does.
    return [fitted] if kind else []


def _text_size(node: Any) -> int:
    """Characters of every text in a block tree (what Slack's cumulative limit counts)."""
    if isinstance(node, Mapping):
        return sum(
            len(value) if key == "text" and isinstance(value, str) else _text_size(value)
            for key, value in node.items()
        )
    if isinstance(node, list):
        return sum(_text_size(value) for value in node)
    return 0


def _is_item(block: Mapping[str, Any]) -> bool:
    return str(block.get("block_id", "")).startswith(ITEM_BLOCK_PREFIX)


def _more_block(count: int, hint: str) -> dict[str, Any]:
    text = (
        f"{ELLIPSIS} {count} more not shown — {hint}"
        if count
        else f"{ELLIPSIS} cut to fit Slack's message limits"
    )
    return {
        "type": "context",
        "block_id": MORE_BLOCK_ID,
        "elements": [{"type": "mrkdwn", "text": text}],
    }


def _page(
    blocks: list[dict[str, Any]],
    over: Callable[[list[dict[str, Any]]], bool],
    more: int,
    narrow_hint: str,
) -> list[dict[str, Any]]:
    """Drop the last list items (then trailing blocks) until the message fits, with a hint.

    The hint goes right after the last item kept, so a footer after the list survives.
    """
    blocks = list(blocks)
    gap: int | None = None  # where the list ended, once items or the template's hint are gone
    for index in reversed(range(len(blocks))):
        if blocks[index].get("block_id") == MORE_BLOCK_ID:
            del blocks[index]
            gap = index
    dropped_items = dropped_other = 0
    while True:
        items = [i for i, b in enumerate(blocks) if _is_item(b)]
        trial = list(blocks)
        if more or dropped_items or dropped_other:
            position = items[-1] + 1 if items else (len(blocks) if gap is None else gap)
            trial.insert(min(position, len(blocks)), _more_block(more + dropped_items, narrow_hint))
        if not over(trial) or not blocks:
            return trial
        victim = items[-1] if items else len(blocks) - 1
        if items:
            dropped_items += 1
        else:
            dropped_other += 1
        del blocks[victim]
        gap = victim if gap is None else min(gap, victim)


def _unique_ids(items: list[dict[str, Any]], key: str) -> None:
    """Number repeats of ``items[i][key]`` (block_id, action_id): ``x``, ``x-2``, ``x-3``."""
    seen: set[str] = set()
    for item in items:
        value = item.get(key)
        if value is None:
            continue
        candidate, n = str(value), 2
        while candidate in seen:
            suffix = f"-{n}"
            candidate = str(value)[: ID_MAX - len(suffix)] + suffix
            n += 1
        item[key] = candidate
        seen.add(candidate)


def fit_message(
    document: Mapping[str, Any],
    *,
    max_blocks: int = MESSAGE_MAX_BLOCKS,
    text_budget: int | None = MESSAGE_TEXT_BUDGET,
    more: int = 0,
    narrow_hint: str = DEFAULT_NARROW_HINT,
) -> tuple[str, list[dict[str, Any]]]:
    """Make a rendered document valid Block Kit: returns ``(text, blocks)``.

    List entries are blocks whose ``block_id`` starts with ``item-``. When blocks must go (more
    than ``max_blocks``, or more text than ``text_budget``), the last items go first, and one
    "N more not shown" context replaces them (and replaces the template's own ``more`` block;
    ``more`` is how many the template already left out).
    """
    blocks: list[dict[str, Any]] = []
    for raw in document.get("blocks") or []:
        if isinstance(raw, Mapping):
            blocks.extend(_fit_block(raw))

    def over(candidate: list[dict[str, Any]]) -> bool:
        if len(candidate) > max_blocks:
            return True
        return text_budget is not None and _text_size(candidate) > text_budget

    if over(blocks):
        blocks = _page(blocks, over, more, narrow_hint)
    _unique_ids(blocks, "block_id")

    text = str(document.get("text") or "").strip()
    if not text:
        text = _first_text(blocks) or "celery-chatops"
    return _fit_text(text, FALLBACK_TEXT_MAX), blocks


def _first_text(blocks: Iterable[Mapping[str, Any]]) -> str:
    for block in blocks:
        text = block.get("text")
        if isinstance(text, Mapping) and text.get("text"):
            return str(text["text"])
    return ""


# -- the validator -----------------------------------------------------------------------------
# Messages read like Slack's invalid_blocks answers: "[ERROR] <problem> [json-pointer:<where>]".
def _error(problem: str, pointer: str) -> str:
    return f"[ERROR] {problem} [json-pointer:{pointer}]"


def _text_object_errors(
    obj: Any, pointer: str, limit: int, *, plain_only: bool = False
) -> list[str]:
    if not isinstance(obj, Mapping):
        return [_error("must be a text object", pointer)]
    allowed = ("plain_text",) if plain_only else TEXT_OBJECT_TYPES
    if obj.get("type") not in allowed:
        return [_error(f"must be one of {list(allowed)}", f"{pointer}/type")]
    text = obj.get("text")
    # Blank counts as empty: the enforcer drops blank texts, so one here is a bug upstream.
    if not isinstance(text, str) or not text.strip():
        return [_error("must be more than 0 characters", f"{pointer}/text")]
    if len(text) > limit:
        return [_error(f"must be less than {limit + 1} characters", f"{pointer}/text")]
    return []


def _string_errors(value: Any, pointer: str, limit: int) -> list[str]:
    """An optional string field (ids, values, urls): a string of at most ``limit`` characters."""
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        return [_error(f"must be less than {limit + 1} characters", pointer)]
    return []


def _element_errors(element: Any, pointer: str) -> list[str]:
    if not isinstance(element, Mapping) or not isinstance(element.get("type"), str):
        return [_error("missing required field: type", pointer)]
    errors = _string_errors(element.get("action_id"), f"{pointer}/action_id", ID_MAX)
    kind = element["type"]
    if kind == "button":
        errors += _text_object_errors(
            element.get("text"), f"{pointer}/text", BUTTON_TEXT_MAX, plain_only=True
        )
        errors += _string_errors(element.get("value"), f"{pointer}/value", BUTTON_VALUE_MAX)
        errors += _string_errors(element.get("url"), f"{pointer}/url", BUTTON_URL_MAX)
        if "style" in element and element["style"] not in BUTTON_STYLES:
            errors.append(_error(f"must be one of {', '.join(BUTTON_STYLES)}", f"{pointer}/style"))
    elif kind == "image":
        errors += _image_errors(element, pointer)
    return errors


def _image_errors(image: Mapping[str, Any], pointer: str) -> list[str]:
    errors: list[str] = []
    if "image_url" not in image and "slack_file" not in image:
        errors.append(_error("missing required field: image_url", pointer))
    errors += _string_errors(image.get("image_url"), f"{pointer}/image_url", IMAGE_URL_MAX)
    alt = image.get("alt_text")
    if not isinstance(alt, str) or not 0 < len(alt) <= IMAGE_ALT_TEXT_MAX:
        errors.append(
            _error(f"must be between 1 and {IMAGE_ALT_TEXT_MAX} characters", f"{pointer}/alt_text")
        )
    return errors


def _elements_errors(block: Mapping[str, Any], pointer: str, limit: int) -> list[str]:
    elements = block.get("elements")
    if not isinstance(elements, list) or not 1 <= len(elements) <= limit:
        return [_error(f"must provide between 1 and {limit} items", f"{pointer}/elements")]
    errors: list[str] = []
    action_ids: set[str] = set()
    for index, element in enumerate(elements):
        element_pointer = f"{pointer}/elements/{index}"
        if block["type"] == "context":
            if isinstance(element, Mapping) and element.get("type") == "image":
                errors += _image_errors(element, element_pointer)
            else:
                errors += _text_object_errors(element, element_pointer, CONTEXT_TEXT_MAX)
            continue
        errors += _element_errors(element, element_pointer)
        action_id = element.get("action_id") if isinstance(element, Mapping) else None
        if isinstance(action_id, str):
            if action_id in action_ids:
                errors.append(
                    _error(f"duplicate action_id {action_id}", f"{element_pointer}/action_id")
                )
            action_ids.add(action_id)
    return errors


def _block_errors(block: Any, pointer: str) -> list[str]:
    if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
        return [_error("missing required field: type", pointer)]
    kind = block["type"]
    if kind not in BLOCK_TYPES:
        return [_error(f"unsupported type: {kind}", f"{pointer}/type")]
    errors = _string_errors(block.get("block_id"), f"{pointer}/block_id", ID_MAX)
    if kind == "section":
        if "text" not in block and "fields" not in block:
            errors.append(_error("must provide either text or fields", pointer))
        if "text" in block:
            errors += _text_object_errors(block["text"], f"{pointer}/text", SECTION_TEXT_MAX)
        fields = block.get("fields")
        if fields is not None:
            if not isinstance(fields, list) or len(fields) > SECTION_FIELDS_MAX:
                errors.append(
                    _error(f"must provide at most {SECTION_FIELDS_MAX} items", f"{pointer}/fields")
                )
            else:
                for index, field_obj in enumerate(fields):
                    errors += _text_object_errors(
                        field_obj, f"{pointer}/fields/{index}", FIELD_TEXT_MAX
                    )
        if "accessory" in block:
            errors += _element_errors(block["accessory"], f"{pointer}/accessory")
    elif kind == "header":
        errors += _text_object_errors(
            block.get("text"), f"{pointer}/text", HEADER_TEXT_MAX, plain_only=True
        )
    elif kind == "context":
        errors += _elements_errors(block, pointer, CONTEXT_ELEMENTS_MAX)
    elif kind == "actions":
        errors += _elements_errors(block, pointer, ACTIONS_ELEMENTS_MAX)
    elif kind == "markdown":
        text = block.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MARKDOWN_BLOCK_MAX:
            errors.append(
                _error(f"must be between 1 and {MARKDOWN_BLOCK_MAX} characters", f"{pointer}/text")
            )
    elif kind == "image":
        errors += _image_errors(block, pointer)
    return errors


def validate_blocks(
    blocks: Any,
    *,
    max_blocks: int = MESSAGE_MAX_BLOCKS,
    text_budget: int | None = None,
) -> list[str]:
    """Every Block Kit limit ``blocks`` break, as Slack words them; empty when valid.

    ``max_blocks`` is :data:`MESSAGE_MAX_BLOCKS` for a message, :data:`VIEW_MAX_BLOCKS` for a
    Home tab or modal. ``text_budget`` adds the cumulative text check (:data:`MESSAGE_TEXT_BUDGET`
    is what :func:`fit_message` keeps messages under).
    """
    if not isinstance(blocks, list):
        return [_error("must be an array", "/blocks")]
    if len(blocks) > max_blocks:
        return [_error(f"no more than {max_blocks} items allowed", "/blocks")]
    errors: list[str] = []
    if text_budget is not None and _text_size(blocks) > text_budget:
        errors.append(_error(f"block texts must add up to at most {text_budget}", "/blocks"))
    block_ids: set[str] = set()
    for index, block in enumerate(blocks):
        errors += _block_errors(block, f"/blocks/{index}")
        block_id = block.get("block_id") if isinstance(block, Mapping) else None
        if isinstance(block_id, str):
            if block_id in block_ids:
                errors.append(_error(f"duplicate block_id {block_id}", f"/blocks/{index}"))
            block_ids.add(block_id)
    return errors
