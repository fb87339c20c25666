"""Who is calling the REST API: ``CHATOPS_API_TOKENS`` checked against the request's credential.

A token is accepted as ``Authorization: Bearer TOKEN`` or as the password of HTTP Basic (any
user name), so a Flower script using ``--basic_auth`` keeps working with only its password
changed. Tokens are compared by their SHA-256 digests with :func:`hmac.compare_digest`, against
every configured token without stopping at a match, so neither the position nor the length of
a token shows in the time taken. Nothing here logs a credential.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["TokenBook"]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenBook:
    """The configured ``(identity, token)`` pairs; :meth:`identify` maps a header to who."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._entries = tuple((identity, _digest(token)) for identity, token in pairs if token)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def identify(self, authorization: str | None) -> str | None:
        """The identity whose token the ``Authorization`` header carries, or None."""
        token = _token_of(authorization or "")
        if token is None:
            return None
        presented = _digest(token)
        found: str | None = None
        for identity, digest in self._entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = identity
        return found

    def __repr__(self) -> str:
        return f"TokenBook({len(self._entries)} tokens)"


def _token_of(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if not value:
        return None
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None
