"""What the proxy knows of one producer's state on one partition.

Mirrors the broker's ProducerStateEntry (epoch and the last batches appended, ordered by offset)
and adds what the proxy must track because it only sees responses: batches whose outcome is
unknown ("ghosts") and whether its copy of the broker's cache is complete.
"""

from __future__ import annotations

from array import array
from enum import Enum

from proxy.idempotence.decisions import BROKER_BATCHES_RETAINED, UNKNOWN_PRINCIPAL, Principal
from proxy.wire.batch import in_sequence

# Cached batches are stored flat, four int64 per batch, to keep an entry small.
_FIRST, _LAST, _BASE, _TS = range(4)
_STRIDE = 4

# Beyond this many unresolved unknown outcomes the entry stops listing them (lost_ghost_epoch).
MAX_GHOSTS = 16


class SuccessEffect(Enum):
    """How a broker acknowledgement changed an entry."""

    RECORDED = 1
    STALE = 2  # older epoch than the entry: the broker has already dropped that batch
    CONFLICT = 3  # contradicts the entry: the broker's log is not what the entry says


class ProducerPartitionState:
    """The broker's cached batches for one (producer id, partition), as far as the proxy knows."""

    __slots__ = (
        "_batches",
        "epoch",
        "ghosts",
        "log_start_offset",
        "lost_ghost_epoch",
        "principal",
        "updated_ms",
    )

    def __init__(self, updated_ms: int, principal: Principal = None) -> None:
        self._batches = array("q")
        self.epoch: int | None = None
        # (epoch, first seq, last seq) of batches that may have been written, at unknown offsets.
        self.ghosts: list[tuple[int, int, int]] | None = None
        # Highest epoch of ghosts dropped for space: that epoch stays uncertain until a newer one.
        self.lost_ghost_epoch: int | None = None
        self.updated_ms = updated_ms
        self.log_start_offset = -1
        #: The principal of the connections whose batches made this state (UNKNOWN_PRINCIPAL
        #: once two principals did): only it is answered from the state.
        self.principal = principal

    def written_by(self, principal: Principal) -> None:
        """A batch of `principal` may be in the broker's state: a second principal leaves it
        to no one."""
        if principal != self.principal:
            self.principal = UNKNOWN_PRINCIPAL

    @property
    def size(self) -> int:
        return len(self._batches) // _STRIDE

    def first_sequence(self, i: int) -> int:
        return self._batches[i * _STRIDE + _FIRST]

    def last_sequence(self, i: int) -> int:
        return self._batches[i * _STRIDE + _LAST]

    def base_offset(self, i: int) -> int:
        return self._batches[i * _STRIDE + _BASE]

    def timestamp(self, i: int) -> int:
        return self._batches[i * _STRIDE + _TS]

    def newest_timestamp(self, default: int) -> int:
        """The smaller of `default` and the newest cached batch's timestamp (for expiry)."""
        b = self._batches
        if b:
            ts = b[-_STRIDE + _TS]
            if ts < default:
                return ts
        return default

    def newest_last_sequence(self) -> int:
        """The last sequence of the newest cached batch (the entry must not be empty)."""
        return self._batches[-_STRIDE + _LAST]

    def find(self, first_seq: int, last_seq: int) -> int:
        """Index of the cached batch with exactly this sequence range, or -1.

        ProducerStateEntry.batchWithSequenceRange: first and last sequence must both match.
        """
        b = self._batches
        for i in range(0, len(b), _STRIDE):
            if b[i + _FIRST] == first_seq and b[i + _LAST] == last_seq:
                return i // _STRIDE
        return -1

    def contiguous_from(self, i: int) -> bool:
        """Whether cached batches i..newest follow each other in sequence, with no batch missing.

        Within an epoch the broker appends only in sequence (ProducerAppendInfo.checkSequence), so
        a break means the broker holds a batch here that the proxy never saw acknowledged.
        """
        return all(
            in_sequence(self.last_sequence(j - 1), self.first_sequence(j))
            for j in range(i + 1, self.size)
        )

    @property
    def complete(self) -> bool:
        """Whether every batch the broker caches for this producer is known (pending ones aside)."""
        return self.size >= BROKER_BATCHES_RETAINED and self.contiguous_from(0)

    @property
    def certain(self) -> bool:
        """Whether the broker's epoch and newest batches are known, with no write in doubt."""
        return self.size > 0 and not self.ghosts and self.lost_ghost_epoch is None

    def add_success(
        self,
        epoch: int,
        first_seq: int,
        last_seq: int,
        base_offset: int,
        timestamp: int,
        retain: int,
    ) -> SuccessEffect:
        """Record a batch the broker acknowledged at `base_offset`."""
        if self.epoch is not None and epoch < self.epoch:
            return SuccessEffect.STALE
        if self.epoch is None or epoch > self.epoch:
            # ProducerStateEntry.maybeUpdateProducerEpoch: a new epoch drops the cached batches.
            self.epoch = epoch
            del self._batches[:]
            if self.ghosts:
                self.ghosts = [g for g in self.ghosts if g[0] >= epoch] or None
            if self.lost_ghost_epoch is not None and self.lost_ghost_epoch < epoch:
                self.lost_ghost_epoch = None
        # The broker appends in offset order and keeps the newest batches
        # (ProducerStateEntry.addBatchMetadata); acknowledgements arrive in any order.
        b = self._batches
        if b and base_offset > b[-_STRIDE + _BASE] and first_seq not in b[_FIRST::_STRIDE]:
            # The common case, after every cached batch: no cached base offset equals it (they
            # are all lower) and no cached range starts at its first sequence, so nothing
            # conflicts. Rebuilt at its exact size rather than grown in place (over-allocates).
            keep = (retain - 1) * _STRIDE
            tail = b[len(b) - keep :] if len(b) > keep else b
            self._batches = tail + array("q", (first_seq, last_seq, base_offset, timestamp))
            self._resolve_ghost(epoch, first_seq, last_seq)
            return SuccessEffect.RECORDED
        size = len(b) // _STRIDE
        pos = size
        for i in range(size):
            at = i * _STRIDE
            same_range = b[at + _FIRST] == first_seq and b[at + _LAST] == last_seq
            same_base = b[at + _BASE] == base_offset
            if same_range != same_base:
                return SuccessEffect.CONFLICT
            if same_range:
                pos = -1
                break
            if pos == size and b[at + _BASE] > base_offset:
                pos = i
        if pos >= 0:
            at = pos * _STRIDE
            # Rebuilt at its exact size rather than grown in place, which over-allocates.
            b = b[:at] + array("q", (first_seq, last_seq, base_offset, timestamp)) + b[at:]
            self._batches = b[-retain * _STRIDE :]
        self._resolve_ghost(epoch, first_seq, last_seq)
        return SuccessEffect.RECORDED

    def _resolve_ghost(self, epoch: int, first_seq: int, last_seq: int) -> None:
        """An acknowledged batch is no longer a write in doubt."""
        if self.ghosts:
            self.ghosts = [g for g in self.ghosts if g != (epoch, first_seq, last_seq)] or None

    def add_ghost(self, epoch: int, first_seq: int, last_seq: int) -> bool:
        """Record a batch that may have been written; False if it cannot matter any more."""
        if self.epoch is not None:
            if epoch < self.epoch:
                return False
            if epoch == self.epoch and self.find(first_seq, last_seq) >= 0:
                return False
        ghost = (epoch, first_seq, last_seq)
        if self.ghosts is None:
            self.ghosts = [ghost]
        elif ghost not in self.ghosts:
            self.ghosts.append(ghost)
            if len(self.ghosts) > MAX_GHOSTS:
                lost = self.ghosts.pop(0)[0]
                if self.lost_ghost_epoch is None or lost > self.lost_ghost_epoch:
                    self.lost_ghost_epoch = lost
        return True
