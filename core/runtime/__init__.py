"""What runs a process: components and their lifecycle, the container that starts and stops
them in dependency order, health and its monitor, the gRPC server with its RPC boundary,
the standard health protocol, reflection, background tasks, and the service declaration
that `mesh serve` composes a process from."""
