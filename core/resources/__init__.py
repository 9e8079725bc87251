"""Resources the way Google's AIPs describe them, on the generic CRUD engine: what a resource
is, names and validation, filtering, ordering, lists, request-id idempotency, shared
secrets, the two-tier cache, and the purger of soft-deleted rows.

`core.resources.validation` loads neither SQLAlchemy nor grpc, so a service's domain module
can use it alone."""
