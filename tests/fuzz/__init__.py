"""Atheris fuzz targets of the proxy's protocol core (issue #8), their seeds and a runner.

One module per target, each with a ``test_one_input(data: bytes)`` that raises only on a
finding (any exception other than the proxy's own ``ProxyError`` tree, or a broken
invariant). The modules import atheris nowhere, so the seed replay in ``test_fuzz.py``
and every regression test run without it; ``python -m tests.fuzz`` runs them under
atheris (see ``__main__.py``). Seeds: ``corpus/<target>/``, captured from real clients
by ``python -m tests.fuzz.capture``.

Importing this package must not import ``proxy``: the runner imports the targets under
atheris' import hook so that ``proxy`` and kafka-python are instrumented for coverage.
"""

from __future__ import annotations

#: target name -> module (in this package) holding its ``test_one_input``
TARGETS: dict[str, str] = {
    "frames": "target_frames",
    "batch": "target_batch",
    "responses": "target_responses",
    "produce": "target_produce",
    "session": "target_session",
}
