"""Memory per record in doubt (stamp mode), measured with tracemalloc, and the stamper's own
estimate of it (what `--stamp-memory` bounds and `idemproxy_stamp_state_bytes` shows).

Run `python -m tests.idempotence.test_stamp_memory` to print the figures; the test checks the
estimate is not below what is really held, so the byte budget is not an under-count.
"""

from __future__ import annotations

import tracemalloc

from proxy.idempotence.stamping import Stamper
from tests.routing._stamp_rig import T0, plain_batch

RECORDS_PER_BATCH = 10


def measure(batches: int = 1_000) -> tuple[float, float]:
    """(bytes held per record in doubt, bytes the stamper counts per record in doubt)."""
    raw = [
        plain_batch(
            [b"value-%08d-%02d" % (i, j) for j in range(RECORDS_PER_BATCH)], timestamp=T0 + i
        )
        for i in range(batches)
    ]
    tracemalloc.start()
    try:
        stamper = Stamper(max_bytes=1 << 40)
        stamper.granted("app", 5000)
        before = tracemalloc.get_traced_memory()[0]
        for i, batch in enumerate(raw):
            plan = stamper.plan("app", ("orders", i % 12), batch, RECORDS_PER_BATCH, T0)
            assert plan.send is not None
            stamper.settle(plan.send, 0, i * RECORDS_PER_BATCH, T0)
            # The client's connection closed right after the answer: all in doubt.
            stamper.in_doubt([plan.send], T0)
            del plan
        after = tracemalloc.get_traced_memory()[0]
        records = batches * RECORDS_PER_BATCH
        assert stamper.copies == records
        return (after - before) / records, stamper.bytes / records
    finally:
        tracemalloc.stop()


def test_the_byte_budget_does_not_undercount_records_in_doubt() -> None:
    held, counted = measure(500)
    assert counted >= held * 0.9, f"counted {counted:.0f} B per record, held {held:.0f} B"
    assert held < 400, f"{held:.0f} B per record in doubt"


if __name__ == "__main__":
    held, counted = measure(10_000)
    print(f"bytes per record in doubt: held {held:.0f}, counted {counted:.0f}")  # noqa: T201
