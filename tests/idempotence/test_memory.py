"""Memory per tracked producer-partition (5 cached batches), measured with tracemalloc.

Run `python -m tests.idempotence.test_memory` to print the figure; the test only checks a
generous bound so that a representation change that multiplies it is noticed.
"""

from __future__ import annotations

import tracemalloc

from proxy.idempotence import BatchIdentity, Forward, IdempotenceEngine, Success

NOW = 1_700_000_000_000
TOPICS = ["orders", "payments", "audit-log"]


def bytes_per_entry(entries: int = 10_000, batches: int = 5) -> float:
    """Bytes the engine holds per producer-partition once each has `batches` acknowledged."""
    tracemalloc.start()
    try:
        engine = IdempotenceEngine(max_entries=entries)
        before = tracemalloc.get_traced_memory()[0]
        offset = 10**9
        for i in range(entries):
            # Topic names arrive as fresh strings from each decoded request.
            tp = (TOPICS[i % len(TOPICS)].encode().decode(), i % 12)
            for n in range(batches):
                batch = BatchIdentity(10**12 + i, 3, 1_000 * n, 1_000 * n + 99, 100, NOW + n, False)
                decision = engine.admit(tp, batch, NOW)
                assert isinstance(decision, Forward)
                engine.complete(decision.ticket, Success(offset, -1, 0), NOW)
                offset += 100
        after = tracemalloc.get_traced_memory()[0]
        assert engine.entries == entries
        return (after - before) / entries
    finally:
        tracemalloc.stop()


def test_memory_per_producer_partition_is_modest() -> None:
    per_entry = bytes_per_entry()
    print(f"\n{per_entry:.0f} bytes per producer-partition with 5 cached batches")
    assert per_entry < 2_000


if __name__ == "__main__":
    print(f"{bytes_per_entry():.0f} bytes per producer-partition with 5 cached batches")
