"""Narrowing the broker's ApiVersions answer, and the proxy's own UNSUPPORTED_VERSION answer."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from kafka.protocol.metadata.api_versions import ApiVersionsRequest, ApiVersionsResponse

from proxy.errors import UnsupportedVersion
from proxy.routing.api_versions import (
    VERSION_CAPS,
    narrow_api_versions,
    unsupported_api_versions_response,
)
from proxy.wire.apis import FETCH_MAX_VERSION, ApiKey
from proxy.wire.frames import frame

from ._support import (
    client_frames,
    encode_request,
    encode_response,
    exchange,
    make_session,
    raw_request,
)

A = ApiVersionsResponse
UNKNOWN_FUTURE_API = 200

#: What a recent broker offers: api key -> (min, max).
BROKER_OFFER = {
    ApiKey.PRODUCE: (0, 13),
    ApiKey.FETCH: (0, 17),
    2: (0, 9),  # ListOffsets: opaque, passed at the broker's versions
    ApiKey.METADATA: (0, 13),
    ApiKey.FIND_COORDINATOR: (0, 6),
    ApiKey.API_VERSIONS: (0, 4),
    ApiKey.DESCRIBE_CLUSTER: (0, 2),
    ApiKey.SHARE_FETCH: (1, 1),
    ApiKey.SHARE_ACKNOWLEDGE: (1, 1),
    UNKNOWN_FUTURE_API: (0, 3),
}


def api_versions_request(version: int) -> Any:
    return ApiVersionsRequest[version](
        client_software_name="idemproxy-tests", client_software_version="1.0"
    )


def api_versions_response(version: int, offer: dict[int, tuple[int, int]]) -> Any:
    return A[version](
        error_code=0,
        api_keys=[
            A.ApiVersion(api_key=key, min_version=lo, max_version=hi)
            for key, (lo, hi) in offer.items()
        ],
        throttle_time_ms=25,
        supported_features=[
            A.SupportedFeatureKey(name="metadata.version", min_version=1, max_version=25)
        ],
        finalized_features_epoch=42,
        finalized_features=[
            A.FinalizedFeatureKey(
                name="metadata.version", max_version_level=25, min_version_level=25
            )
        ],
        zk_migration_ready=False,
    )


def offered(response: Any) -> dict[int, tuple[int, int]]:
    return {e.api_key: (e.min_version, e.max_version) for e in response.api_keys}


def narrowed_through_session(version: int, offer: dict[int, tuple[int, int]]) -> tuple[Any, Any]:
    """(what the client decodes, the broker's response as decoded) for one exchange."""
    session, _ = make_session()
    broker_body = encode_response(api_versions_response(version, offer), 31)
    client_body = exchange(session, encode_request(api_versions_request(version), 31), broker_body)
    received = A.decode(client_body, version=version, header=True)
    assert received.header.correlation_id == 31
    return received, A.decode(broker_body, version=version, header=True)


@pytest.mark.parametrize("version", range(ApiVersionsResponse.max_version + 1))
def test_broker_versions_are_narrowed_for_the_client(version: int) -> None:
    received, original = narrowed_through_session(version, BROKER_OFFER)
    assert offered(received) == {
        ApiKey.PRODUCE: (0, 13),
        ApiKey.FETCH: (0, FETCH_MAX_VERSION),
        2: (0, 9),
        ApiKey.METADATA: (0, 13),
        ApiKey.FIND_COORDINATOR: (0, 6),
        ApiKey.API_VERSIONS: (0, 4),
        ApiKey.DESCRIBE_CLUSTER: (0, 2),
        UNKNOWN_FUTURE_API: (0, 3),
    }
    assert offered(received)[ApiKey.FETCH] == (0, 15)
    # Order kept, every other field the broker's.
    assert [e.api_key for e in received.api_keys] == [
        k for k in BROKER_OFFER if k not in (ApiKey.SHARE_FETCH, ApiKey.SHARE_ACKNOWLEDGE)
    ]
    original.api_keys = [
        e
        for e in original.api_keys
        if e.api_key not in (ApiKey.SHARE_FETCH, ApiKey.SHARE_ACKNOWLEDGE)
    ]
    for entry in original.api_keys:
        if entry.api_key == ApiKey.FETCH:
            entry.max_version = FETCH_MAX_VERSION
    assert received == original


@pytest.mark.parametrize("version", range(ApiVersionsResponse.max_version + 1))
def test_versions_above_the_codec_are_capped(version: int) -> None:
    future = {
        ApiKey.PRODUCE: (3, 20),
        ApiKey.FETCH: (4, 30),
        ApiKey.METADATA: (0, 20),
        ApiKey.FIND_COORDINATOR: (0, 20),
        ApiKey.API_VERSIONS: (0, 20),
        ApiKey.DESCRIBE_CLUSTER: (0, 20),
    }
    received, _ = narrowed_through_session(version, future)
    assert offered(received) == {key: (future[key][0], VERSION_CAPS[key]) for key in future}


def test_version_caps_are_the_codec_maxima_and_fetch_15() -> None:
    assert VERSION_CAPS == {
        ApiKey.PRODUCE: 13,
        ApiKey.METADATA: 13,
        ApiKey.FIND_COORDINATOR: 6,
        ApiKey.API_VERSIONS: 4,
        ApiKey.DESCRIBE_CLUSTER: 2,
        ApiKey.FETCH: 15,
        ApiKey.SASL_HANDSHAKE: 1,  # read for the mechanism (proxy.routing.sasl)
        ApiKey.SASL_AUTHENTICATE: 2,  # read for the principal and the outcome
    }


@pytest.mark.parametrize("version", range(ApiVersionsResponse.max_version + 1))
def test_sasl_handshake_is_offered_from_v1_only(version: int) -> None:
    received, _ = narrowed_through_session(
        version, {ApiKey.SASL_HANDSHAKE: (0, 1), ApiKey.SASL_AUTHENTICATE: (0, 2)}
    )
    assert offered(received) == {ApiKey.SASL_HANDSHAKE: (1, 1), ApiKey.SASL_AUTHENTICATE: (0, 2)}
    # A broker with only v0 (raw tokens after it): SaslHandshake is not offered at all.
    received, _ = narrowed_through_session(
        version, {ApiKey.SASL_HANDSHAKE: (0, 0), ApiKey.PRODUCE: (3, 13)}
    )
    assert offered(received) == {ApiKey.PRODUCE: (3, 13)}


def test_api_whose_min_version_is_above_the_cap_is_removed() -> None:
    received, _ = narrowed_through_session(
        3, {ApiKey.FETCH: (16, 17), ApiKey.METADATA: (14, 15), 2: (0, 9)}
    )
    assert offered(received) == {2: (0, 9)}


def test_min_version_equal_to_cap_is_kept() -> None:
    received, _ = narrowed_through_session(3, {ApiKey.FETCH: (15, 17)})
    assert offered(received) == {ApiKey.FETCH: (15, 15)}


def test_broker_unsupported_version_answer_passes_unchanged() -> None:
    """A broker that knows only ApiVersions v0-2 answers a v3 request at v0 with error 35."""
    session, _ = make_session()
    broker_reply = A[0](
        error_code=35, api_keys=[A.ApiVersion(api_key=18, min_version=0, max_version=2)]
    )
    broker_body = encode_response(broker_reply, 8)
    client_body = exchange(session, encode_request(api_versions_request(3), 8), broker_body)
    assert client_body == broker_body


@pytest.mark.parametrize("version", [3, 4])
def test_broker_invalid_request_answer_at_a_flexible_version_passes_unchanged(version: int) -> None:
    """The broker answers a v3+ request with an invalid client software name with
    INVALID_REQUEST serialised at the request's version (KafkaApis.handleApiVersionsRequest:
    only UNSUPPORTED_VERSION is sent at v0). The client must get the broker's answer."""
    session, _ = make_session()
    broker_reply = A[version](error_code=42, api_keys=[], throttle_time_ms=0)
    broker_body = encode_response(broker_reply, 8)
    request = ApiVersionsRequest[version](
        client_software_name="not valid!", client_software_version="1.0"
    )
    client_body = exchange(session, encode_request(request, 8), broker_body)
    assert client_body == broker_body


def test_narrowing_leaves_an_error_response_alone() -> None:
    response = A[0](
        error_code=35, api_keys=[A.ApiVersion(api_key=1, min_version=0, max_version=17)]
    )
    narrow_api_versions(response)
    assert offered(response) == {1: (0, 17)}


# -- the proxy's own answer to ApiVersions v5+ ---------------------------------------


def _api_versions_v5_request(correlation_id: int) -> bytes:
    # Header v2 (flexible): no tagged fields; body: compact strings name and version, no tags.
    return raw_request(ApiKey.API_VERSIONS, 5, correlation_id, b"\x00\x03cli\x021\x00")


def test_unsupported_api_versions_response_is_what_a_broker_sends() -> None:
    response = unsupported_api_versions_response(1234)
    body = bytes(response.encode(header=True))
    assert body[:4] == struct.pack(">i", 1234)
    decoded = A.decode(body, version=0, header=True)
    assert decoded.version == 0
    assert decoded.error_code == 35
    assert offered(decoded) == {18: (0, 4)}
    # v0: error code, then the api key array; nothing else.
    assert body[4:] == struct.pack(">hi hhh".replace(" ", ""), 35, 1, 18, 0, 4)


@pytest.mark.parametrize("version", [5, 6, 127, 32767])
def test_api_versions_request_above_cap_is_answered_by_the_session(version: int) -> None:
    session, _ = make_session()
    request = raw_request(ApiKey.API_VERSIONS, version, 4321, b"\x00\x03cli\x021\x00")
    out = session.receive_client(frame(request))
    assert out.upstream == []
    (body,) = client_frames(out)
    decoded = A.decode(body, version=0, header=True)
    assert decoded.header.correlation_id == 4321
    assert decoded.error_code == 35
    assert offered(decoded) == {18: (0, VERSION_CAPS[ApiKey.API_VERSIONS])}
    assert session.awaiting_upstream == 0


def test_api_versions_request_at_cap_is_forwarded() -> None:
    session, _ = make_session()
    request = encode_request(api_versions_request(4), 1)
    out = session.receive_client(frame(request))
    assert out.upstream == [frame(request)]
    assert out.client == []
    assert session.awaiting_upstream == 1


@pytest.mark.parametrize(
    ("api_key", "version"),
    [
        (ApiKey.METADATA, 14),
        (ApiKey.METADATA, 99),
        (ApiKey.FETCH, 16),
        (ApiKey.FETCH, 17),
        (ApiKey.PRODUCE, 14),
        (ApiKey.FIND_COORDINATOR, 7),
        (ApiKey.DESCRIBE_CLUSTER, 3),
    ],
)
def test_request_above_its_cap_raises_unsupported_version(api_key: int, version: int) -> None:
    session, _ = make_session()
    with pytest.raises(UnsupportedVersion) as info:
        session.receive_client(frame(raw_request(api_key, version, 1)))
    assert info.value.error_code == 35
    assert session.awaiting_upstream == 0


@pytest.mark.parametrize("api_key", [ApiKey.SHARE_FETCH, ApiKey.SHARE_ACKNOWLEDGE])
def test_request_for_a_hidden_api_is_refused(api_key: int) -> None:
    """Share* are hidden because their responses carry unrewritten node endpoints; a client
    that sends one anyway must not get the broker's addresses (as with Fetch v16+)."""
    session, _ = make_session()
    with pytest.raises(UnsupportedVersion):
        session.receive_client(frame(raw_request(api_key, 1, 1)))
    assert session.awaiting_upstream == 0


def test_v5_request_bytes_helper_is_well_formed() -> None:
    body = _api_versions_v5_request(9)
    assert struct.unpack_from(">hhi", body) == (18, 5, 9)
