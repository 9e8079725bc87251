"""meshkit's reference services, each built on `core` and run by the `mesh` command."""
