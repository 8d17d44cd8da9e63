"""Optional compiled build: the sans-I/O core compiled with mypyc (as black and mypy ship).

`pip install .` (and every editable install) builds the pure-Python package. With
IDEMPROXY_MYPYC=1 the modules below are compiled to C extensions with mypyc, which needs mypy
and a C compiler at build time: `IDEMPROXY_MYPYC=1 pip install --no-build-isolation .` in an
environment that has mypy (the container image does this). The pure-Python modules stay the
fallback and the reference: the test suite runs against both (`make compiled-test`).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

#: The per-request core: framing, batch views, the idempotence engine, stamping and routing.
#: The asyncio server (proxy/server) and the CLI stay interpreted: they only move bytes.
COMPILED_PACKAGES = ("proxy/wire", "proxy/idempotence", "proxy/routing")
# proxy/errors.py stays interpreted: a compiled exception class does not inherit the class
# attribute defaults its subclasses rely on (error_code).
COMPILED_FILES = ("proxy/address.py",)
#: Not compiled: the kafka-python codec (decodes only the APIs the proxy rewrites, off the
#: produce path; mypyc drops the __cause__ of the DecodeError it raises from the library's).
NOT_COMPILED = ("proxy/wire/codec.py",)


def compiled_modules() -> list[str]:
    here = Path(__file__).parent
    files = [
        str(path.relative_to(here))
        for package in COMPILED_PACKAGES
        for path in sorted((here / package).glob("*.py"))
        if path.name != "__init__.py"
    ]
    files = [f for f in files if f not in NOT_COMPILED]
    return files + list(COMPILED_FILES)


ext_modules = []
if os.environ.get("IDEMPROXY_MYPYC") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(compiled_modules(), opt_level="3")

setup(ext_modules=ext_modules)
