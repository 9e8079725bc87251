"""The test kit's pytest plugin, found through the `pytest11` entry point (`-p no:meshkit`
turns it off).

pytest loads it in every run of every project that has meshkit installed, so it imports
nothing of meshkit: at configure time it registers the fixtures of
`core.testing.fixtures`, and only when pytest-asyncio (which runs them) is installed.
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest

FIXTURES = "core.testing.fixtures"


def pytest_configure(config: pytest.Config) -> None:
    if importlib.util.find_spec("pytest_asyncio") is None:
        return
    if not config.pluginmanager.has_plugin(FIXTURES):
        config.pluginmanager.register(importlib.import_module(FIXTURES), FIXTURES)
