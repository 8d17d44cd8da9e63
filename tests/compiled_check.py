"""pytest plugin for `make compiled-test`: refuse to run unless the core really is compiled.

Without it a build that silently fell back to the .py files would pass as "compiled".
"""

from __future__ import annotations

import importlib

import pytest

#: One module of each compiled package (setup.py's COMPILED_PACKAGES).
_PROBES = ("proxy.wire.produce", "proxy.idempotence.engine", "proxy.routing.session")


def pytest_configure(config: pytest.Config) -> None:
    for name in _PROBES:
        path = importlib.import_module(name).__file__ or ""
        if not path.endswith(".so"):
            raise pytest.UsageError(f"{name} is not compiled ({path}): run `make compiled` first")
