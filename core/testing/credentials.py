"""Credentials made at run time for tests: a certificate authority, the certificates it
signs (a server's, a service's with a SPIFFE URI), key pairs, signed JWTs and a JWKS
served over loopback HTTP.

Nothing here is for production: keys are generated in memory and certificates live for
a day.

Usage::

    ca = CertificateAuthority()
    server = ca.issue(tmp_path, "server", dns=["localhost"], ips=["127.0.0.1"])
    events = ca.issue(tmp_path, "events", uri="spiffe://mesh.local/ns/default/sa/events")
    tls = TlsSettings(ca_file=str(ca.write(tmp_path)), cert_file=str(events.cert), key_file=...)

    token = hs256_token("secret", sub="alice", scope="projects.read", aud="mesh")
    keys = KeyPair.rsa("k1")
    with serving_jwks([keys]) as url:
        ...  # MESH_AUTH_JWKS_URL=url; keys.token(sub="alice", ...)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def claims(**values: Any) -> dict[str, Any]:
    """Token claims with `iat`, `nbf` and `exp` (in an hour) filled in unless given."""
    now = int(time.time())
    return {"iat": now, "nbf": now, "exp": now + 3600} | values


def hs256_token(secret: str, **values: Any) -> str:
    """A JWT signed with HS256 and `secret`, with `claims(**values)`."""
    return jwt.encode(claims(**values), secret, algorithm="HS256")


@dataclass(frozen=True)
class KeyPair:
    """An RS256 or ES256 signing key with its key id."""

    kid: str
    private: Key
    algorithm: str

    @classmethod
    def rsa(cls, kid: str = "rsa-1") -> KeyPair:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")

    @classmethod
    def ec(cls, kid: str = "ec-1") -> KeyPair:
        return cls(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")

    def token(self, **values: Any) -> str:
        """A JWT signed with this key, its `kid` in the header."""
        return jwt.encode(
            claims(**values), self.private, algorithm=self.algorithm, headers={"kid": self.kid}
        )

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK, with `kid`, `alg` and `use`."""
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        value = json.loads(algorithm.to_jwk(self.private.public_key()))
        return dict(value) | {"kid": self.kid, "alg": self.algorithm, "use": "sig"}


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, written as PEM files."""

    cert: Path
    key: Path


class CertificateAuthority:
    """A self-signed CA (EC P-256) that issues leaf certificates for tests."""

    def __init__(self, name: str = "mesh test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    def write(self, directory: Path) -> Path:
        """Writes the CA certificate (what `MESH_TLS_CA_FILE` names) and returns its path."""
        path = directory / "ca.pem"
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        self,
        directory: Path,
        common_name: str,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        uri: str = "",
    ) -> Issued:
        """A leaf certificate for `common_name` with the given SANs, written to `directory`."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if uri:
            names.append(x509.UniformResourceIdentifier(uri))
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = Issued(directory / f"{common_name}.pem", directory / f"{common_name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


@contextmanager
def serving_jwks(keys: Sequence[KeyPair]) -> Iterator[str]:
    """Serves `{"keys": [...]}` on 127.0.0.1 over HTTP in a thread; yields its URL.

    `served.requests` counts the fetches (see `JwksServer`); the server stops on exit.
    """
    with JwksServer(keys) as server:
        yield server.url


class JwksServer:
    """A JWKS endpoint on loopback whose key set a test can replace (key rotation)."""

    def __init__(self, keys: Sequence[KeyPair]) -> None:
        self.keys = list(keys)
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = json.dumps({"keys": [k.jwk() for k in owner.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/.well-known/jwks.json"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)
