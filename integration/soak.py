"""Soak: steady idempotent producers through the proxy; is its memory and state flat?

    python -m integration.soak --minutes 10

Not part of the test suite (it runs for minutes). Starts a local Apache Kafka node
(the integration harness; or uses ``--bootstrap``), an idemproxy process in front of
it (``ProxyProcess``) and ``--producers`` confluent-kafka idempotent producers,
each sending ``--rate`` records a second with unique values. Every ``--interval``
seconds it samples the proxy's RSS and fd count (``/proc``) and its
``idemproxy_producer_state_entries`` and connection gauges, and prints a row. At the
end it prints start/end/max figures and whether they stayed flat:

* state entries: flat when, after the warm-up, they never change (steady producers
  on a fixed set of partitions: one entry per producer-partition);
* RSS: flat when the end of the run is within ``--rss-slack-mib`` of the sample taken
  at the end of the warm-up, and the second half of the run grew no more than the
  first half after warm-up (a leak grows with traffic; a settled heap does not).

Exit status 0 when both are flat and no record failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import dataclass

from integration.clients import SteadyProducer
from integration.proxy_process import ProxyProcess


@dataclass
class Sample:
    seconds: float
    rss_kib: int
    fds: int
    states: int
    clients: int
    upstreams: int
    acked: int


def _metric(proxy: ProxyProcess, name: str) -> int:
    try:
        return int(proxy.metric(name))
    except OSError:
        return -1


def sample(proxy: ProxyProcess, began: float, producers: list[SteadyProducer]) -> Sample:
    return Sample(
        seconds=time.monotonic() - began,
        rss_kib=proxy.rss_kib(),
        fds=proxy.open_fds(),
        states=_metric(proxy, "idemproxy_producer_state_entries"),
        clients=_metric(proxy, "idemproxy_client_connections"),
        upstreams=_metric(proxy, "idemproxy_upstream_connections"),
        acked=sum(p.acked for p in producers),
    )


def verdict(samples: list[Sample], warmup: float, rss_slack_kib: int) -> dict[str, object]:
    steady = [s for s in samples if s.seconds >= warmup] or samples[-1:]
    first, last = steady[0], steady[-1]
    middle = steady[len(steady) // 2]
    rss_growth_first_half = middle.rss_kib - first.rss_kib
    rss_growth_second_half = last.rss_kib - middle.rss_kib
    return {
        "rss_start_kib": samples[0].rss_kib,
        "rss_after_warmup_kib": first.rss_kib,
        "rss_end_kib": last.rss_kib,
        "rss_max_kib": max(s.rss_kib for s in samples),
        "states_start": first.states,
        "states_end": last.states,
        "states_max": max(s.states for s in samples),
        "fds_start": first.fds,
        "fds_end": last.fds,
        "rss_flat": last.rss_kib - first.rss_kib <= rss_slack_kib
        and rss_growth_second_half <= max(rss_growth_first_half, 0) + rss_slack_kib // 2,
        "states_flat": len({s.states for s in steady}) == 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before 'flat' counts")
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--rate", type=int, default=250, help="records a second per producer")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rss-slack-mib", type=float, default=4.0)
    parser.add_argument("--bootstrap", help="an existing Kafka cluster (default: start one)")
    args = parser.parse_args(argv)

    cluster = None
    if args.bootstrap is None:
        from integration.harness import KafkaCluster

        print("starting a local Apache Kafka node...", flush=True)
        cluster = KafkaCluster(1).start()
        bootstrap = cluster.bootstrap
    else:
        bootstrap = args.bootstrap
    topic = f"soak-{uuid.uuid4().hex[:8]}"
    producers: list[SteadyProducer] = []
    try:
        if cluster is not None:
            cluster.create_topic(topic, partitions=args.partitions)
        with ProxyProcess(bootstrap, extra=["--log-level", "info"]) as proxy:
            print(f"kafka {bootstrap}, idemproxy pid {proxy.pid} on {proxy.bootstrap}, "
                  f"topic {topic} x{args.partitions}, {args.producers} producers x "
                  f"{args.rate}/s for {args.minutes} min", flush=True)  # fmt: skip
            producers = [
                SteadyProducer(proxy.bootstrap, topic, args.rate, f"p{i}")
                for i in range(args.producers)
            ]
            began = time.monotonic()
            samples = [sample(proxy, began, producers)]
            for p in producers:
                p.start()
            print(f"{'s':>6} {'rss MiB':>8} {'fds':>5} {'states':>7} {'clients':>7} "
                  f"{'upstr':>5} {'acked':>9}", flush=True)  # fmt: skip
            end = began + args.minutes * 60
            while time.monotonic() < end:
                time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
                s = sample(proxy, began, producers)
                samples.append(s)
                print(f"{s.seconds:6.0f} {s.rss_kib / 1024:8.1f} {s.fds:5d} {s.states:7d} "
                      f"{s.clients:7d} {s.upstreams:5d} {s.acked:9d}", flush=True)  # fmt: skip
            for p in producers:
                p.stop.set()
            for p in producers:
                p.finish()
            result = verdict(samples, args.warmup, int(args.rss_slack_mib * 1024))
            sent = sum(p.sent for p in producers)
            acked = sum(p.acked for p in producers)
            errors = [e for p in producers for e in p.errors]
    finally:
        for p in producers:
            p.stop.set()
        if cluster is not None:
            cluster.close()

    print(f"\nrecords sent {sent}, acknowledged {acked}, errors {len(errors)}")
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    for error in errors[:5]:
        print(f"error: {error}")
    ok = bool(result["rss_flat"]) and bool(result["states_flat"]) and not errors and acked == sent
    print("FLAT" if ok else "NOT FLAT (or records failed)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
