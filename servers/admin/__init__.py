"""`mesh.admin.v1.AdminService`: what a process runs and how healthy each part is.

Every process hosts it, whichever services it runs.
"""

from core.runtime.declaration import ServiceDeclaration

SERVICE = ServiceDeclaration(
    name="admin",
    register="servers.admin.server:register",
    summary="what this process runs and how healthy each part is",
    client="clients.admin:AdminClient",
    always_hosted=True,
)
