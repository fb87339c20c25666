"""Endpoint declarations: one table that both the dispatcher and ``/api/openapi.json`` read.

An :class:`Endpoint` says everything about one route: method, path template, parameters with
their types and defaults, who may call it, the handler, and every response it can give with
its schema. :func:`parse_params` turns a request's raw arguments into typed values by the
declaration (Flower's rules: the last value wins, booleans as ``strtobool``, a bad or missing
value is a 400 naming it); :func:`openapi_document` describes the same table as OpenAPI 3.1.
Nothing here knows HTTP servers, Slack or the store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ApiError",
    "ApiRequest",
    "ApiResponse",
    "Endpoint",
    "Param",
    "Reply",
    "compile_path",
    "openapi_document",
    "parse_params",
]

ParamType = Literal["string", "integer", "number", "boolean"]
# public: no credential (``/healthcheck``); read: any token; control: an operator's token.
Access = Literal["public", "read", "control"]

PLAIN = "text/plain; charset=utf-8"
JSON = "application/json"

_TRUE = frozenset({"y", "yes", "t", "true", "on", "1"})
_FALSE = frozenset({"n", "no", "f", "false", "off", "0"})


class ApiError(Exception):
    """An answer other than success: ``status`` and one line (plain text, as Flower answers
    its errors), or a JSON body when ``body`` is given."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


@dataclass(frozen=True)
class Param:
    name: str
    type: ParamType = "string"
    where: Literal["query", "path"] = "query"
    required: bool = False
    default: Any = None
    description: str = ""
    enum: tuple[str, ...] = ()  # documented choices (the handler still checks)


@dataclass(frozen=True)
class Reply:
    """One declared response: JSON with ``schema``, or plain text when ``schema`` is None;
    ``or_text``: JSON or plain text (Flower's ``/api/tasks`` 400s are both)."""

    description: str
    schema: Mapping[str, Any] | None = None
    or_text: bool = False

    def content(self) -> dict[str, Any]:
        """The OpenAPI ``content`` object."""
        content: dict[str, Any] = {}
        if self.schema is not None:
            content[JSON] = {"schema": dict(self.schema)}
        if self.schema is None or self.or_text:
            content[PLAIN.split(";")[0]] = {"schema": {"type": "string"}}
        return content


@dataclass(frozen=True)
class ApiRequest:
    """One call, as the handler sees it: who, the typed arguments, the JSON body if any."""

    identity: str
    args: Mapping[str, Any]
    body: Any = None

    def __getitem__(self, name: str) -> Any:
        return self.args[name]


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any  # JSON-serialisable, or str for text/plain
    headers: Sequence[tuple[str, str]] = ()

    @property
    def is_json(self) -> bool:
        return not isinstance(self.body, str)


Handler = Callable[[Any, ApiRequest], ApiResponse]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # e.g. "/api/task/info/{uuid}"
    operation_id: str
    summary: str
    handler: Handler
    responses: Mapping[int, Reply]
    params: tuple[Param, ...] = ()
    access: Access = "read"
    body: Mapping[str, Any] | None = None  # JSON request body schema (send-task)
    tag: str = "flower"  # "flower": Flower 2.2's endpoint; "chatops": beyond Flower
    description: str = ""
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", compile_path(self.path))
        names = re.findall(r"{(\w+)}", self.path)
        declared = [p.name for p in self.params if p.where == "path"]
        if names != declared:
            raise ValueError(f"{self.path}: path parameters {names} != declared {declared}")


def compile_path(template: str) -> re.Pattern[str]:
    """``/api/task/info/{uuid}`` -> a regex whose named groups are the path parameters."""
    parts = re.split(r"({\w+})", template)
    pattern = "".join(
        f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part) for part in parts
    )
    return re.compile(f"^{pattern}$")


def _convert(param: Param, raw: str) -> Any:
    if param.type == "string":
        return raw
    if param.type == "boolean":
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(raw)
    if param.type == "integer":
        return int(raw.strip())
    value = float(raw.strip())
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def parse_params(
    params: Sequence[Param], path_args: Mapping[str, str], raw: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """Typed arguments by declaration; ApiError(400) names the first bad or missing one."""
    typed: dict[str, Any] = {}
    for param in params:
        values = [path_args[param.name]] if param.where == "path" else raw.get(param.name, ())
        # Tornado's get_argument, which Flower uses: the last value wins, stripped.
        text = values[-1].strip() if values else None
        if text is None or text == "":
            if param.required:
                raise ApiError(400, f"Missing argument {param.name}")
            typed[param.name] = param.default
            continue
        try:
            typed[param.name] = _convert(param, text)
        except (ValueError, OverflowError):
            raise ApiError(
                400, f"Invalid argument '{text[:100]}' of type '{_python_name(param.type)}'"
            ) from None
    return typed


def _python_name(kind: ParamType) -> str:
    return {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}[kind]


# -- OpenAPI ------------------------------------------------------------------------------------
def _param_schema(param: Param) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": param.type}
    if param.enum:
        schema["enum"] = list(param.enum)
    if param.default is not None:
        schema["default"] = param.default
    return schema


def openapi_document(
    endpoints: Sequence[Endpoint], *, title: str, version: str, description: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``endpoints``."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation: dict[str, Any] = {
            "operationId": endpoint.operation_id,
            "summary": endpoint.summary,
            "tags": [endpoint.tag],
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required or p.where == "path",
                    "description": p.description,
                    "schema": _param_schema(p),
                }
                for p in endpoint.params
            ],
            "responses": {
                str(status): {"description": reply.description, "content": reply.content()}
                for status, reply in sorted(endpoint.responses.items())
            },
        }
        if endpoint.description:
            operation["description"] = endpoint.description
        if endpoint.access == "public":
            operation["security"] = []
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": False,
                "content": {JSON: {"schema": dict(endpoint.body)}},
            }
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "any user name; the API token as the password",
                },
            }
        },
        "security": [{"bearer": []}, {"basic": []}],
    }
