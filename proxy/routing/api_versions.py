"""Narrowing the broker's ApiVersions answer to what the proxy can handle.

The client sees the broker's own list, except: APIs whose bodies the proxy decodes
are capped at the highest version its codec handles (and SaslHandshake starts at v1);
Fetch is capped below KIP-951 NodeEndpoints; APIs whose addresses the proxy does not
rewrite are removed.
Everything else passes at the broker's versions (opaque forwarding).
"""

from __future__ import annotations

from typing import Any

from proxy.wire.apis import FETCH_MAX_VERSION, HIDDEN_APIS, ApiKey
from proxy.wire.codec import codec_max_version, response_class
from proxy.wire.error_codes import UNSUPPORTED_VERSION
from proxy.wire.sasl import AUTHENTICATE_MAX_VERSION, HANDSHAKE_MAX_VERSION

#: Highest version the proxy lets clients use, per API it constrains.
VERSION_CAPS: dict[int, int] = {
    ApiKey.PRODUCE: codec_max_version(ApiKey.PRODUCE),
    ApiKey.METADATA: codec_max_version(ApiKey.METADATA),
    ApiKey.FIND_COORDINATOR: codec_max_version(ApiKey.FIND_COORDINATOR),
    ApiKey.API_VERSIONS: codec_max_version(ApiKey.API_VERSIONS),
    ApiKey.DESCRIBE_CLUSTER: codec_max_version(ApiKey.DESCRIBE_CLUSTER),
    ApiKey.FETCH: FETCH_MAX_VERSION,
    ApiKey.SASL_HANDSHAKE: HANDSHAKE_MAX_VERSION,
    ApiKey.SASL_AUTHENTICATE: AUTHENTICATE_MAX_VERSION,
}
#: Lowest version the proxy lets clients use, per API it constrains: SaslHandshake v0 is
#: followed by raw SASL tokens the proxy cannot frame (proxy.routing.sasl).
VERSION_FLOORS: dict[int, int] = {ApiKey.SASL_HANDSHAKE: 1}


def narrow_api_versions(response: Any) -> None:
    """Cap and hide API versions in a decoded ApiVersions response, in place."""
    if response.error_code != 0:
        return
    kept = []
    for entry in response.api_keys:
        if entry.api_key in HIDDEN_APIS:
            continue
        cap = VERSION_CAPS.get(entry.api_key)
        if cap is not None:
            entry.max_version = min(entry.max_version, cap)
        floor = VERSION_FLOORS.get(entry.api_key)
        if floor is not None:
            entry.min_version = max(entry.min_version, floor)
        if entry.min_version > entry.max_version:
            continue
        kept.append(entry)
    response.api_keys = kept


def unsupported_api_versions_response(correlation_id: int) -> Any:
    """What a broker answers to an ApiVersions request of a version it does not know.

    The broker (RequestContext.apiVersion, ApiVersionsRequest.getErrorResponse) replies
    at v0 with UNSUPPORTED_VERSION and only the ApiVersions range, so the client retries
    with a version both sides know.
    """
    cls = response_class(ApiKey.API_VERSIONS)
    response = cls[0](
        error_code=UNSUPPORTED_VERSION,
        api_keys=[
            cls.ApiVersion(
                api_key=ApiKey.API_VERSIONS,
                min_version=0,
                max_version=VERSION_CAPS[ApiKey.API_VERSIONS],
            )
        ],
    )
    response.with_header(correlation_id=correlation_id)
    return response
