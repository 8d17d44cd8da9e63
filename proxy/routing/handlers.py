"""The per-API handlers of a session: opaque forwarding, ApiVersions narrowing, address rewriting.

Kroxylicious' filter chain in small: each handler owns the API keys it acts on and, for a
request, forwards it, answers it, or holds it; every other API is an opaque frame forwarded
byte for byte at whatever version client and broker agree. Produce has its own handler
(proxy.routing.produce).
"""

from __future__ import annotations

from proxy.errors import UnsupportedVersion
from proxy.routing.api_versions import (
    VERSION_CAPS,
    narrow_api_versions,
    unsupported_api_versions_response,
)
from proxy.routing.rewrite import rewrite_addresses
from proxy.routing.session import Exchange, Handler, Output, Session, Shared
from proxy.wire import codec
from proxy.wire.apis import HIDDEN_APIS, ApiKey
from proxy.wire.frames import frame


class BaseHandler:
    """No state to settle and no timers: the common case."""

    def close(self, out: Output) -> None:
        pass

    def client_gone(self, out: Output) -> None:
        pass

    def next_deadline(self) -> int | None:
        return None

    def on_timer(self, now_ms: int, out: Output) -> None:
        pass

    def resume(self, out: Output) -> None:
        pass


class OpaqueHandler(BaseHandler):
    """Forward byte for byte; below `cap` when the API's newer versions carry addresses."""

    def __init__(self, cap: int | None = None) -> None:
        self.cap = cap

    def request(self, session: Session, exchange: Exchange, body: bytes, out: Output) -> None:
        check_cap(exchange, self.cap)
        session.forward(exchange, body, out)

    def response(
        self, session: Session, exchange: Exchange, body: bytes, tag: object, out: Output
    ) -> None:
        exchange.response = frame(body)


class HiddenHandler(BaseHandler):
    """APIs removed from ApiVersions (their responses carry addresses the proxy leaves alone)."""

    def request(self, session: Session, exchange: Exchange, body: bytes, out: Output) -> None:
        raise UnsupportedVersion(
            f"api key {exchange.header.api_key} is not offered by the proxy (its responses "
            "carry broker addresses the proxy does not rewrite)"
        )

    def response(
        self, session: Session, exchange: Exchange, body: bytes, tag: object, out: Output
    ) -> None:  # pragma: no cover - never forwarded
        raise AssertionError("hidden APIs are never forwarded")


class ApiVersionsHandler(OpaqueHandler):
    """The broker's ApiVersions answer, narrowed to what the proxy can read."""

    def request(self, session: Session, exchange: Exchange, body: bytes, out: Output) -> None:
        header = exchange.header
        if header.api_version > VERSION_CAPS[ApiKey.API_VERSIONS]:
            # Answered here as the broker would, so the client retries at a version both know.
            reply = unsupported_api_versions_response(header.correlation_id)
            exchange.response = frame(codec.encode(reply))
            return
        session.forward(exchange, body, out)

    def response(
        self, session: Session, exchange: Exchange, body: bytes, tag: object, out: Output
    ) -> None:
        if body[4:6] != b"\x00\x00":
            # An error answer (UNSUPPORTED_VERSION at v0, INVALID_REQUEST at the request's
            # version) lists nothing to narrow: pass the broker's bytes on.
            exchange.response = frame(body)
            return
        header = exchange.header
        response = codec.decode_response(header.api_key, header.api_version, body)
        session.broker_versions = {
            k.api_key: (k.min_version, k.max_version) for k in response.api_keys
        }
        narrow_api_versions(response)
        exchange.response = frame(codec.encode(response))


class RewriteHandler(OpaqueHandler):
    """Metadata, FindCoordinator, DescribeCluster: broker addresses replaced by the proxy's.

    Metadata v10+ also teaches the topic-id map (Produce v13 names topics by id); a topic that
    comes back with a new id was recreated, and its producer state is dropped.
    """

    def __init__(self, shared: Shared, cap: int) -> None:
        super().__init__(cap)
        self._shared = shared

    def response(
        self, session: Session, exchange: Exchange, body: bytes, tag: object, out: Output
    ) -> None:
        header = exchange.header
        response = codec.decode_response(header.api_key, header.api_version, body)
        rewrite_addresses(header.api_key, response, self._shared.directory, out.discovered)
        if header.api_key == ApiKey.METADATA and header.api_version >= 10:
            self._learn_topic_ids(response)
        exchange.response = frame(codec.encode(response))

    def _learn_topic_ids(self, response: object) -> None:
        topics = self._shared.topics
        for topic in getattr(response, "topics", None) or ():
            topic_id = getattr(topic, "topic_id", None)
            if topic.error_code != 0 or topic.name is None or topic_id is None:
                continue
            if topics.learn(topic.name, topic_id.bytes):
                self._shared.produce.engine.forget_topic(topic.name)


def check_cap(exchange: Exchange, cap: int | None) -> None:
    """Refuse a version above the one the proxy offered in ApiVersions."""
    header = exchange.header
    if cap is not None and header.api_version > cap:
        raise UnsupportedVersion(
            f"api key {header.api_key} v{header.api_version} is above the v{cap} "
            "offered in ApiVersions"
        )


def handlers_for(session: Session) -> tuple[dict[int, Handler], Handler]:
    """One connection's chain: API key -> handler, and the opaque default."""
    from proxy.routing.produce import ProduceHandler
    from proxy.routing.sasl import SaslHandler

    shared = session.shared
    opaque = OpaqueHandler()
    hidden = HiddenHandler()
    handlers: dict[int, Handler] = {
        ApiKey.API_VERSIONS: ApiVersionsHandler(),
        ApiKey.FETCH: OpaqueHandler(VERSION_CAPS[ApiKey.FETCH]),
        ApiKey.PRODUCE: ProduceHandler(session, VERSION_CAPS[ApiKey.PRODUCE]),
    }
    for key in (ApiKey.METADATA, ApiKey.FIND_COORDINATOR, ApiKey.DESCRIBE_CLUSTER):
        handlers[key] = RewriteHandler(shared, VERSION_CAPS[key])
    for key in HIDDEN_APIS:
        handlers[key] = hidden
    handlers[ApiKey.SASL_HANDSHAKE] = handlers[ApiKey.SASL_AUTHENTICATE] = SaslHandler()
    return handlers, opaque
