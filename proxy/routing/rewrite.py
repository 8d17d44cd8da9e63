"""Rewriting the broker addresses in responses so clients stay on the proxy.

Address-bearing responses (see ../../shared notes and Kroxylicious' broker address filter):
  Metadata            brokers[].host/port (all versions)
  FindCoordinator     host/port (v0-3), coordinators[].host/port (v4+, KIP-699)
  DescribeCluster     brokers[].host/port (when EndpointType is brokers, v1+)
  Produce v10+        node_endpoints[] (KIP-951, sent with NOT_LEADER_OR_FOLLOWER)
Fetch v16+ and share-group fetches also carry endpoints; the proxy narrows those
APIs in ApiVersions instead of decoding record-bearing responses.
"""

from __future__ import annotations

from typing import Any

from proxy.routing.directory import BrokerDirectory, BrokerDiscovered
from proxy.wire.apis import ApiKey

_ENDPOINT_TYPE_BROKERS = 1


def _rewrite_nodes(
    nodes: Any, directory: BrokerDirectory, id_field: str, discovered: list[BrokerDiscovered]
) -> None:
    for node in nodes or ():
        node_id = getattr(node, id_field)
        if node_id < 0:
            continue
        advertised = directory.learn(node_id, node.host, node.port, discovered)
        node.host = advertised.host
        node.port = advertised.port


def rewrite_addresses(
    api_key: int,
    response: Any,
    directory: BrokerDirectory,
    discovered: list[BrokerDiscovered] | None = None,
) -> list[BrokerDiscovered]:
    """Replace, in place, every broker address in a decoded response with its proxy address.

    Returns `discovered` (a new list when None) with the brokers seen for the first time.
    """
    found: list[BrokerDiscovered] = [] if discovered is None else discovered
    if api_key == ApiKey.METADATA:
        _rewrite_nodes(response.brokers, directory, "node_id", found)
    elif api_key == ApiKey.FIND_COORDINATOR:
        if response.version >= 4:
            for coordinator in response.coordinators:
                if coordinator.error_code == 0:
                    _rewrite_nodes([coordinator], directory, "node_id", found)
        elif response.error_code == 0:
            _rewrite_nodes([response], directory, "node_id", found)
    elif api_key == ApiKey.DESCRIBE_CLUSTER:
        endpoint_type = getattr(response, "endpoint_type", _ENDPOINT_TYPE_BROKERS)
        if endpoint_type == _ENDPOINT_TYPE_BROKERS:
            _rewrite_nodes(response.brokers, directory, "broker_id", found)
    elif api_key == ApiKey.PRODUCE and response.version >= 10:
        _rewrite_nodes(response.node_endpoints, directory, "node_id", found)
    return found
