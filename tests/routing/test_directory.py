"""BrokerDirectory: upstream node id -> upstream address and advertised proxy address."""

from __future__ import annotations

import pytest

from proxy.address import Address
from proxy.errors import ProxyError, RoutingError
from proxy.routing.directory import BrokerDirectory, BrokerDiscovered

from ._support import ADVERTISED_HOST, PORT_BASE, make_directory


def test_address_prints_like_a_bootstrap_server() -> None:
    assert str(Address("kafka-0", 9092)) == "kafka-0:9092"
    assert str(Address("10.1.2.3", 1)) == "10.1.2.3:1"
    assert str(Address("::1", 9092)) == "[::1]:9092"
    assert str(Address("fe80::1%eth0", 19093)) == "[fe80::1%eth0]:19093"


def test_listener_port_is_port_base_plus_node_id() -> None:
    directory, _ = make_directory()
    assert directory.listener_port(0) == PORT_BASE
    assert directory.listener_port(42) == PORT_BASE + 42


def test_listener_port_up_to_65535() -> None:
    directory, _ = make_directory(port_base=65000)
    assert directory.listener_port(535) == 65535
    with pytest.raises(RoutingError) as info:
        directory.listener_port(536)
    assert "65536" in info.value.reason
    assert info.value.error_code == 8
    assert isinstance(info.value, ProxyError)


@pytest.mark.parametrize("node_id", [-1, -2, -(2**31)])
def test_negative_node_ids_have_no_listener(node_id: int) -> None:
    directory, _ = make_directory()
    with pytest.raises(RoutingError):
        directory.listener_port(node_id)


def test_port_zero_is_not_a_listener() -> None:
    directory, _ = make_directory(port_base=0)
    with pytest.raises(RoutingError):
        directory.listener_port(0)
    assert directory.listener_port(1) == 1


def test_huge_node_id_raises() -> None:
    directory, _ = make_directory()
    with pytest.raises(RoutingError):
        directory.listener_port(2**31 - 1)


def test_learn_returns_the_advertised_address_and_records_upstream() -> None:
    directory, announced = make_directory()
    advertised = directory.learn(3, "kafka-3.svc", 9092)
    assert advertised == Address(ADVERTISED_HOST, PORT_BASE + 3)
    assert directory.upstream(3) == Address("kafka-3.svc", 9092)
    assert directory.upstream(4) is None
    assert announced.calls == [(3, Address("kafka-3.svc", 9092))]


def test_each_new_node_is_announced_exactly_once() -> None:
    directory, announced = make_directory()
    for _ in range(3):
        directory.learn(1, "a", 1)
        directory.learn(2, "b", 2)
    directory.learn(1, "a-moved", 11)
    assert announced.calls == [(1, Address("a", 1)), (2, Address("b", 2))]
    assert directory.known_brokers() == {1: Address("a-moved", 11), 2: Address("b", 2)}


def test_a_new_node_is_reported_as_an_event_with_its_upstream_address() -> None:
    directory = BrokerDirectory(advertised_host="h", port_base=100)
    discovered: list[BrokerDiscovered] = []
    assert directory.learn(5, "up", 9, discovered) == Address("h", 105)
    directory.learn(5, "up", 9, discovered)
    assert discovered == [BrokerDiscovered(5, Address("up", 9))]
    assert directory.known_brokers() == {5: Address("up", 9)}


def test_unroutable_node_is_not_learnt_nor_announced() -> None:
    directory, announced = make_directory(port_base=65500)
    with pytest.raises(RoutingError):
        directory.learn(100, "far", 9092)
    assert directory.known_brokers() == {}
    assert announced.calls == []


def test_known_brokers_is_a_copy() -> None:
    directory, _ = make_directory()
    directory.learn(1, "x", 2)
    directory.known_brokers().clear()
    assert directory.upstream(1) == Address("x", 2)
