"""meshkit's framework, in layers; each imports only the layers below it.

- `testing`: the test kit and its pytest plugin, on top of everything
- `resources`: the CRUD engine and what it is made of (AIP resources, filters, pages, cache)
- `events`: the envelope, the bus and its stores, the outbox and its relay
- `data`: the database component, its SQLite and asyncpg paths, migrations
- `runtime`: components, the container, health, the gRPC server and its boundary, background
  tasks, and the service declarations that `host` assembles into a process
- `calls` and `telemetry`: what a client needs (channels, deadlines, the breaker, errors
  on the wire); traces and metrics
- `config`, `errors`, `logging`, `retries`: used by every layer

`core` imports nothing from `servers` or `clients`; both build on it. The layers contract
in pyproject.toml (import-linter) keeps the order.
"""
