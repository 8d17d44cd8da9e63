"""The readiness probe's request and answer check (pure parts of proxy.server.health)."""

from __future__ import annotations

import pytest
from kafka.protocol.metadata.api_versions import ApiVersionsRequest, ApiVersionsResponse

from proxy.server.health import (
    PRODUCER_EXPIRY_KEY,
    api_versions_probe,
    probe_answered,
    producer_expiry_answer,
    producer_expiry_request,
)


def test_probe_is_an_api_versions_v0_request_any_broker_decodes() -> None:
    frame = api_versions_probe()
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    request = ApiVersionsRequest.decode(frame[4:], version=0, header=True)
    assert request.header.request_api_key == 18
    assert request.header.request_api_version == 0
    assert request.header.client_id == "idemproxy-readiness"


def _answer(correlation_id: int, error_code: int) -> bytes:
    response = ApiVersionsResponse[0](error_code=error_code, api_keys=[])
    response.with_header(correlation_id=correlation_id)
    return bytes(response.encode(header=True))


def test_broker_answer_to_the_probe_counts_as_ready() -> None:
    request = ApiVersionsRequest.decode(api_versions_probe()[4:], version=0, header=True)
    assert probe_answered(_answer(request.header.correlation_id, 0))


def test_error_answer_or_foreign_correlation_id_is_not_ready() -> None:
    request = ApiVersionsRequest.decode(api_versions_probe()[4:], version=0, header=True)
    assert not probe_answered(_answer(request.header.correlation_id, 35))
    assert not probe_answered(_answer(request.header.correlation_id + 1, 0))
    assert not probe_answered(b"\x00\x00")


def _describe_configs_answer(value: str | None, error_code: int = 0) -> bytes:
    from kafka.protocol.admin import DescribeConfigsResponse as R

    configs = (
        []
        if value is None
        else [
            R.DescribeConfigsResult.DescribeConfigsResourceResult(
                name=PRODUCER_EXPIRY_KEY,
                value=value,
                read_only=True,
                config_source=4,
                is_sensitive=False,
                synonyms=[],
            )
        ]
    )
    response = R[1](
        throttle_time_ms=0,
        results=[
            R.DescribeConfigsResult(
                error_code=error_code,
                error_message=None,
                resource_type=4,
                resource_name="1",
                configs=configs,
            )
        ],
    )
    response.with_header(correlation_id=0x1D4)
    return bytes(response.encode(header=True))


def test_expiry_probe_asks_one_broker_for_producer_id_expiration_by_node_id() -> None:
    from kafka.protocol.admin import DescribeConfigsRequest

    body = producer_expiry_request(3)[4:]
    request = DescribeConfigsRequest.decode(body, version=1, header=True)
    (resource,) = request.resources
    assert (resource.resource_type, resource.resource_name) == (4, "3")
    assert resource.configuration_keys == [PRODUCER_EXPIRY_KEY]


def test_expiry_answer_is_read_from_the_broker_value() -> None:
    assert producer_expiry_answer(_describe_configs_answer("600000")) == 600_000


@pytest.mark.parametrize(
    "answer",
    [
        _describe_configs_answer(None),
        _describe_configs_answer("600000", error_code=29),  # CLUSTER_AUTHORIZATION_FAILED
        _describe_configs_answer("soon"),
        _describe_configs_answer("0"),
        b"\x00\x00\x01\xd4 not a response",
    ],
    ids=["absent", "refused", "not-a-number", "zero", "garbage"],
)
def test_an_expiry_answer_without_a_usable_value_is_none(answer: bytes) -> None:
    assert producer_expiry_answer(answer) is None
