"""The readiness probe's request and answer check (pure parts of proxy.server.health)."""

from __future__ import annotations

from kafka.protocol.metadata.api_versions import ApiVersionsRequest, ApiVersionsResponse

from proxy.server.health import api_versions_probe, probe_answered


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
