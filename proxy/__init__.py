"""idemproxy: a Kafka-protocol sidecar that answers duplicate produce retries itself."""

__version__ = "0.1.0"
