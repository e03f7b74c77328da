"""Short-lived JWTs exchanged for an API key, so browsers and WebSocket clients need not hold
the key. HS256 only (the algorithm is pinned on decode), ``kid`` names the signing secret so
secrets can be rotated: sign with JWT_ACTIVE_KID, accept every kid in JWT_SIGNING_KEYS.
A token is bound to its key: revoking the key ends the token too."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from django.conf import settings
from rest_framework import exceptions

from tenants.selectors import KeyContext, key_context

ALGORITHM = "HS256"


def token_issue(ctx: KeyContext, *, scopes: frozenset[str] | None = None) -> tuple[str, int]:
    """A signed token for this key (optionally narrowed to ``scopes``) and its lifetime."""
    granted = ctx.scopes if scopes is None else ctx.scopes & scopes
    now = datetime.now(UTC)
    ttl = settings.JWT_TTL_SECONDS
    claims: dict[str, Any] = {
        "iss": settings.JWT_ISSUER,
        "aud": settings.JWT_AUDIENCE,
        "sub": f"key:{ctx.prefix}",
        "tid": ctx.tenant.pk,
        "scp": sorted(granted),
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=ttl),
        "jti": uuid.uuid4().hex,
    }
    kid = settings.JWT_ACTIVE_KID
    token = jwt.encode(
        claims, settings.JWT_SIGNING_KEYS[kid], algorithm=ALGORITHM, headers={"kid": kid}
    )
    return token, ttl


def token_verify(token: str) -> KeyContext:
    """The key context a token speaks for, with the token's scopes, or AuthenticationFailed."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        secret = settings.JWT_SIGNING_KEYS.get(kid) if isinstance(kid, str) else None
        if secret is None:
            raise exceptions.AuthenticationFailed("Token signed with an unknown key id.")
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=settings.JWT_AUDIENCE,
            issuer=settings.JWT_ISSUER,
            options={"require": ["exp", "iat", "aud", "iss", "sub", "tid"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise exceptions.AuthenticationFailed("Token has expired.") from exc
    except jwt.InvalidAudienceError as exc:
        raise exceptions.AuthenticationFailed("Token is for another audience.") from exc
    except jwt.InvalidTokenError as exc:
        raise exceptions.AuthenticationFailed("Invalid token.") from exc
    sub = str(claims["sub"])
    ctx = key_context(sub.removeprefix("key:")) if sub.startswith("key:") else None
    if ctx is None or ctx.tenant.pk != claims["tid"]:
        raise exceptions.AuthenticationFailed("Invalid token.")
    ctx.check_usable()
    scopes = frozenset(claims.get("scp", [])) & ctx.scopes
    return KeyContext(**{**ctx.__dict__, "scopes": scopes, "via_token": True})
