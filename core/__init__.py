"""meshkit's framework: configuration, logging, errors, lifecycle, health and the server runner.

`core` imports nothing from `servers` or `clients`; both build on it.
"""
