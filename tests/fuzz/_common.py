"""What the targets share: the APIs the proxy decodes, and how an input names one of them."""

from __future__ import annotations

from typing import Any

from proxy.errors import ProxyError
from proxy.wire import codec
from proxy.wire.apis import ApiKey

#: Every API whose bodies the proxy decodes (proxy/wire/codec.py), in a fixed order.
DECODED_APIS: tuple[int, ...] = (
    ApiKey.PRODUCE,
    ApiKey.METADATA,
    ApiKey.FIND_COORDINATOR,
    ApiKey.API_VERSIONS,
    ApiKey.DESCRIBE_CLUSTER,
)


def api_and_version(selector: bytes) -> tuple[int, int]:
    """The (api key, version) that the first two bytes of an input choose.

    Byte 0 is the API key itself when it is one the proxy decodes (so a seed file reads
    as ``api_key, version, body``), else an index; byte 1 is the version modulo one past
    the codec's highest, so every version the proxy can decode is reachable.
    """
    first = selector[0] if selector else 0
    api = first if first in DECODED_APIS else DECODED_APIS[first % len(DECODED_APIS)]
    top = codec.codec_max_version(api)
    version = (selector[1] if len(selector) > 1 else 0) % (top + 1)
    return api, version


def must_not_raise(label: str, fn: Any, *args: Any) -> Any:
    """Call fn; a ProxyError is a normal answer (None), anything else is a finding."""
    try:
        return fn(*args)
    except ProxyError:
        return None
    except Exception as exc:
        raise AssertionError(f"{label} raised {exc!r}, not a ProxyError") from exc
