"""The benchmark of issue 5: ``python -m integration.bench [--quick]``.

Starts a real Apache Kafka broker (1 KRaft node, from the Maven Central jars), idemproxy in
front of it (deduplication on) and, when it can be fetched, Kroxylicious as a passthrough peer
proxy; then measures, with the targets interleaved and the order rotated every round:

* throughput at saturation, 1 KB and 100 B records: Kafka's ``ProducerPerformance``
  (idempotent, acks=all) sending the same number of records to each target;
* the proxies' CPU seconds per GB forwarded (utime+stime from /proc, bytes from
  ``idemproxy_bytes_total{direction="request"}`` and from the records sent);
* single-send latency percentiles at 1,000 records/s (confluent-kafka, linger.ms=0);
* idemproxy's CPU per produce batch and its RSS with 10 and with 10,000 tracked
  producer-partitions (raw idempotent ProduceRequests from many producer ids);
* a py-spy profile of idemproxy under the 1 KB load.

Writes ``results.md`` (tables), ``results.json`` (every run), ``bench.png``, ``profile.svg``
and the proxies' logs to ``results/bench-<timestamp>/`` (``--out``), and prints the ratios
against the targets (throughput >= 0.95 of direct for 1 KB records, p99 added <= 0.5 ms).
``--quick`` runs one short round (~2 minutes); the default (3 rounds) takes ~10 minutes.
Needs ``pip install -e '.[test,fast,bench]'``, Java 17+ and Maven.
"""
