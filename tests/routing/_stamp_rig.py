"""A reference broker and a proxy rig for the stamping tests (non-idempotent producers).

`ModelBroker` applies the broker's producer-state rules to every batch it is sent, written
from the Kafka sources independently of the proxy: ProducerAppendInfo.checkProducerEpoch /
checkSequence (a new epoch starts at 0, an older one is fenced, a state-less producer id takes
any sequence since KIP-360), ProducerStateEntry.findDuplicateBatch (the last 5 batches answer a
duplicate with their first offset), and no state at all for batches without a producer id. It
keeps the log (values per partition) so tests can count what was written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka.protocol.producer import ProduceRequest, ProduceResponse
from kafka.protocol.producer.transaction import InitProducerIdRequest, InitProducerIdResponse
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from proxy.idempotence.coordinator import ProduceCoordinator
from proxy.idempotence.engine import IdempotenceEngine
from proxy.idempotence.stamping import Stamper
from proxy.routing.directory import BrokerDirectory
from proxy.routing.session import Output, Session, Shared
from proxy.wire import error_codes as E
from proxy.wire.apis import ApiKey
from proxy.wire.batch import in_sequence, read_batch_header
from proxy.wire.frames import frame
from proxy.wire.headers import peek_request_header

from ._support import (
    PartitionAnswer,
    client_frames,
    decode_produce_response,
    encode_request,
    encode_response,
    produce_answers,
    produce_request_with,
    produce_response_with,
    upstream_frames,
)

T0 = 1_700_000_000_000
RETAINED = 5  # ProducerStateEntry.NUM_BATCHES_TO_RETAIN


def plain_batch(
    values: Sequence[bytes],
    *,
    timestamp: int = T0,
    keys: Sequence[bytes | None] | None = None,
    codec: int = DefaultRecordBatch.CODEC_NONE,
    timestamps: Sequence[int] | None = None,
) -> bytes:
    """A batch of a producer without idempotence (producer id, epoch, sequence -1); record i
    has `timestamps[i]`, or `timestamp + i`."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i, value in enumerate(values):
        key = None if keys is None else keys[i]
        ts = timestamp + i if timestamps is None else timestamps[i]
        builder.append(i, timestamp=ts, key=key, value=value, headers=[])
    return bytes(builder.build())


def batch_values(records: bytes) -> list[bytes]:
    out: list[bytes] = []
    batches = MemoryRecords(records)
    while (batch := batches.next_batch()) is not None:
        out.extend(bytes(r.value) for r in batch)
    return out


@dataclass
class _State:
    epoch: int
    last_seq: int
    cached: list[tuple[int, int, int]] = field(default_factory=list)  # first, last, offset


@dataclass
class ModelBroker:
    """The producer-state rules of an Apache Kafka partition leader, and its log."""

    logs: dict[tuple[str, int], list[bytes]] = field(default_factory=lambda: defaultdict(list))
    states: dict[tuple[int, str, int], _State] = field(default_factory=dict)
    next_pid: int = 5000
    pids_issued: int = 0
    refuse_pids: int = 0  # error code for InitProducerId (0: grant)

    def append(self, tp: tuple[str, int], records: bytes) -> tuple[int, int]:
        """(error code, base offset) for one partition's batch."""
        header = read_batch_header(records)
        log = self.logs[tp]
        if header.producer_id < 0:
            offset = len(log)
            log.extend(batch_values(records))
            return E.NONE, offset
        key = (header.producer_id, tp[0], tp[1])
        state = self.states.get(key)
        first, last = header.base_sequence, header.last_sequence
        if state is not None:
            if header.producer_epoch < state.epoch:
                return E.INVALID_PRODUCER_EPOCH, -1
            if header.producer_epoch == state.epoch:
                for f, la, off in state.cached:
                    if (f, la) == (first, last):
                        return E.NONE, off  # a duplicate: the cached first offset
                if not in_sequence(state.last_seq, first):
                    return E.OUT_OF_ORDER_SEQUENCE_NUMBER, -1
            elif first != 0:
                return E.OUT_OF_ORDER_SEQUENCE_NUMBER, -1
        if state is None or header.producer_epoch != state.epoch:
            state = self.states[key] = _State(header.producer_epoch, -1)
        offset = len(log)
        log.extend(batch_values(records))
        state.last_seq = last
        state.cached = [*state.cached, (first, last, offset)][-RETAINED:]
        return E.NONE, offset

    def forget(self, producer_id: int, tp: tuple[str, int]) -> None:
        """Producer state gone (expired, or the leader moved without it)."""
        self.states.pop((producer_id, tp[0], tp[1]), None)

    def handle(self, body: bytes) -> bytes:
        """A request body in, the response body out."""
        header = peek_request_header(body)
        if header.api_key == ApiKey.INIT_PRODUCER_ID:
            request: Any = InitProducerIdRequest.decode(
                body, version=header.api_version, header=True
            )
            assert request.transactional_id is None
            self.pids_issued += 1
            pid = self.next_pid
            self.next_pid += 1
            response: Any = InitProducerIdResponse[header.api_version](
                throttle_time_ms=0,
                error_code=self.refuse_pids,
                producer_id=-1 if self.refuse_pids else pid,
                producer_epoch=-1 if self.refuse_pids else 0,
            )
            return encode_response(response, header.correlation_id)
        assert header.api_key == ApiKey.PRODUCE
        version = header.api_version
        produce: Any = ProduceRequest.decode(body, version=version, header=True)
        answers = []
        for topic in produce.topic_data:
            parts = []
            for p in topic.partition_data:
                code, offset = self.append((topic.name, p.index), bytes(p.records))
                parts.append(PartitionAnswer(p.index, code, offset, -1, 0))
            answers.append((topic.name, parts))
        return encode_response(produce_response_with(version, answers), header.correlation_id)


