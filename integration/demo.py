"""The main job, on a real local broker: lost acknowledgements with and without idemproxy.

    python -m integration.demo [--messages N] [--lose-every K]

Starts Apache Kafka (KRaft, from the Maven Central jars) behind a link that loses
every K-th produce acknowledgement after the broker wrote the batch, then sends N
messages four ways and reads them back through the same path:

  1. a plain producer (idempotence off), straight to the broker;
  2. an idempotent producer, straight to the broker;
  3. the same idempotent producer through idemproxy;
  4. the plain producer through idemproxy (its default `--non-idempotent stamp`: the proxy
     stamps producer ids and sequences into the batches and recognises retried records).

and prints, side by side, the messages written twice and the retried batches that
reached the broker, then the proxy's produce metrics (after run 3) and stamping metrics
(after run 4) from its /metrics. Runs 3 and 4 share one proxy.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import click

from integration import clients
from integration.rigs import Rig, kafka_rig, proxied_rig

#: The proxy's samples printed at the end of the run (from its /metrics).
PRODUCE_METRICS = (
    "idemproxy_produce_batches_total",
    "idemproxy_produce_records_total",
    "idemproxy_producer_state_entries",
)
#: The stamping samples printed at the end of run 4 (non-idempotent producers, stamp mode).
STAMP_METRICS = (
    "idemproxy_non_idempotent_batches_total",
    "idemproxy_producer_ids_total",
    "idemproxy_stamped_batches_total",
    "idemproxy_stamped_records_total",
    "idemproxy_retried_records_dropped_total",
    "idemproxy_stamp_records_in_doubt",
    "idemproxy_stamp_lines",
    "idemproxy_stamp_state_bytes",
    "idemproxy_stamp_state_evictions_total",
)


def produce_metrics(text: str, names: tuple[str, ...] = PRODUCE_METRICS) -> list[str]:
    """The samples of `names` in a Prometheus text exposition, in exposition order."""
    return [line for line in text.splitlines() if line.split("{", 1)[0].split(" ", 1)[0] in names]


def say(text: str) -> None:
    click.echo(text)
    sys.stdout.flush()


@dataclass
class Row:
    name: str
    acked: int
    read: int
    written_twice: int
    retries_at_broker: str
    acks_lost: int
    answered_by_proxy: str = "-"


def _run(
    name: str,
    rig: Rig,
    bootstrap: str,
    messages: int,
    idempotent: bool,
    lose: Callable[[int], None],
    lost: Callable[[], int],
    *,
    stamped: bool = False,
) -> Row:
    topic = f"demo-{''.join(c if c.isalnum() else '-' for c in name)}-{int(time.time())}"
    rig.cluster.create_topic(topic, partitions=3)
    values = clients.payloads(messages)
    before = Counter(rig.broker_relay.stats.batches)
    lost_before = lost()
    say(f"  producing {messages} messages ({'idempotent' if idempotent else 'plain'} producer)...")
    lose(1)
    acked = 0
    step = max(1, messages // 5)
    for i in range(0, messages, step):
        chunk = values[i : i + step]
        acked += clients.kafka_python_produce(
            bootstrap, topic, chunk, idempotent=idempotent, batch_size=256, retries=10
        )
        done = min(i + step, messages)
        say(f"    {done}/{messages} sent, {lost() - lost_before} acks lost so far")
    lose(0)
    reached = rig.broker_relay.stats.batches - before
    say("  reading everything back...")
    got = Counter(clients.kafka_python_consume(bootstrap, topic, messages, timeout=30))
    return Row(
        name,
        acked=acked,
        read=sum(got.values()),
        written_twice=sum(n - 1 for n in got.values() if n > 1),
        # Without a producer id every batch of a partition looks alike: retries are not countable.
        # Through idemproxy in stamp mode the broker sees the proxy's producer ids: countable.
        retries_at_broker=str(sum(n - 1 for n in reached.values() if n > 1))
        if idempotent or stamped
        else "n/a",
        acks_lost=lost() - lost_before,
    )


@click.command()
@click.option("--messages", default=500, show_default=True, help="Messages per run.")
@click.option("--lose-every", default=5, show_default=True, help="Lose every K-th produce ack.")
def main(messages: int, lose_every: int) -> None:
    """Show the duplicate-on-retry problem and idemproxy's cure on a real broker."""
    # The clients log every reset connection loudly; the table says what happened.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    say("Starting Apache Kafka (KRaft) behind a link that loses produce acknowledgements...")
    rig_context = contextmanager(kafka_rig)
    with rig_context(1) as rig:
        relay = rig.broker_relay
        rows = []

        def lose_direct(on: int) -> None:
            relay.drop_every(lose_every if on else 0)

        def lost_direct() -> int:
            return relay.stats.acks_dropped

        say("\n1. plain producer, no proxy")
        rows.append(_run("plain, no proxy", rig, rig.relayed_bootstrap, messages, False,
                         lose_direct, lost_direct))  # fmt: skip
        say("\n2. idempotent producer, no proxy")
        rows.append(_run("idempotent, no proxy", rig, rig.relayed_bootstrap, messages, True,
                         lose_direct, lost_direct))  # fmt: skip
        say("\n3. idempotent producer through idemproxy")
        with contextmanager(proxied_rig)(rig) as proxied:
            client_relay = proxied.client_relay
            proxy = proxied.proxy
            say(f"  idemproxy listening on {proxied.bootstrap} "
                f"(metrics: http://127.0.0.1:{proxy.metrics_port}/metrics)")  # fmt: skip

            def lose_proxied(on: int) -> None:
                client_relay.drop_every(lose_every if on else 0)

            def lost_proxied() -> int:
                return client_relay.stats.acks_dropped

            row = _run("idempotent, idemproxy", rig, proxied.bootstrap, messages, True,
                       lose_proxied, lost_proxied)  # fmt: skip
            # Retries of acknowledged batches, and of batches still awaiting the broker's answer.
            answered = sum(
                proxy.metric("idemproxy_produce_batches_total", result=result)
                for result in ("duplicate", "inflight_duplicate")
            )
            row.answered_by_proxy = f"{int(answered)} batches"
            rows.append(row)
            metrics = produce_metrics(proxy.metrics())
            stats = client_relay.stats
            per_request = sum(stats.batches.values()) / max(1, stats.produce_requests)

            say("\n4. plain producer through idemproxy (stamp mode, the default)")
            row = _run("plain, idemproxy", rig, proxied.bootstrap, messages, False,
                       lose_proxied, lost_proxied, stamped=True)  # fmt: skip
            # Records the proxy recognised as retries of records already written: not resent.
            dropped = proxy.metric("idemproxy_retried_records_dropped_total")
            row.answered_by_proxy = f"{int(dropped)} records"
            rows.append(row)
            stamp_metrics = produce_metrics(proxy.metrics(), STAMP_METRICS)
        say("")
        header = ("run", "acked", "read", "written twice", "acks lost",
                  "retries at broker", "answered by proxy")  # fmt: skip
        table = [header] + [
            (
                r.name,
                str(r.acked),
                str(r.read),
                str(r.written_twice),
                str(r.acks_lost),
                r.retries_at_broker,
                r.answered_by_proxy,
            )  # fmt: skip
            for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for line in table:
            say("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        say(
            "\nMore batches are retried than acks lost: a lost ack is the answer to one Produce "
            f"request, which carries a batch per partition ({per_request:.1f} on average here), "
            "and the reset connection loses the answers of every other request in flight on it; "
            "the producer retries all of those batches."
        )
        say("\nidemproxy's produce metrics at the end of run 3 (from its /metrics):")
        for sample in metrics:
            say(f"  {sample}")
        say("\nidemproxy's stamping metrics at the end of run 4 (from its /metrics):")
        for sample in stamp_metrics:
            say(f"  {sample}")
        say(
            "\nMetrics: idemproxy serves Prometheus metrics on --metrics-listen (/metrics); "
            "the dashboard and alert rules live in deploy/grafana and deploy/prometheus."
        )


if __name__ == "__main__":
    main()
