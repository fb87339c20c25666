"""The REST API of several clusters: ``?cluster=NAME`` picks the cluster a call is for.

Each cluster has its own :class:`~chatbot.api.core.ApiCore` over its own store, control app and
approvals, so a call can only read or act on the cluster it names. With one cluster the
parameter is optional (``?cluster=default`` works too) and everything is as before. With
several, a call that is not public and names no cluster is refused (400, listing them) once
the caller is authenticated: Flower's answers are one fleet's, and guessing would answer or act
for the wrong one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chatbot.api.core import ApiCore
from chatbot.api.spec import ApiResponse

__all__ = ["CLUSTER_PARAM", "ClusterApi"]

CLUSTER_PARAM = "cluster"


class ClusterApi:
    """Routes each call to its cluster's :class:`ApiCore` (the members ApiWsgiApp uses)."""

    def __init__(self, cores: Mapping[str, ApiCore]) -> None:
        if not cores:
            raise ValueError("at least one cluster")
        self.cores = dict(cores)
        self.first = next(iter(self.cores.values()))

    def handles(self, path: str) -> bool:
        return self.first.handles(path)

    def handle(
        self,
        method: str,
        path: str,
        args: Mapping[str, Sequence[str]],
        authorization: str | None,
        body: bytes = b"",
        content_type: str = "",
    ) -> ApiResponse:
        named = args.get(CLUSTER_PARAM)
        rest = {key: list(values) for key, values in args.items() if key != CLUSTER_PARAM}
        if named:
            core = self.cores.get(named[-1])
            if core is not None:
                return core.handle(method, path, rest, authorization, body, content_type)
            return self._refuse(
                method, path, rest, authorization, f"Unknown cluster {named[-1][:40]!r}"
            )
        if len(self.cores) == 1 or self._public(path):
            return self.first.handle(method, path, rest, authorization, body, content_type)
        return self._refuse(method, path, rest, authorization, "Several clusters")

    def _public(self, path: str) -> bool:
        matches = [e for e in self.first.endpoints if e.pattern.match(path)]
        return bool(matches) and all(e.access == "public" for e in matches)

    def _refuse(
        self,
        method: str,
        path: str,
        args: Mapping[str, Sequence[str]],
        authorization: str | None,
        reason: str,
    ) -> ApiResponse:
        tokens = self.first.tokens
        if not tokens.enabled or tokens.identify(authorization) is None:
            # The cluster names are for authenticated callers: the API-off 403 or the 401
            # comes first, exactly as the first cluster's API would answer it.
            return self.first.handle(method, path, args, authorization)
        names = ", ".join(self.cores)
        return ApiResponse(400, f"{reason}: add ?{CLUSTER_PARAM}=NAME (one of {names})", ())
