"""The benchmark of issues 5 and 10: ``python -m integration.bench [--quick]``.

Starts a real Apache Kafka broker (1 KRaft node, from the Maven Central jars) and in front of
it: socat (a C byte relay, the reference; installed from Debian with apt-get when missing),
idemproxy (deduplication on) and, when it can be fetched, Kroxylicious as a passthrough peer
proxy. socat cannot rewrite broker addresses, so the broker has a second listener (RELAY)
advertised as socat's address: clients bootstrapping through socat stay on socat, the others
use the broker's own listener; one broker serves all four targets. Then measures, with the
targets interleaved and the order rotated every round:

* throughput at saturation with 1 KB records in two request profiles, large (batch.size
  262144, linger.ms 5) and small (batch.size 16384, linger.ms 0): Kafka's
  ``ProducerPerformance`` (idempotent, acks=all) sending the same number of records to each
  target. The profiles replace issue 5's 1 KB / 100 B record sizes (both would not fit the
  quick mode's 3 minutes);
* CPU seconds per GB of socat, idemproxy and Kroxylicious (utime+stime from /proc, socat's
  with its forked children; bytes from the records sent, and for idemproxy also from
  ``idemproxy_bytes_total{direction="request"}``);
* single-send latency percentiles at 1,000 records/s (raw requests and confluent-kafka);
* idemproxy's CPU per produce batch and its RSS with 10 and with 10,000 tracked
  producer-partitions (raw idempotent ProduceRequests from many producer ids);
* stamp mode beside pass mode for a producer without idempotence;
* a py-spy profile of idemproxy under the small-request load.

Writes ``results.md`` (tables), ``results.json`` (every run), ``bench.png``, ``profile.svg``
and the proxies' logs to ``results/bench-<timestamp>/`` (``--out``), and prints the
targets of issue 10 as met or MISSED, per profile: idemproxy throughput >= 0.95 of socat's,
its CPU per GB <= 1.5x socat's and <= Kroxylicious's; p99 added over direct <= 0.5 ms.
``--quick`` runs one short round (under 3 minutes); the default (3 rounds) takes longer.
Needs ``pip install -e '.[test,fast,bench]'``, Java 17+ and Maven.
"""
