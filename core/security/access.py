"""The access rule of each served method, read from its contract.

Every RPC of a served service declares `option (mesh.access.v1.access) = {...}`
(proto/mesh/access/v1/access.proto): the scopes a caller must hold, or `public`. The
server reads the rules from the service descriptors when it is built and refuses to
start while a method declares none (deny by default). The standard services that are
not ours, health and reflection, are exempt: probes and tools reach them without
credentials.

Usage::

    rules = access_rules([projects_pb2.DESCRIPTOR.services_by_name["ProjectService"]])
    rules["/mesh.projects.v1.ProjectService/GetProject"].scopes  # ("projects.read",)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from core.errors import ConfigError
from mesh.access.v1 import access_pb2

# Services reachable without credentials whatever the mode: not ours, and what probes,
# load balancers and tools (grpcurl, buf curl) need before they hold any credentials.
EXEMPT_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


@dataclass(frozen=True, slots=True)
class AccessRule:
    """What a caller needs to call one method: nothing (`public`), or every scope listed."""

    public: bool = False
    scopes: tuple[str, ...] = ()


# The rule of a method that no contract declares (a handler registered without a
# descriptor): nobody's scopes but admin satisfy it.
UNDECLARED = AccessRule(scopes=("undeclared",))


def is_exempt(method: str) -> bool:
    """Whether `/package.Service/Method` belongs to health or reflection."""
    return method.split("/")[1] in EXEMPT_SERVICES if method.count("/") == 2 else False


def access_rules(services: Iterable[ServiceDescriptor]) -> dict[str, AccessRule]:
    """The rule of every method of `services`, by full method name (`/pkg.Service/Method`).

    Raises:
        ConfigError: Some methods declare no `mesh.access.v1.access` option; the
            message names every one of them.
    """
    rules: dict[str, AccessRule] = {}
    undeclared: list[str] = []
    for service in services:
        if service.full_name in EXEMPT_SERVICES:
            continue
        for method in service.methods:
            rule = rule_of(method)
            if rule is None:
                undeclared.append(method.full_name)
            else:
                rules[f"/{service.full_name}/{method.name}"] = rule
    if undeclared:
        raise ConfigError(
            "these methods declare no access rule: "
            + ", ".join(undeclared)
            + '; add `option (mesh.access.v1.access) = {scopes: "..."}` (or {public: true}) '
            "to each RPC in its proto (deny by default)"
        )
    return rules


def rule_of(method: MethodDescriptor) -> AccessRule | None:
    """The method's declared rule, or None when it declares nothing (or declares it empty)."""
    options = method.GetOptions()
    if not options.HasExtension(access_pb2.access):
        return None
    declared = options.Extensions[access_pb2.access]
    if not declared.public and not declared.scopes:
        return None
    return AccessRule(public=declared.public, scopes=tuple(declared.scopes))
