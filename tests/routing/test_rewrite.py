"""Broker address rewriting, end to end through the session, for every version of each API.

Each test builds the broker's response with kafka-python, feeds it to a session as the
upstream reply to a matching client request, and decodes what the client receives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from kafka.protocol.admin import DescribeClusterRequest, DescribeClusterResponse
from kafka.protocol.metadata import MetadataRequest, MetadataResponse
from kafka.protocol.metadata.find_coordinator import (
    FindCoordinatorRequest,
    FindCoordinatorResponse,
)
from kafka.protocol.producer import ProduceResponse

from proxy.address import Address
from proxy.errors import RoutingError
from proxy.routing.directory import BrokerDirectory
from proxy.routing.rewrite import rewrite_addresses
from proxy.routing.session import Session
from proxy.wire.apis import ApiKey
from proxy.wire.frames import frame
from proxy.wire.headers import peek_correlation_id

from ._support import (
    ADVERTISED_HOST,
    PORT_BASE,
    TOPIC_ID,
    UPSTREAM,
    Announced,
    encode_request,
    encode_response,
    exchange,
    make_directory,
    produce_request,
    proxied,
)

M = MetadataResponse
F = FindCoordinatorResponse
D = DescribeClusterResponse
P = ProduceResponse
PartitionResponse = P.TopicProduceResponse.PartitionProduceResponse

NodesOf = Callable[[Any], Iterable[Any]]


# -- message builders --------------------------------------------------------


def metadata_request(version: int) -> Any:
    return MetadataRequest[version](
        topics=[MetadataRequest.MetadataRequestTopic(name="orders", topic_id=TOPIC_ID)],
        allow_auto_topic_creation=False,
        include_cluster_authorized_operations=False,
        include_topic_authorized_operations=True,
    )


def metadata_response(version: int, node_ids: Iterable[int] = UPSTREAM) -> Any:
    partition = M.MetadataResponseTopic.MetadataResponsePartition
    return M[version](
        throttle_time_ms=12,
        brokers=[
            M.MetadataResponseBroker(
                node_id=n, host=UPSTREAM[n].host, port=UPSTREAM[n].port, rack=f"rack-{n % 2}"
            )
            for n in node_ids
        ],
        cluster_id="Xk3vTsn9QlmU2ZtmL5k1yw",
        controller_id=1,
        topics=[
            M.MetadataResponseTopic(
                error_code=0,
                name="orders",
                topic_id=TOPIC_ID,
                is_internal=False,
                partitions=[
                    partition(
                        error_code=0,
                        partition_index=p,
                        leader_id=p,
                        leader_epoch=5 + p,
                        replica_nodes=[p, 7],
                        isr_nodes=[p],
                        offline_replicas=[7],
                    )
                    for p in (0, 1)
                ],
                authorized_operations={3, 4},
            )
        ],
        authorized_operations={2},
        error_code=0,
    )


def find_coordinator_request(version: int) -> Any:
    return FindCoordinatorRequest[version](
        key="payments", key_type=0, coordinator_keys=["payments", "audit"]
    )


def find_coordinator_response(version: int, *, error: bool = False) -> Any:
    if version >= 4:
        return F[version](
            throttle_time_ms=3,
            coordinators=[
                F.Coordinator(
                    key="payments",
                    node_id=7,
                    host=UPSTREAM[7].host,
                    port=UPSTREAM[7].port,
                    error_code=0,
                    error_message=None,
                ),
                F.Coordinator(
                    key="audit",
                    node_id=-1,
                    host="",
                    port=-1,
                    error_code=15,  # COORDINATOR_NOT_AVAILABLE
                    error_message="The coordinator is not available.",
                ),
            ],
        )
    if error:
        return F[version](
            throttle_time_ms=3,
            error_code=15,
            error_message="The coordinator is not available.",
            node_id=-1,
            host="",
            port=-1,
        )
    return F[version](
        throttle_time_ms=3,
        error_code=0,
        error_message=None,
        node_id=7,
        host=UPSTREAM[7].host,
        port=UPSTREAM[7].port,
    )


def describe_cluster_request(version: int, endpoint_type: int = 1) -> Any:
    return DescribeClusterRequest[version](
        include_cluster_authorized_operations=True,
        endpoint_type=endpoint_type,
        include_fenced_brokers=True,
    )


def describe_cluster_response(version: int, endpoint_type: int = 1) -> Any:
    return D[version](
        throttle_time_ms=0,
        error_code=0,
        error_message=None,
        endpoint_type=endpoint_type,
        cluster_id="Xk3vTsn9QlmU2ZtmL5k1yw",
        controller_id=1,
        brokers=[
            D.DescribeClusterBroker(
                broker_id=n,
                host=UPSTREAM[n].host,
                port=UPSTREAM[n].port,
                rack=None if n else "rack-a",
                is_fenced=n == 7,
            )
            for n in UPSTREAM
        ],
        authorized_operations={1, 2, 3},
    )


def produce_response(version: int, *, endpoints: bool = True) -> Any:
    not_leader = PartitionResponse(
        index=0,
        error_code=6,  # NOT_LEADER_OR_FOLLOWER
        base_offset=-1,
        log_append_time_ms=-1,
        log_start_offset=-1,
        record_errors=[],
        error_message="This server is not the leader for that topic-partition.",
        current_leader=PartitionResponse.LeaderIdAndEpoch(leader_id=1, leader_epoch=9),
    )
    ok = PartitionResponse(
        index=1,
        error_code=0,
        base_offset=4200,
        log_append_time_ms=-1,
        log_start_offset=17,
        record_errors=[],
        error_message=None,
    )
    return P[version](
        responses=[
            P.TopicProduceResponse(
                name="orders", topic_id=TOPIC_ID, partition_responses=[not_leader, ok]
            )
        ],
        throttle_time_ms=0,
        node_endpoints=[
            P.NodeEndpoint(node_id=n, host=UPSTREAM[n].host, port=UPSTREAM[n].port, rack=None)
            for n in (1, 7)
        ]
        if endpoints
        else [],
    )


# -- the end-to-end check ----------------------------------------------------


def _metadata_nodes(response: Any) -> Iterable[Any]:
    return response.brokers


def _coordinator_nodes(response: Any) -> Iterable[Any]:
    if response.version >= 4:
        return [c for c in response.coordinators if c.node_id >= 0]
    return [response]


def _describe_nodes(response: Any) -> Iterable[Any]:
    return response.brokers


def _produce_nodes(response: Any) -> Iterable[Any]:
    return response.node_endpoints


def assert_rewritten(
    *,
    request: Any,
    response: Any,
    response_cls: Any,
    version: int,
    nodes_of: NodesOf,
    id_field: str,
    expected_ids: set[int],
) -> None:
    directory, announced = make_directory()
    session = Session(directory)
    correlation_id = 5000 + version
    broker_body = encode_response(response, correlation_id)
    request_body = encode_request(request, correlation_id)

    client_body = exchange(session, request_body, broker_body)

    assert peek_correlation_id(client_body) == correlation_id
    received = response_cls.decode(client_body, version=version, header=True)
    assert received.header.correlation_id == correlation_id
    assert received.version == version
    seen = set()
    for node in nodes_of(received):
        node_id = getattr(node, id_field)
        seen.add(node_id)
        assert (node.host, node.port) == (ADVERTISED_HOST, PORT_BASE + node_id)
    assert seen == expected_ids

    # Every other field is the broker's: patch the original's addresses and compare.
    expected = response_cls.decode(broker_body, version=version, header=True)
    for node in nodes_of(expected):
        advertised = proxied(getattr(node, id_field))
        node.host, node.port = advertised.host, advertised.port
    assert received == expected
    assert bytes(expected.encode(header=True)) == client_body

    # ...and patching the received addresses back yields the broker's response.
    for node in nodes_of(received):
        upstream = UPSTREAM[getattr(node, id_field)]
        node.host, node.port = upstream.host, upstream.port
    assert received == response_cls.decode(broker_body, version=version, header=True)

    assert directory.known_brokers() == {n: UPSTREAM[n] for n in expected_ids}
    assert sorted(announced.calls) == sorted((n, UPSTREAM[n]) for n in expected_ids)

    # The same answer again: same rewrite, no new announcement.
    again = exchange(session, encode_request(request, 1), encode_response(response, 1))
    assert again[4:] == client_body[4:]
    assert len(announced.calls) == len(expected_ids)


def assert_untouched(request: Any, response: Any) -> tuple[BrokerDirectory, Announced]:
    directory, announced = make_directory()
    session = Session(directory)
    broker_body = encode_response(response, 77)
    client_body = exchange(session, encode_request(request, 77), broker_body)
    assert client_body == broker_body
    assert directory.known_brokers() == {}
    assert announced.calls == []
    return directory, announced


# -- Metadata ------------------------------------------------------------------


@pytest.mark.parametrize("version", range(MetadataResponse.max_version + 1))
def test_metadata_broker_addresses_are_rewritten(version: int) -> None:
    assert_rewritten(
        request=metadata_request(version),
        response=metadata_response(version),
        response_cls=M,
        version=version,
        nodes_of=_metadata_nodes,
        id_field="node_id",
        expected_ids={0, 1, 7},
    )


def test_metadata_versions_cover_0_to_13() -> None:
    assert MetadataResponse.max_version == 13


@pytest.mark.parametrize("version", [0, 12])
def test_metadata_with_no_brokers_passes_unchanged(version: int) -> None:
    assert_untouched(metadata_request(version), metadata_response(version, node_ids=[]))


def test_metadata_unknown_tagged_fields_survive_the_rewrite() -> None:
    """A newer broker may add tagged fields to a version without bumping it (KIP-482)."""
    directory, _ = make_directory()
    session = Session(directory)
    broker_body = encode_response(metadata_response(12), 9)
    assert broker_body[-1] == 0  # no top-level tagged fields
    tag = bytes([1, 99, 3]) + b"new"  # one field: tag 99, 3 bytes
    with_tag = broker_body[:-1] + tag
    client_body = exchange(session, encode_request(metadata_request(12), 9), with_tag)
    assert client_body.endswith(tag)


def test_broker_address_change_is_learnt_but_announced_once() -> None:
    directory, announced = make_directory()
    session = Session(directory)
    exchange(
        session,
        encode_request(metadata_request(12), 1),
        encode_response(metadata_response(12, node_ids=[0]), 1),
    )
    moved = metadata_response(12, node_ids=[0])
    moved.brokers[0].host = "kafka-0-new.kafka.svc"
    body = exchange(session, encode_request(metadata_request(12), 2), encode_response(moved, 2))
    received = M.decode(body, version=12, header=True)
    assert (received.brokers[0].host, received.brokers[0].port) == (ADVERTISED_HOST, PORT_BASE)
    assert directory.upstream(0) == Address("kafka-0-new.kafka.svc", 9092)
    assert announced.calls == [(0, UPSTREAM[0])]


def test_node_id_mapping_past_port_65535_raises_routing_error() -> None:
    directory, announced = make_directory(port_base=65000)
    session = Session(directory)
    response = metadata_response(12, node_ids=[0])
    response.brokers[0].node_id = 536  # 65000 + 536 = 65536
    session.receive_client(frame(encode_request(metadata_request(12), 3)))
    with pytest.raises(RoutingError) as info:
        session.receive_upstream(frame(encode_response(response, 3)))
    assert info.value.error_code == 8
    assert announced.calls == []
    assert directory.known_brokers() == {}


def test_node_id_mapping_to_port_65535_is_accepted() -> None:
    directory, announced = make_directory(port_base=65000)
    session = Session(directory)
    response = metadata_response(12, node_ids=[0])
    response.brokers[0].node_id = 535
    body = exchange(session, encode_request(metadata_request(12), 3), encode_response(response, 3))
    assert M.decode(body, version=12, header=True).brokers[0].port == 65535
    assert announced.calls == [(535, UPSTREAM[0])]


# -- FindCoordinator -------------------------------------------------------------


@pytest.mark.parametrize("version", range(FindCoordinatorResponse.max_version + 1))
def test_find_coordinator_address_is_rewritten(version: int) -> None:
    assert_rewritten(
        request=find_coordinator_request(version),
        response=find_coordinator_response(version),
        response_cls=F,
        version=version,
        nodes_of=_coordinator_nodes,
        id_field="node_id",
        expected_ids={7},
    )


@pytest.mark.parametrize("version", range(4, FindCoordinatorResponse.max_version + 1))
def test_find_coordinator_list_leaves_the_error_coordinator_untouched(version: int) -> None:
    directory, _ = make_directory()
    session = Session(directory)
    body = exchange(
        session,
        encode_request(find_coordinator_request(version), 2),
        encode_response(find_coordinator_response(version), 2),
    )
    good, failed = F.decode(body, version=version, header=True).coordinators
    assert (good.key, good.host, good.port) == ("payments", ADVERTISED_HOST, PORT_BASE + 7)
    assert (failed.key, failed.node_id, failed.host, failed.port) == ("audit", -1, "", -1)
    assert failed.error_code == 15
    assert directory.known_brokers() == {7: UPSTREAM[7]}


@pytest.mark.parametrize("version", range(4))
def test_find_coordinator_single_form_error_is_left_untouched(version: int) -> None:
    assert_untouched(
        find_coordinator_request(version), find_coordinator_response(version, error=True)
    )


# -- DescribeCluster --------------------------------------------------------------


@pytest.mark.parametrize("version", range(DescribeClusterResponse.max_version + 1))
def test_describe_cluster_broker_endpoints_are_rewritten(version: int) -> None:
    assert_rewritten(
        request=describe_cluster_request(version),
        response=describe_cluster_response(version),
        response_cls=D,
        version=version,
        nodes_of=_describe_nodes,
        id_field="broker_id",
        expected_ids={0, 1, 7},
    )


@pytest.mark.parametrize("version", range(1, DescribeClusterResponse.max_version + 1))
def test_describe_cluster_controller_endpoints_are_left_alone(version: int) -> None:
    assert_untouched(
        describe_cluster_request(version, endpoint_type=2),
        describe_cluster_response(version, endpoint_type=2),
    )


# -- Produce -------------------------------------------------------------------------


@pytest.mark.parametrize("version", range(10, ProduceResponse.max_version + 1))
def test_produce_node_endpoints_are_rewritten(version: int) -> None:
    assert_rewritten(
        request=produce_request(version),
        response=produce_response(version),
        response_cls=P,
        version=version,
        nodes_of=_produce_nodes,
        id_field="node_id",
        expected_ids={1, 7},
    )


@pytest.mark.parametrize("version", range(3, 10))
def test_produce_before_node_endpoints_passes_unchanged(version: int) -> None:
    assert_untouched(produce_request(version), produce_response(version))


@pytest.mark.parametrize("version", range(10, ProduceResponse.max_version + 1))
def test_produce_without_node_endpoints_passes_unchanged(version: int) -> None:
    assert_untouched(produce_request(version), produce_response(version, endpoints=False))


# -- rewrite_addresses directly --------------------------------------------------------


def test_rewrite_ignores_apis_without_addresses() -> None:
    directory, announced = make_directory()
    sentinel = object()
    rewrite_addresses(ApiKey.FETCH, sentinel, directory)
    rewrite_addresses(ApiKey.PRODUCE, produce_response(9), directory)
    assert announced.calls == []


def test_rewrite_skips_negative_node_ids() -> None:
    directory, announced = make_directory()
    response = metadata_response(1, node_ids=[0])
    response.brokers[0].node_id = -1
    rewrite_addresses(ApiKey.METADATA, response, directory)
    assert response.brokers[0].host == UPSTREAM[0].host
    assert announced.calls == []
