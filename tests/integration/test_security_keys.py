"""Tokens signed with asymmetric keys: a PEM public key file, or a JWKS served over
loopback HTTP, fetched off the event loop and refetched when an unknown key id comes."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from clients.projects import ProjectsClient
from core.config import AuthSettings, ChannelSettings
from core.errors import NotFoundError, UnauthenticatedError
from core.security.tokens import TokenRejectedError, TokenVerifier
from core.testing.credentials import JwksServer, KeyPair, serving_jwks
from core.testing.services import serving, settings_for
from tests._services import PROJECTS

AUDIENCE = "mesh"


async def test_an_rs256_token_verifies_with_the_public_key_file(tmp_path: Path) -> None:
    keys = KeyPair.rsa()
    pem = tmp_path / "public.pem"
    pem.write_bytes(keys.public_pem())
    verifier = TokenVerifier(AuthSettings(jwt_public_key_file=str(pem), audience=AUDIENCE))

    principal = await verifier.verify(keys.token(sub="svc", scp=["projects.read"], aud=AUDIENCE))

    assert (principal.subject, principal.scopes, principal.method) == (
        "svc",
        frozenset({"projects.read"}),
        "token",
    )
    with pytest.raises(TokenRejectedError, match="Signature"):
        await verifier.verify(KeyPair.rsa().token(sub="svc", aud=AUDIENCE))
    with pytest.raises(TokenRejectedError, match="no key"):  # an ES256 token
        await verifier.verify(KeyPair.ec().token(sub="svc", aud=AUDIENCE))


async def test_tokens_verify_with_the_keys_of_a_jwks_and_a_rotated_key_is_fetched() -> None:
    first, second = KeyPair.ec("k1"), KeyPair.rsa("k2")
    with JwksServer([first]) as jwks:
        settings = AuthSettings(jwks_url=jwks.url, audience=AUDIENCE)
        verifier = TokenVerifier(settings, jwks_cooldown=0)
        assert (await verifier.verify(first.token(sub="a", aud=AUDIENCE))).subject == "a"
        assert (await verifier.verify(first.token(sub="b", aud=AUDIENCE))).subject == "b"
        assert jwks.requests == 1  # the keys are kept

        jwks.keys.append(second)  # the provider rotates in a new key
        assert (await verifier.verify(second.token(sub="c", aud=AUDIENCE))).subject == "c"
        assert jwks.requests == 2

        with pytest.raises(TokenRejectedError, match="k3"):
            await verifier.verify(KeyPair.rsa("k3").token(sub="d", aud=AUDIENCE))
        forged = KeyPair.ec("k1")  # a known kid, another key: the signature fails
        with pytest.raises(TokenRejectedError, match="Signature"):
            await verifier.verify(forged.token(sub="e", aud=AUDIENCE))
        confused = KeyPair.rsa("k1")  # a known kid with another algorithm
        with pytest.raises(TokenRejectedError, match="alg"):
            await verifier.verify(confused.token(sub="e", aud=AUDIENCE))


async def test_an_unreachable_jwks_rejects_the_token() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    verifier = TokenVerifier(AuthSettings(jwks_url=f"http://127.0.0.1:{port}/jwks.json"))
    with pytest.raises(TokenRejectedError):
        await verifier.verify(KeyPair.rsa().token(sub="svc"))


async def test_a_server_with_a_jwks_serves_a_caller_with_a_signed_token(tmp_path: Path) -> None:
    keys = KeyPair.rsa("k1")
    with serving_jwks([keys]) as url:
        auth = AuthSettings(mode="required", jwks_url=url, audience=AUDIENCE)
        settings = replace(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"), auth=auth)
        async with serving(PROJECTS, settings=settings) as running:
            token = keys.token(sub="svc", scope="projects.read", aud=AUDIENCE)
            async with ProjectsClient(
                running.address, channel=ChannelSettings(token=token)
            ) as projects:
                with pytest.raises(NotFoundError):
                    await projects.get_project("projects/absent")
            forged = KeyPair.rsa("k1").token(sub="svc", scope="projects.read", aud=AUDIENCE)
            async with ProjectsClient(
                running.address, channel=ChannelSettings(token=forged)
            ) as projects:
                with pytest.raises(UnauthenticatedError):
                    await projects.get_project("projects/absent")
