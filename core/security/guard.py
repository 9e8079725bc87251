"""The check at the boundary: who is calling (token or client certificate), and may they.

`Guard.admission(method)` gives the boundary, once per method at registration, the
coroutine it awaits at the start of every call (None for health and reflection, which
stay open). It authenticates the caller, checks the method's declared scopes, and makes
the principal current for the handler (`act_as`):

- a bearer token in the `authorization` metadata decides the principal when present,
  and must be valid in every mode (a server with no token key configured, which
  MESH_AUTH=required does not allow, checks no tokens and ignores them);
- otherwise, when the server requires client certificates, the verified certificate
  does: its SPIFFE ID (or first URI SAN), else its subject, with `MESH_AUTH_CERT_SCOPES`;
- otherwise, with MESH_AUTH=required the call is refused, and with optional it runs as
  the unauthenticated principal.

A caller that fails authentication gets UNAUTHENTICATED with one message whatever went
wrong; the reason goes to the server's log (`auth.rejected`). A caller without a
needed scope gets PERMISSION_DENIED, reason MISSING_SCOPE, naming the scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog

from core.config import AuthSettings
from core.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
from core.security.access import UNDECLARED, AccessRule, is_exempt
from core.security.principal import ADMIN_SCOPE, UNAUTHENTICATED, Principal, act_as
from core.security.tokens import TokenRejectedError, TokenVerifier

log = structlog.get_logger()

GENERIC_MESSAGE = "missing or invalid credentials"
# The caller of a public method without credentials when they are required: no scopes.
ANONYMOUS = Principal("anonymous", frozenset(), "unauthenticated")

Admission = Callable[[Any], Awaitable[Principal]]  # called with the grpc ServicerContext


class Guard:
    """Authenticates and authorizes the calls of one server.

    Args:
        settings: MESH_AUTH and the token settings.
        rules: The access rule of every served method (core.security.access).
        certificates: Whether the server requires and verifies client certificates,
            so that a certificate may identify the caller.
    """

    def __init__(
        self, settings: AuthSettings, rules: Mapping[str, AccessRule], *, certificates: bool
    ) -> None:
        self._required = settings.mode == "required"
        self._tokens = TokenVerifier(settings) if settings.verifies_tokens else None
        if self._required and self._tokens is None and not certificates:
            raise ConfigError(
                "MESH_AUTH=required needs a token key (MESH_AUTH_JWT_SECRET, "
                "MESH_AUTH_JWT_PUBLIC_KEY_FILE or MESH_AUTH_JWKS_URL) or client certificates "
                "(MESH_TLS_CLIENT_AUTH with MESH_TLS_CERT_FILE/KEY_FILE/CA_FILE)"
            )
        self._certificates = certificates
        self._cert_scopes = frozenset(settings.cert_scopes)
        self._rules = rules

    def admission(self, method: str) -> Admission | None:
        """What the boundary awaits before each call of `method`; None if it is exempt."""
        if is_exempt(method):
            return None
        rule = self._rules.get(method, UNDECLARED)
        needed = frozenset(rule.scopes)
        tokens = self._tokens  # None: no token key (optional mode), tokens are not checked
        if tokens is None and not self._certificates and not self._required:
            return None  # every caller is the unauthenticated one: nothing to check per call

        async def admit(context: Any) -> Principal:
            # The common case inline, a token verified before: every call pays for this.
            principal = None
            if tokens is not None:
                for key, value in context.invocation_metadata() or ():
                    if key == "authorization":
                        if value[:7] == "Bearer ":
                            principal = tokens.remembered(value[7:])
                        if principal is None:
                            principal = await self._from_header(tokens, value)
                        break
            if principal is None:
                principal = self._without_token(context, rule)
            if not (rule.public or needed <= principal.scopes or ADMIN_SCOPE in principal.scopes):
                _deny(principal, rule.scopes, method)
            act_as(principal)
            return principal

        return admit

    def _without_token(self, context: Any, rule: AccessRule) -> Principal:
        """The certificate's principal, or the unauthenticated one when that is allowed."""
        if self._certificates:
            principal = certificate_principal(context.auth_context(), self._cert_scopes)
            if principal is not None:
                return principal
        if rule.public:
            return ANONYMOUS if self._required else UNAUTHENTICATED
        if self._required:
            raise _rejected("no credentials", level="info")
        return UNAUTHENTICATED

    @staticmethod
    async def _from_header(tokens: TokenVerifier, header: str | bytes) -> Principal:
        if isinstance(header, bytes):
            header = header.decode(errors="replace")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _rejected("the authorization metadata is not `Bearer <token>`")
        try:
            return await tokens.verify(token.strip())
        except TokenRejectedError as exc:
            raise _rejected(str(exc)) from None


def certificate_principal(
    auth_context: Mapping[str, Sequence[bytes]], scopes: frozenset[str]
) -> Principal | None:
    """The principal of a verified client certificate, from grpc's auth context.

    The subject is the SPIFFE ID (`peer_spiffe_id`), else the first URI SAN
    (`peer_uri`), else the certificate's subject (`x509_subject`, e.g. "CN=events").
    """
    for key in ("peer_spiffe_id", "peer_uri", "x509_subject"):
        values = auth_context.get(key)
        if values:
            return Principal(values[0].decode(errors="replace"), scopes, "certificate")
    return None


def _deny(principal: Principal, scopes: Sequence[str], method: str) -> None:
    missing = [scope for scope in scopes if not principal.holds(scope)]
    log.info("auth.denied", subject=principal.subject, missing=missing)
    raise PermissionDeniedError(
        f"the caller lacks the scope {' '.join(missing)} that {method} needs",
        reason="MISSING_SCOPE",
        metadata={"scope": " ".join(missing), "method": method},
    )


def _rejected(cause: str, *, level: str = "warning") -> UnauthenticatedError:
    """The one answer to every failed authentication; `cause` goes to the log only."""
    (log.info if level == "info" else log.warning)("auth.rejected", cause=cause)
    return UnauthenticatedError(GENERIC_MESSAGE, reason="UNAUTHENTICATED")
