"""API tokens: who may make trusted corrections, label images and reload the model.

A token is configured as `SECRET` or `NAME:SECRET`; clients send `Authorization: Bearer SECRET`. The NAME
(by default `token-` and 8 hex digits of the secret's SHA-256, which identifies it without revealing it) is
recorded as who made each decision. Secrets are compared as SHA-256 digests with `hmac.compare_digest`
against every configured token, so neither the length nor the position of a match leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from proxy.errors import ApiError

#: Short secrets can be guessed online; a random 128-bit token in hex or base64 is longer than this.
MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class ApiToken:
    name: str
    digest: bytes  # SHA-256 of the secret: the secret itself is not kept

    def __repr__(self) -> str:
        return f"ApiToken(name={self.name!r})"


def parse_token(spec: str) -> ApiToken:
    """`SECRET` or `NAME:SECRET`; raises ValueError for a short secret or a malformed name."""
    name, separator, secret = spec.strip().rpartition(":")
    if not separator:
        name = ""
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"API tokens must be at least {MIN_SECRET_LENGTH} characters long")
    if any(character.isspace() for character in secret):
        raise ValueError("API tokens must not contain whitespace")
    digest = hashlib.sha256(secret.encode()).digest()
    if not name:
        name = "token-" + digest.hex()[:8]
    elif not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"token name {name!r}: use letters, digits, '-', '_' or '.'")
    return ApiToken(name, digest)


class Unauthorized(ApiError):
    """401 with the challenge RFC 6750 asks for."""

    status = 401
    default_code = "token_required"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.headers = {"WWW-Authenticate": 'Bearer realm="invertornot"'}


class TokenRegistry:
    def __init__(self, specs: Iterable[str]) -> None:
        self.tokens = [parse_token(spec) for spec in specs]
        names = [token.name for token in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("two API tokens have the same name")

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def identify(self, secret: str) -> str | None:
        """The name of the token whose secret this is, or None."""
        presented = hashlib.sha256(secret.encode()).digest()
        found = None
        for token in self.tokens:  # no early exit: the time taken does not depend on which token matched
            if hmac.compare_digest(presented, token.digest):
                found = token.name
        return found


def bearer_secret(authorization: str | None) -> str | None:
    """The secret of an `Authorization: Bearer SECRET` header; None when absent; ValueError when malformed."""
    if authorization is None:
        return None
    scheme, _, secret = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ValueError("expected 'Authorization: Bearer TOKEN'")
    return secret.strip()


TOKENS = web.AppKey("api_tokens", TokenRegistry)


def requester(request: web.Request) -> str | None:
    """Who is asking: a token's name, or None for an anonymous request. A token that is sent but wrong is a
    401, never a silent downgrade to anonymous: the client believes its corrections are trusted."""
    try:
        secret = bearer_secret(request.headers.get("Authorization"))
    except ValueError as error:
        raise Unauthorized(str(error), code="invalid_token") from None
    if secret is None:
        return None
    name = request.app[TOKENS].identify(secret)
    if name is None:
        raise Unauthorized("this API token is not valid", code="invalid_token")
    return name


def require_token(request: web.Request) -> str:
    """The token's name; 401 when the request carries no valid token."""
    name = requester(request)
    if name is None:
        raise Unauthorized("this endpoint needs 'Authorization: Bearer TOKEN' with an API token")
    return name
