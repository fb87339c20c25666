"""Flower 2.2's REST API on the bot's own listener, for runbooks written against Flower.

- :mod:`chatbot.api.spec`: endpoint declarations, argument parsing, the OpenAPI document;
- :mod:`chatbot.api.core`: the transport-free dispatcher and what handlers may use;
- :mod:`chatbot.api.reads`: task and worker listings from the store;
- :mod:`chatbot.api.control`: control endpoints through the approval service (declared in
  :mod:`chatbot.api.control_endpoints`);
- :mod:`chatbot.api.serializers`: Flower-shaped JSON of the store's records;
- :mod:`chatbot.api.search`: Flower's task-search syntax;
- :mod:`chatbot.api.credentials`: ``CHATOPS_API_TOKENS``;
- :mod:`chatbot.api.wsgi`: the WSGI face the HTTP listener mounts.

Wiring::

    api = build_api(ApiServices(store, settings, inspector=control, ...), settings.api_tokens)
    HttpServer(app, services, host, port, api=api)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chatbot import __version__
from chatbot.api.clusters import ClusterApi
from chatbot.api.control_endpoints import CONTROL_ENDPOINTS
from chatbot.api.core import ApiCore, ApiServices
from chatbot.api.credentials import TokenBook
from chatbot.api.reads import READ_ENDPOINTS
from chatbot.api.spec import Endpoint, openapi_document
from chatbot.api.wsgi import ApiWsgiApp

__all__ = [
    "ENDPOINTS",
    "ApiCore",
    "ApiServices",
    "ApiWsgiApp",
    "ClusterApi",
    "build_api",
    "build_cluster_api",
    "describe",
]

ENDPOINTS: tuple[Endpoint, ...] = READ_ENDPOINTS + CONTROL_ENDPOINTS

DESCRIPTION = (
    "Flower 2.2's REST API, served by celery-chatops from its event-fed store: the same paths,"
    " parameters, shapes and status codes, with an API token (CHATOPS_API_TOKENS) as Bearer or"
    " as the Basic-auth password. Control calls follow the bot's policy: operators only, and"
    " actions listed in CHATOPS_APPROVAL_REQUIRED answer 202 with an approval to wait for."
)


def describe(endpoints: Sequence[Endpoint] = ENDPOINTS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints``."""
    return openapi_document(
        endpoints, title="celery-chatops REST API", version=__version__, description=DESCRIPTION
    )


def build_api(services: ApiServices, tokens: Sequence[tuple[str, str]]) -> ApiWsgiApp:
    """The WSGI app for ``services``, accepting ``tokens`` (``(identity, token)`` pairs)."""
    core = ApiCore(services, ENDPOINTS, TokenBook(tokens), openapi=describe)
    return ApiWsgiApp(core)


def build_cluster_api(
    services: Mapping[str, ApiServices], tokens: Sequence[tuple[str, str]]
) -> ApiWsgiApp:
    """The WSGI app of several clusters (``?cluster=NAME``), one ApiServices each."""
    book = TokenBook(tokens)
    cores = {
        name: ApiCore(each, ENDPOINTS, book, openapi=describe) for name, each in services.items()
    }
    return ApiWsgiApp(ClusterApi(cores))