class Clock:
    def __init__(self, ms: int = T0 + 60_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


class StampRig:
    """A proxy in stamp mode (a shared Stamper) with sessions to a ModelBroker."""

    def __init__(self, **stamper_options: Any) -> None:
        self.clock = Clock()
        self.broker = ModelBroker()
        self.stamper = Stamper(**stamper_options)
        coordinator = ProduceCoordinator(IdempotenceEngine(), policy="stamp", clock_ms=self.clock)
        directory = BrokerDirectory(advertised_host="proxy", port_base=9100)
        self.shared = Shared(directory, coordinator, stamper=self.stamper)
        self._ids = 0

    def connect(self, client_id: str = "app") -> StampConn:
        self._ids += 1
        return StampConn(self, self._ids, client_id)


class StampConn:
    """One client connection through the proxy; the test decides what reaches whom."""

    def __init__(self, rig: StampRig, session_id: int, client_id: str) -> None:
        self.rig = rig
        self.client_id = client_id
        self.session = Session(rig.shared, session_id=session_id)
        self._cid = 0

    def send(
        self,
        topics: Sequence[tuple[str, Sequence[tuple[int, bytes]]]],
        *,
        version: int = 9,
        acks: int = -1,
    ) -> tuple[list[bytes], list[bytes]]:
        """Client -> proxy: (request bodies the proxy sent upstream, client responses)."""
        self._cid += 1
        request = produce_request_with(version, topics, acks=acks)
        body = encode_request(request, self._cid, self.client_id)
        out = self.session.receive_client(frame(body))
        return upstream_frames(out), client_frames(out)

    def feed(self, bodies: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Broker responses -> proxy: (client response bodies, further upstream bodies)."""
        client: list[bytes] = []
        upstream: list[bytes] = []
        for body in bodies:
            out = self.session.receive_upstream(frame(body))
            client.extend(client_frames(out))
            upstream.extend(upstream_frames(out))
        return client, upstream

    def through_broker(self, upstream: list[bytes]) -> list[bytes]:
        """Every request the proxy sends goes to the broker and every answer comes back,
        until the proxy has nothing more to send; the client's responses."""
        client: list[bytes] = []
        while upstream:
            answers = [self.rig.broker.handle(b) for b in upstream]
            got, upstream = self.feed(answers)
            client.extend(got)
        return client

    def through_broker_with_error(self, upstream: list[bytes], code: int) -> list[bytes]:
        """As through_broker, but every Produce answer reaching the proxy says `code` (a relay
        between proxy and broker turns the broker's success into a retriable error)."""
        client: list[bytes] = []
        while upstream:
            answers = []
            for body in upstream:
                reply = self.rig.broker.handle(body)
                if peek_request_header(body).api_key == ApiKey.PRODUCE:
                    reply = produce_answer_with_error(reply, code)
                answers.append(reply)
            got, upstream = self.feed(answers)
            client.extend(got)
        return client

    def close(self) -> Output:
        return self.session.close()


def produce_answer_with_error(response: bytes, code: int, version: int = 9) -> bytes:
    """A Produce response with every partition's error set to `code` (offsets -1)."""
    decoded: Any = ProduceResponse.decode(response, version=version, header=True)
    for topic in decoded.responses:
        for p in topic.partition_responses:
            p.error_code = code
            p.base_offset = -1
    return bytes(decoded.encode(header=True))


def answers_of(body: bytes, version: int = 9) -> list[PartitionAnswer]:
    return [a for _, a in produce_answers(decode_produce_response(version, body))]


def produce_bodies(upstream: list[bytes]) -> list[bytes]:
    return [b for b in upstream if peek_request_header(b).api_key == ApiKey.PRODUCE]
