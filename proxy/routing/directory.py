"""The map between upstream brokers and the proxy listeners that front them.

Every broker address a client learns is replaced by a proxy address, so the
client never connects to a broker directly: broker node id N is served on
port_base + N of the advertised host. The directory learns upstream addresses
from the responses that carry them; a node seen for the first time is returned
to the caller as a `BrokerDiscovered` event, so the server can open its listener
before the rewritten response reaches the client (no callback: bytes in, events out).
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from proxy.address import Address
from proxy.errors import RoutingError


@dataclass(frozen=True, slots=True)
class BrokerDiscovered:
    """A broker node id seen for the first time: its listener must open."""

    node_id: int
    upstream: Address


@mypyc_attr(allow_interpreted_subclasses=True)  # tests record what it decides
class BrokerDirectory:
    """Upstream node id -> upstream address, and node id -> advertised proxy address."""

    def __init__(self, *, advertised_host: str, port_base: int) -> None:
        self.advertised_host = advertised_host
        self.port_base = port_base
        self._upstream: dict[int, Address] = {}

    def listener_port(self, node_id: int) -> int:
        """The proxy port that fronts broker node_id."""
        port = self.port_base + node_id
        if node_id < 0 or not 0 < port < 65536:
            raise RoutingError(
                f"broker node id {node_id} maps to port {port}, outside 1..65535 "
                f"(lower broker_port_base)"
            )
        return port

    def learn(
        self, node_id: int, host: str, port: int, discovered: list[BrokerDiscovered]
    ) -> Address:
        """Record where broker node_id really is; return the address the client must see instead.

        A node id never seen before is appended to `discovered`.
        """
        advertised = Address(self.advertised_host, self.listener_port(node_id))
        upstream = Address(host, port)
        previous = self._upstream.get(node_id)
        if previous != upstream:
            self._upstream[node_id] = upstream
            if previous is None:
                discovered.append(BrokerDiscovered(node_id, upstream))
        return advertised

    def upstream(self, node_id: int) -> Address | None:
        """The upstream address of a known broker, None before any response named it."""
        return self._upstream.get(node_id)

    def known_brokers(self) -> dict[int, Address]:
        return dict(self._upstream)
