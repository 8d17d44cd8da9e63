"""Target ``responses``: every response the proxy decodes, and its rewrite and re-encode.

Input: byte 0 chooses the API, byte 1 the version (``_common.api_and_version``), the
rest is the response body (header included) as the broker sent it. The body goes
through ``peek_correlation_id``, for Produce the zero-copy ``ProduceResponseView``,
``codec.decode_response`` and, when it decodes, what the handlers do with it
(``narrow_api_versions``, or ``rewrite_addresses`` and the topic-id map) and
``codec.encode``. The re-encoded body must decode again: the proxy must never send a
client bytes that do not parse.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import RoutingError
from proxy.idempotence.topics import TopicNames
from proxy.routing.api_versions import narrow_api_versions
from proxy.routing.directory import BrokerDirectory
from proxy.routing.rewrite import rewrite_addresses
from proxy.wire import codec
from proxy.wire.apis import ApiKey
from proxy.wire.headers import peek_correlation_id
from proxy.wire.produce import MAX_VERSION, MIN_VERSION, ProduceResponseView
from tests.fuzz._common import api_and_version, must_not_raise


def learn_topic_ids(response: Any) -> None:
    """What RewriteHandler._learn_topic_ids reads of a Metadata response (v10+)."""
    topics = TopicNames()
    for topic in getattr(response, "topics", None) or ():
        topic_id = getattr(topic, "topic_id", None)
        if topic.error_code != 0 or topic.name is None or topic_id is None:
            continue
        topics.learn(topic.name, topic_id.bytes)


def produce_view(version: int, body: bytes) -> None:
    """What ProduceHandler.response reads of a Produce response before any decode."""
    if not MIN_VERSION <= version <= MAX_VERSION:
        return
    view = must_not_raise("ProduceResponseView", ProduceResponseView, body, version)
    if view is None:
        return
    for result in view.partitions():
        assert view.entry(result) == body[result.start : result.end]
        view.topic_tags(result.topic)
    view.tail()


def test_one_input(data: bytes) -> None:
    api, version = api_and_version(data[:2])
    body = data[2:]
    must_not_raise("peek_correlation_id", peek_correlation_id, body)
    if api == ApiKey.PRODUCE:
        produce_view(version, body)
    response = must_not_raise("decode_response", codec.decode_response, api, version, body)
    if response is None:
        return
    # Encoding what was decoded, untouched, must work too (the produce path does it).
    codec.encode(response)
    if api == ApiKey.API_VERSIONS:
        narrow_api_versions(response)
    else:
        directory = BrokerDirectory(advertised_host="proxy.fuzz", port_base=19000)
        try:
            rewrite_addresses(api, response, directory)
            if api == ApiKey.METADATA:
                learn_topic_ids(response)
        except RoutingError:
            return  # a node id outside the port range: the session closes, nothing is sent
    encoded = codec.encode(response)
    again = must_not_raise("decode(encode(...))", codec.decode_response, api, version, encoded)
    assert again is not None, f"re-encoded {api} v{version} response does not decode"
