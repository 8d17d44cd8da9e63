"""InitProducerId without a transactional id: how the proxy gets producer ids to stamp with.

The broker answers with a fresh producer id at epoch 0 each time (TransactionCoordinator
.handleInitProducerId, no transactional id: ProducerIdManager.generateProducerId); it needs
IDEMPOTENT_WRITE on the cluster or WRITE on any topic (KIP-679). Bodies by kafka-python's
classes (generated from InitProducerIdRequest.json / InitProducerIdResponse.json).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from kafka.protocol.producer.transaction import InitProducerIdRequest, InitProducerIdResponse

from proxy.errors import DecodeError

#: Versions the proxy sends: v3 added the producer id/epoch fields (KIP-360), Tansu needs v3+.
MIN_VERSION = 3
MAX_VERSION = 4
#: What the Java producer sends for an idempotent producer (transaction.timeout.ms default);
#: the broker ignores it without a transactional id.
_TIMEOUT_MS = 60_000


class ProducerIdAnswer(NamedTuple):
    error_code: int
    producer_id: int
    producer_epoch: int


def pick_version(broker: tuple[int, int] | None) -> int | None:
    """The version to send given the broker's ApiVersions range (None: unknown, try v3);
    None when the broker supports none the proxy sends."""
    if broker is None:
        return MIN_VERSION
    low, high = broker
    version = min(high, MAX_VERSION)
    return version if version >= max(low, MIN_VERSION) else None


def init_producer_id_request(version: int, correlation_id: int, client_id: str) -> bytes:
    """A request body (header included, no size prefix)."""
    request: Any = InitProducerIdRequest[version](
        transactional_id=None,
        transaction_timeout_ms=_TIMEOUT_MS,
        producer_id=-1,
        producer_epoch=-1,
    )
    request.with_header(correlation_id=correlation_id, client_id=client_id)
    return bytes(request.encode(header=True))


def init_producer_id_answer(version: int, body: bytes) -> ProducerIdAnswer:
    """The answer in a response body (header included); DecodeError when it is not one."""
    try:
        response: Any = InitProducerIdResponse[version].decode(body, header=True)
    except Exception as exc:  # kafka-python raises a variety on bad bytes
        raise DecodeError(f"InitProducerId v{version} response: {exc}") from None
    return ProducerIdAnswer(
        int(response.error_code), int(response.producer_id), int(response.producer_epoch)
    )
