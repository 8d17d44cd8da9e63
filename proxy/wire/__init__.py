"""Kafka wire format: framing, header peeking, record batch header views, message codecs."""
