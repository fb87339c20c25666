"""The REST API as a WSGI application: bytes in, :meth:`ApiCore.handle`, bytes out.

Mounted on the bot's HTTP listener beside ``/slack/events`` (and in Socket Mode beside
``/healthz``): the listener hands over every path :meth:`ApiWsgiApp.handles` claims. The
``Authorization`` header is passed to the core and never logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from chatbot.api.clusters import ClusterApi
from chatbot.api.core import ApiCore
from chatbot.api.spec import ApiResponse

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["MAX_BODY_BYTES", "ApiWsgiApp"]

# Forms and send-task's JSON are small; a bigger body is refused unread.
MAX_BODY_BYTES = 256 * 1024
_FORM = "application/x-www-form-urlencoded"


class ApiWsgiApp:
    def __init__(self, core: ApiCore | ClusterApi) -> None:
        self.core = core

    def handles(self, path: str) -> bool:
        return self.core.handles(path)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD") or "GET").upper()
        path = environ.get("PATH_INFO") or "/"
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _send(start_response, ApiResponse(400, "Bad Content-Length"), method)
        if length < 0 or length > MAX_BODY_BYTES:
            return _send(start_response, ApiResponse(413, "Payload Too Large"), method)
        body = environ["wsgi.input"].read(length) if length else b""
        content_type = str(environ.get("CONTENT_TYPE") or "")
        # Tornado's get_argument, which Flower uses, reads the query string and a form body.
        args = parse_qs(str(environ.get("QUERY_STRING") or ""), keep_blank_values=True)
        if body and content_type.split(";")[0].strip().lower() == _FORM:
            try:
                form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                return _send(start_response, ApiResponse(400, "The form is not UTF-8"), method)
            for name, values in form.items():
                args.setdefault(name, []).extend(values)
        response = self.core.handle(
            "GET" if method == "HEAD" else method,
            path,
            args,
            environ.get("HTTP_AUTHORIZATION"),
            body,
            content_type,
        )
        return _send(start_response, response, method)


def _send(start_response: StartResponse, response: ApiResponse, method: str) -> list[bytes]:
    if response.is_json:
        data = json.dumps(response.body, default=str).encode("utf-8")
        content_type = "application/json"
    else:
        data = (str(response.body) + "\n").encode("utf-8")
        content_type = "text/plain; charset=utf-8"
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"),
        *response.headers,
    ]
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "Unknown"
    start_response(f"{response.status} {phrase}", headers)
    return [b""] if method == "HEAD" else [data]
