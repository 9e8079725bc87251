"""Bearer tokens: JWTs checked with PyJWT, keys from configuration or a JWKS endpoint.

A token is accepted when its signature verifies (HS256 with `MESH_AUTH_JWT_SECRET`;
RS256 or ES256 with the PEM key of `MESH_AUTH_JWT_PUBLIC_KEY_FILE` or a key of
`MESH_AUTH_JWKS_URL` named by the token's `kid`), it has `exp` and `sub`, `exp` and
`nbf` hold within the leeway, and `iss` and `aud` match when configured. Its principal
is `sub` with the scopes of `scope` (space-separated) and `scp` (a list).

A verified token is remembered until it expires (at most `REMEMBER_SECONDS`), so a
client that sends the same token on every call costs one dictionary lookup per call,
not a signature check. The JWKS is fetched by PyJWT's client, whose urllib calls block:
they run in a worker thread, bounded by `JWKS_TIMEOUT`, and the keys are kept for
`JWKS_LIFESPAN` seconds; an unknown `kid` refetches the set, at most once per
`JWKS_COOLDOWN` seconds (tokens with made-up key ids must not hammer the provider).

Usage::

    verifier = TokenVerifier(settings.auth)
    principal = await verifier.verify(token)   # or TokenRejectedError(reason)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from core.config import AuthSettings
from core.errors import ConfigError
from core.security.principal import Principal

REMEMBER_SECONDS = 300.0  # longest a verified token is trusted without a new check
REMEMBERED_TOKENS = 10_000  # the oldest is forgotten beyond this many
JWKS_TIMEOUT = 5.0  # seconds one fetch of the key set may take
JWKS_LIFESPAN = 300.0  # seconds the fetched keys are used before a refetch
JWKS_COOLDOWN = 10.0  # least seconds between two refetches for unknown key ids
ASYMMETRIC = ("RS256", "ES256")


class TokenRejectedError(Exception):
    """A token did not pass; the message says why, for the server's log only."""


class TokenVerifier:
    """Checks bearer tokens against the configured keys, issuer, audience and times.

    Args:
        settings: The keys, issuer, audience and leeway.
        jwks_cooldown: Least seconds between two refetches of the JWKS.
    """

    def __init__(self, settings: AuthSettings, *, jwks_cooldown: float = JWKS_COOLDOWN) -> None:
        self._settings = settings
        self._audience = settings.audience or None
        self._issuer = settings.issuer or None
        self._public_key, self._public_algorithm = _public_key(settings.jwt_public_key_file)
        self._jwks = (
            jwt.PyJWKClient(
                settings.jwks_url,
                cache_jwk_set=True,
                lifespan=JWKS_LIFESPAN,
                timeout=JWKS_TIMEOUT,
                cooldown_duration=jwks_cooldown,
            )
            if settings.jwks_url
            else None
        )
        self._jwk_by_kid: dict[str, tuple[jwt.PyJWK, float]] = {}
        self._fetching = asyncio.Lock()
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token.

        Raises:
            TokenRejectedError: The token is malformed, its signature or a claim is wrong, or
                its key cannot be found.
        """
        remembered = self.remembered(token)
        if remembered is not None:
            return remembered
        now = time.time()
        try:
            header = jwt.get_unverified_header(token)
            key, algorithms = await self._key_for(header)
            payload = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._settings.leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise TokenRejectedError(f"{type(exc).__name__}: {exc}") from None
        principal = _principal(payload)
        self._remember(
            token, principal, min(payload["exp"] + self._settings.leeway, now + REMEMBER_SECONDS)
        )
        return principal

    def remembered(self, token: str) -> Principal | None:
        """The principal of `token` if it was verified and has not expired since; no check."""
        hit = self._verified.get(token)
        return hit[0] if hit is not None and time.time() < hit[1] else None

    async def _key_for(self, header: dict[str, Any]) -> tuple[Any, list[str]]:
        algorithm = header.get("alg")
        if algorithm == "HS256" and self._settings.jwt_secret:
            return self._settings.jwt_secret, ["HS256"]
        if algorithm not in ASYMMETRIC:
            raise TokenRejectedError(f"algorithm {algorithm!r} is not accepted here")
        if self._public_key is not None and algorithm == self._public_algorithm:
            return self._public_key, [algorithm]
        if self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise TokenRejectedError("the token names no key (kid) to look up in the JWKS")
            jwk = await self._jwk(kid)
            if jwk.algorithm_name not in ASYMMETRIC:
                raise TokenRejectedError(f"key {kid!r} is for {jwk.algorithm_name}, not accepted")
            return jwk, [jwk.algorithm_name]
        raise TokenRejectedError(f"no key for algorithm {algorithm} is configured")

    async def _jwk(self, kid: str) -> jwt.PyJWK:
        cached = self._jwk_by_kid.get(kid)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        client = self._jwks
        assert client is not None
        try:  # one fetch at a time; the ones waiting find the key it brought
            async with asyncio.timeout(JWKS_TIMEOUT * 2), self._fetching:
                cached = self._jwk_by_kid.get(kid)
                if cached is not None and time.monotonic() < cached[1]:
                    return cached[0]
                jwk = await asyncio.to_thread(client.get_signing_key, kid)
        except TimeoutError:
            raise TokenRejectedError("the JWKS endpoint did not answer in time") from None
        except jwt.PyJWKClientError as exc:
            raise TokenRejectedError(f"key {kid!r}: {exc}") from None
        self._jwk_by_kid[kid] = (jwk, time.monotonic() + JWKS_LIFESPAN)
        return jwk

    def _remember(self, token: str, principal: Principal, until: float) -> None:
        if len(self._verified) >= REMEMBERED_TOKENS:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = (principal, until)


def _principal(payload: dict[str, Any]) -> Principal:
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenRejectedError("the sub claim is not a non-empty string")
    scopes: set[str] = set()
    scope = payload.get("scope")
    if isinstance(scope, str):
        scopes.update(scope.split())
    scp = payload.get("scp")
    if isinstance(scp, str):
        scopes.update(scp.split())
    elif isinstance(scp, list):
        scopes.update(s for s in scp if isinstance(s, str))
    return Principal(subject, frozenset(scopes), "token")


def _public_key(path: str) -> tuple[Any, str]:
    """The PEM public key of `path` and the algorithm it verifies, or (None, "")."""
    if not path:
        return None, ""
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"MESH_AUTH_JWT_PUBLIC_KEY_FILE={path!r} is not a PEM public key: {exc}"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise ConfigError(
        f"MESH_AUTH_JWT_PUBLIC_KEY_FILE={path!r} holds neither an RSA nor a P-256 EC key"
    )
