"""Routing: the broker behind each listener, and rewriting the addresses brokers hand out."""
