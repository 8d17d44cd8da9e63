"""Message bodies through kafka-python's schema-generated classes (decoded only where needed).

kafka-python 3.x generates `kafka.protocol` from Kafka's JSON message schemas, so the
proxy never hand-writes a codec: it decodes a whole frame body with its header and
re-encodes it after a rewrite. Any failure inside the library becomes a DecodeError.
"""

from __future__ import annotations

from typing import Any

from kafka.protocol.admin import DescribeClusterResponse
from kafka.protocol.metadata import MetadataResponse
from kafka.protocol.metadata.api_versions import ApiVersionsResponse
from kafka.protocol.metadata.find_coordinator import FindCoordinatorResponse
from kafka.protocol.producer import ProduceResponse
from kafka.protocol.schemas.fields.codecs import TaggedFields
from kafka.protocol.schemas.fields.codecs.types import UnsignedVarInt32

from proxy.errors import DecodeError, UnsupportedVersion
from proxy.wire.apis import ApiKey


def _keep_unknown_tags() -> None:
    """Make kafka-python re-encode the tagged fields it does not know.

    KIP-482 lets a broker add tagged fields to an existing version; kafka-python
    keeps them in `unknown_tags` ("_<tag>" -> raw bytes) when decoding but drops
    them when encoding. A proxy that rewrites a response must not remove them, so
    tags are re-emitted in ascending order with the known ones, as Kafka requires.
    """
    original = TaggedFields.encode_into
    if getattr(original, "_idemproxy", False):
        return

    def encode_into(self: Any, item: Any, out: Any, version: int | None = None) -> None:
        unknown = getattr(item, "unknown_tags", None)
        if not unknown:
            original(self, item, out, version=version)
            return
        tags: list[tuple[int, bytes]] = [(int(name[1:]), raw) for name, raw in unknown.items()]
        for name, field in self._names.items():
            value = getattr(item, name, field.default)
            if value != field.default:
                encoded = field.encode(value, version=version, compact=True, tagged=None)
                tags.append((field.tag, bytes(encoded)))
        tags.sort()
        UnsignedVarInt32.encode_into(out, len(tags))
        for tag, raw in tags:
            UnsignedVarInt32.encode_into(out, tag)
            UnsignedVarInt32.encode_into(out, len(raw))
            out.ensure(len(raw))
            out.buf[out.pos : out.pos + len(raw)] = raw
            out.pos += len(raw)

    encode_into._idemproxy = True  # type: ignore[attr-defined]
    TaggedFields.encode_into = encode_into


_keep_unknown_tags()

# API key -> response class, for every API whose responses the proxy may decode in full
# (requests are only peeked at: Produce through proxy.wire.produce).
_MESSAGES: dict[int, Any] = {
    ApiKey.PRODUCE: ProduceResponse,
    ApiKey.METADATA: MetadataResponse,
    ApiKey.FIND_COORDINATOR: FindCoordinatorResponse,
    ApiKey.API_VERSIONS: ApiVersionsResponse,
    ApiKey.DESCRIBE_CLUSTER: DescribeClusterResponse,
}


def codec_max_version(api_key: int) -> int:
    """Highest version of an API kafka-python's generated classes can decode and encode."""
    return int(_MESSAGES[api_key].max_version)


def _response_class(api_key: int, version: int) -> Any:
    try:
        cls = _MESSAGES[api_key]
    except KeyError:
        raise UnsupportedVersion(f"API key {api_key} is not decoded by the proxy") from None
    if not 0 <= version <= cls.max_version:
        raise UnsupportedVersion(f"API key {api_key} version {version} cannot be decoded")
    return cls


#: Simple field types whose length prefix of -1 kafka-python decodes as None.
_LENGTH_PREFIXED = frozenset({"string", "bytes", "records"})


def _reject_nulls(struct: Any, item: Any, version: int, where: str) -> None:
    """Raise DecodeError for a null in a field its schema does not allow to be null.

    kafka-python decodes a length of -1 as None for every array, string and bytes field,
    nullable or not; Kafka's own parsers reject it ("non-nullable field ... was serialized
    as null"), and the proxy's code iterates those arrays. Only those types are checked:
    kafka-python also maps the all-zero UUID and the "not requested" authorized-operations
    bit field (-2^31) to None, which are valid values. A tagged field may be absent (None),
    but the structs of one that is present are checked like any other (NodeEndpoints of
    Produce v10+, whose hosts the proxy rewrites).
    """
    for name, field in struct.fields.items():
        if not field.for_version_q(version):
            continue
        value = getattr(item, name, None)
        if value is None:
            if (
                (field.is_array() or field.is_struct() or field.type_str in _LENGTH_PREFIXED)
                and not field.nullable_for_version_q(version)
                and not field.tagged_field_q(version)
            ):
                raise DecodeError(f"{where}: non-nullable field {name} is null")
        elif field.is_struct_array():
            for element in value:
                _reject_nulls(field, element, version, where)
        elif field.is_struct():
            _reject_nulls(field, value, version, where)


def decode_response(api_key: int, version: int, body: bytes) -> Any:
    """Decode a response body (header included) into kafka-python's message object."""
    cls = _response_class(api_key, version)
    try:
        message = cls.decode(body, version=version, header=True)
    except Exception as exc:
        raise DecodeError(f"{cls.__name__} v{version} does not decode: {exc!r}") from exc
    _reject_nulls(cls._struct, message, version, f"{cls.__name__} v{version}")
    return message


def encode(message: Any) -> bytes:
    """Encode a decoded (and possibly modified) message with its header, without the size prefix."""
    return bytes(message.encode(header=True))


def response_class(api_key: int) -> Any:
    """kafka-python's response class for an API the proxy decodes."""
    return _MESSAGES[api_key]
