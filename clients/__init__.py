"""Typed async clients for meshkit's services. Each is an async context manager."""
