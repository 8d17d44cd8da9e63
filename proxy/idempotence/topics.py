"""One name per topic, whatever the Produce version: the topic-id map learned from Metadata.

Produce v13 (KIP-516) names a topic by its 16-byte id, v3-v12 by its name; the broker keeps one
producer state per partition whichever the client sends, so the engine must too. Metadata v10+
responses carry both, and every client learns topic ids from Metadata, which passes the proxy.
A name that comes back with another id was deleted and recreated: its old producer state went
with the old log (UnifiedLog is per topic id), so it must be forgotten.
"""

from __future__ import annotations

from collections import OrderedDict

_ZERO_ID = bytes(16)  # Uuid.ZERO_UUID: no id (Metadata below v10, or an error entry)


class TopicNames:
    """Topic id (16 bytes) <-> name, bounded; least recently learned forgotten first."""

    def __init__(self, max_topics: int = 100_000) -> None:
        if max_topics < 1:
            raise ValueError("max_topics must be positive")
        self._max = max_topics
        self._by_id: OrderedDict[bytes, str] = OrderedDict()
        self._by_name: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def name(self, topic_id: bytes) -> str | None:
        """The name of a topic id, None when no Metadata response named it yet."""
        return self._by_id.get(topic_id)

    def learn(self, name: str, topic_id: bytes) -> bool:
        """Record a (name, id) pair from a Metadata response; True when the name had another id
        (the topic was recreated: its producer state must be dropped)."""
        if topic_id == _ZERO_ID or len(topic_id) != 16:
            return False
        old = self._by_name.get(name)
        if old == topic_id:
            self._by_id.move_to_end(topic_id)
            return False
        if old is not None:
            del self._by_id[old]
        previous_name = self._by_id.pop(topic_id, None)
        if previous_name is not None and previous_name != name:
            del self._by_name[previous_name]  # renamed ids do not exist in Kafka; stay consistent
        self._by_id[topic_id] = name
        self._by_name[name] = topic_id
        if len(self._by_id) > self._max:
            _, dropped = self._by_id.popitem(last=False)
            del self._by_name[dropped]
        return old is not None
