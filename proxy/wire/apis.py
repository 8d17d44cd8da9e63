"""The API keys the proxy acts on, and the versions it lets clients use.

Following Kroxylicious, only the APIs the proxy must read are decoded; every
other API passes as an opaque frame at whatever version client and broker agree.
"""

from __future__ import annotations

from enum import IntEnum


class ApiKey(IntEnum):
    """Kafka API keys (org.apache.kafka.common.protocol.ApiKeys) the proxy refers to by name."""

    PRODUCE = 0
    FETCH = 1
    METADATA = 3
    FIND_COORDINATOR = 10
    SASL_HANDSHAKE = 17
    API_VERSIONS = 18
    INIT_PRODUCER_ID = 22
    SASL_AUTHENTICATE = 36
    DESCRIBE_CLUSTER = 60
    SHARE_FETCH = 78
    SHARE_ACKNOWLEDGE = 79


#: APIs whose responses carry broker addresses that the proxy rewrites.
ADDRESS_BEARING = frozenset(
    {ApiKey.METADATA, ApiKey.FIND_COORDINATOR, ApiKey.DESCRIBE_CLUSTER, ApiKey.PRODUCE}
)

#: Fetch v16+ responses carry KIP-951 NodeEndpoints; Fetch is never decoded (record
#: data is large), so clients are held at v15, which has no addresses.
FETCH_MAX_VERSION = 15

#: Share-group fetches carry node endpoints too and are not rewritten: hidden from clients.
HIDDEN_APIS = frozenset({ApiKey.SHARE_FETCH, ApiKey.SHARE_ACKNOWLEDGE})
