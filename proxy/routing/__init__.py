"""Routing: which upstream broker each listener fronts, and rewriting the addresses brokers hand out."""
