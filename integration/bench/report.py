"""Turns the benchmark's raw results (results.json) into the markdown tables, the plot and the
verdicts against the targets of issue 10."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from integration.bench.measure import Spread

#: Targets of issue 10, per request profile, measured in the same run.
TARGET_THROUGHPUT_RATIO = 0.95  # idemproxy / socat
TARGET_CPU_RATIO = 1.5  # idemproxy CPU per GB / socat's
TARGET_CPU_VS_KROXYLICIOUS = 1.0  # idemproxy CPU per GB / Kroxylicious's
TARGET_ADDED_P99_MS = 0.5  # over direct
#: "Cost flat in the number of producers and partitions": per-batch CPU at 10,000 tracked
#: producer-partitions, and in a 100-partition request, within 25% of the 10-partition baseline.
TARGET_FLAT_RATIO = 1.25

LABELS = {
    "direct": "direct",
    "socat": "socat",
    "idemproxy": "idemproxy",
    "idemproxy-mypyc": "idemproxy (mypyc)",
    "kroxylicious": "Kroxylicious",
}
#: The idemproxy builds measured against the targets: pure Python, and the compiled one.
PROXIES = ("idemproxy", "idemproxy-mypyc")
PROFILE_NAMES = {"large": "large requests", "small": "small requests"}
SIZE_LABELS = {1024: "1 KB", 100: "100 B"}


def normalise(results: dict[str, Any]) -> dict[str, Any]:
    """Results written before the request profiles (1 KB / 100 B record sizes) read as
    profiles named after their record size, so ``--report`` still rebuilds them."""
    meta = results["meta"]
    if "profiles" not in meta:
        sizes = meta.get("record_sizes", [])
        meta["profiles"] = [f"{SIZE_LABELS.get(int(s), s)} records" for s in sizes]
        meta["num_records"] = {
            f"{SIZE_LABELS.get(int(s), s)} records": n
            for s, n in meta.get("num_records", {}).items()
        }
        for row in results.get("throughput", []):
            row.setdefault("profile", f"{SIZE_LABELS.get(row['record_size'])} records")
    results.setdefault("socat", {})
    return results


def profile_label(profile: str, results: dict[str, Any] | None = None) -> str:
    """ "small requests (batch 16 KB, linger 0 ms)" and the like."""
    name = PROFILE_NAMES.get(profile, profile)
    props = ((results or {}).get("meta", {}).get("profile_props") or {}).get(profile)
    if not props:
        return name
    batch = int(props.get("batch.size", 0))
    return f"{name} (batch {batch // 1024} KB, linger {props.get('linger.ms')} ms)"


def _targets(results: dict[str, Any]) -> list[str]:
    return list(results["meta"]["targets"])


def _profiles(results: dict[str, Any]) -> list[str]:
    return list(results["meta"]["profiles"])


def _relays(results: dict[str, Any]) -> list[str]:
    """The targets with a process of their own between client and broker."""
    return [t for t in _targets(results) if t != "direct"]


def _runs(rows: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _spread(rows: Iterable[dict[str, Any]], key: str) -> Spread:
    return Spread.of([float(r[key]) for r in rows if r.get(key) is not None])


def _paired(
    rows: list[dict[str, Any]],
    key: str,
    target: str,
    base: str = "direct",
    ratio: bool = True,
    **match: Any,
) -> Spread:
    """Per-round ratio (or difference) of ``target`` against ``base`` run in the same round."""
    values = []
    for run in _runs(rows, target=target, **match):
        other = _runs(rows, target=base, round=run["round"], **match)
        if other:
            a, b = float(run[key]), float(other[0][key])
            values.append(a / b if ratio else a - b)
    return Spread.of(values)


# -- figures ------------------------------------------------------------------------------------


def throughput_ratio(
    results: dict[str, Any], target: str, profile: str, base: str = "direct"
) -> Spread:
    return _paired(results["throughput"], "mb_per_sec", target, base, profile=profile)


def added_latency(
    results: dict[str, Any], target: str, key: str = "p99_ms", client: str = "raw"
) -> Spread:
    return _paired(results["latency"], key, target, ratio=False, client=client)


def _run_cpu_per_gb(run: dict[str, Any], target: str, *, payload: bool = True) -> float | None:
    cpu = (run.get("cpu") or {}).get(target)
    forwarded = run["payload_bytes"] if payload else run.get("bytes_forwarded")
    if cpu is None or not forwarded:
        return None
    return float(cpu) / (forwarded / 1e9)


def cpu_per_gb(
    results: dict[str, Any], target: str, profile: str, *, payload: bool = True
) -> Spread:
    """CPU seconds of the relay or proxy process per GB: of record payload sent (records x
    record size, the same for every peer), or of ``idemproxy_bytes_total`` (idemproxy only)."""
    values = [
        _run_cpu_per_gb(run, target, payload=payload)
        for run in _runs(results["throughput"], target=target, profile=profile)
    ]
    return Spread.of([v for v in values if v is not None])


def cpu_ratio(results: dict[str, Any], target: str, profile: str, base: str) -> Spread:
    """Per-round ratio of ``target``'s CPU per GB of payload to ``base``'s."""
    values = []
    for run in _runs(results["throughput"], target=target, profile=profile):
        other = _runs(results["throughput"], target=base, profile=profile, round=run["round"])
        a = _run_cpu_per_gb(run, target)
        b = _run_cpu_per_gb(other[0], base) if other else None
        if a is not None and b:
            values.append(a / b)
    return Spread.of(values)


def cores_used(results: dict[str, Any], target: str, profile: str, process: str) -> Spread:
    values = []
    for run in _runs(results["throughput"], target=target, profile=profile):
        cpu = (run.get("cpu") or {}).get(process)
        if cpu is not None and run["send_seconds"] > 0:
            values.append(cpu / run["send_seconds"])
    return Spread.of(values)


def host_busy(results: dict[str, Any], target: str, profile: str) -> Spread:
    return Spread.of(
        [
            r["host_busy"] / r["host_total"] * results["meta"]["cpus"]
            for r in _runs(results["throughput"], target=target, profile=profile)
            if r.get("host_total")
        ]
    )


def _verdict(
    figure: str, spread: Spread, op: str, limit: float
) -> tuple[str, str, str, bool | None]:
    if spread.n == 0:
        return figure, "n/a", f"{op} {limit}", None
    met = spread.median >= limit if op == ">=" else spread.median <= limit
    return figure, spread.fmt(3), f"{op} {limit}", met


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(figure, measured, target, met) for each target of issue 10 (None: not measured)."""
    out: list[tuple[str, str, str, bool | None]] = []
    targets = _targets(results)
    for proxy in (p for p in PROXIES if p in targets and results["throughput"]):
        label = LABELS[proxy]
        for profile in _profiles(results):
            name = PROFILE_NAMES.get(profile, profile)
            if "socat" in targets:
                out.append(
                    _verdict(
                        f"{label} / socat throughput, {name}",
                        throughput_ratio(results, proxy, profile, base="socat"),
                        ">=",
                        TARGET_THROUGHPUT_RATIO,
                    )
                )
                out.append(
                    _verdict(
                        f"{label} / socat CPU per GB, {name}",
                        cpu_ratio(results, proxy, profile, "socat"),
                        "<=",
                        TARGET_CPU_RATIO,
                    )
                )
            if "kroxylicious" in targets:
                out.append(
                    _verdict(
                        f"{label} / Kroxylicious CPU per GB, {name}",
                        cpu_ratio(results, proxy, profile, "kroxylicious"),
                        "<=",
                        TARGET_CPU_VS_KROXYLICIOUS,
                    )
                )
    state = results.get("state") or {}
    if state.get("runs"):
        # Paired within a round, like the throughput ratios.
        base = {r["round"]: r["us_per_batch"] for r in _runs(state["runs"], setup="small")}
        for setup, figure in (
            ("large", "per-batch CPU at 10,000 / at 10 tracked producer-partitions"),
            ("wide", "per-batch CPU in 100-partition / in 10-partition requests"),
        ):
            runs = _runs(state["runs"], setup=setup)
            ratios = [r["us_per_batch"] / base[r["round"]] for r in runs if base.get(r["round"])]
            out.append(_verdict(figure, Spread.of(ratios), "<=", TARGET_FLAT_RATIO))
    for proxy in (p for p in PROXIES if p in targets and results["latency"]):
        out.append(
            _verdict(
                f"added p99 single-send latency through {LABELS[proxy]} (ms)",
                added_latency(results, proxy),
                "<=",
                TARGET_ADDED_P99_MS,
            )
        )
        rdkafka = added_latency(results, proxy, client="librdkafka")
        if rdkafka.n:
            out.append(
                _verdict(
                    "(same, seen by librdkafka with its ~1 ms send tick)",
                    rdkafka,
                    "<=",
                    TARGET_ADDED_P99_MS,
                )
            )
    return out


def ratio_lines(results: dict[str, Any]) -> list[str]:
    """The figures printed at the end of a run: ratios, CPU per GB, verdicts."""
    lines = []
    targets = _targets(results)
    for profile in _profiles(results) if results["throughput"] else []:
        name = PROFILE_NAMES.get(profile, profile)
        for target in _relays(results):
            parts = [f"{cpu_per_gb(results, target, profile).fmt(2)} CPU s/GB"]
            for base in ("direct", "socat"):
                if base in targets and base != target:
                    ratio = throughput_ratio(results, target, profile, base)
                    parts.append(f"throughput / {base}'s {ratio.fmt(3)}")
            lines.append(f"{name}, {LABELS[target]}: " + ", ".join(parts))
    for target in _relays(results):
        for client in ("raw", "librdkafka"):
            if not _runs(results["latency"], client=client, target=target):
                continue
            added = ", ".join(
                f"{name} {added_latency(results, target, key, client).fmt(3)}"
                for key, name in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
            )
            lines.append(f"{LABELS[target]} added latency ({client} client), ms: {added}")
    for figure, measured, target, met in verdicts(results):
        state = "n/a" if met is None else ("met" if met else "MISSED")
        lines.append(f"target {figure}: {measured} vs {target} -> {state}")
    return lines


# -- markdown -----------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _issue_table(results: dict[str, Any]) -> list[str]:
    """The table of issue 10, with Kroxylicious and direct beside it."""
    targets = _targets(results)
    header = ["profile"]
    header += [f"{LABELS[t]} CPU s/GB" for t in ("socat", *PROXIES, "kroxylicious") if t in targets]
    if "socat" in targets:
        header += [
            f"{LABELS[t]} throughput / socat's"
            for t in (*PROXIES, "kroxylicious", "direct")
            if t in targets
        ]
    if "idemproxy" in targets:
        header.append("idemproxy throughput / direct's")
    rows = []
    for profile in _profiles(results):
        row = [profile_label(profile, results)]
        row += [
            cpu_per_gb(results, t, profile).fmt(2)
            for t in ("socat", *PROXIES, "kroxylicious")
            if t in targets
        ]
        if "socat" in targets:
            row += [
                throughput_ratio(results, t, profile, base="socat").fmt(3)
                for t in (*PROXIES, "kroxylicious", "direct")
                if t in targets
            ]
        if "idemproxy" in targets:
            row.append(throughput_ratio(results, "idemproxy", profile).fmt(3))
        rows.append(row)
    return _table(header, rows)


def _throughput_section(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    targets = _targets(results)
    profiles = _profiles(results)
    out = [
        "## Against a C byte relay (issue 10)",
        "",
        "CPU seconds (utime+stime, from /proc) of each relay or proxy process per GB of record "
        "payload sent (records x 1 KB, 1 GB = 10^9 bytes), and throughput ratios paired "
        "within a round, in the throughput runs below.",
        "",
        *_issue_table(results),
    ]
    peer = results.get("socat") or {}
    if peer.get("note"):
        out += ["", peer["note"]]
    props = meta.get("profile_props") or {}
    out += [
        "",
        "## Throughput at saturation",
        "",
        "Java `ProducerPerformance` (1 KB records, "
        + ", ".join(
            f"{k}={v}"
            for k, v in meta["producer_props"].items()
            if not any(k in p for p in props.values())
        )
        + "; request profiles: "
        + "; ".join(profile_label(p, results) for p in profiles)
        + "), --throughput -1, the same number of records for every target ("
        + ", ".join(f"{PROFILE_NAMES.get(p, p)}: {n:,}" for p, n in meta["num_records"].items())
        + "), records picked from 1,000 random payloads (`--payload-file`), producer JVM "
        + f"`{' '.join(meta['producer_jvm_opts'][:3])}`. MiB/s as the tool prints it.",
        "",
    ]
    header = ["profile", *(f"{LABELS[t]} MiB/s" for t in targets)]
    header += [f"{LABELS[t]} / direct" for t in targets if t != "direct"]
    rows = []
    for profile in profiles:
        row = [PROFILE_NAMES.get(profile, profile)]
        for t in targets:
            runs = _runs(results["throughput"], target=t, profile=profile)
            row.append(_spread(runs, "mb_per_sec").fmt(1))
        for t in targets:
            if t != "direct":
                row.append(throughput_ratio(results, t, profile).fmt(3))
        rows.append(row)
    out += _table(header, rows)
    out += ["", "Records/s and the tool's latency under saturation (whole ms):", ""]
    header = [
        "profile",
        "target",
        "records/s",
        "avg ms",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "host CPUs busy",
    ]
    rows = []
    for profile in profiles:
        for t in targets:
            runs = _runs(results["throughput"], target=t, profile=profile)
            rows.append(
                [
                    PROFILE_NAMES.get(profile, profile),
                    LABELS[t],
                    _spread(runs, "records_per_sec").fmt(0),
                    _spread(runs, "avg_ms").fmt(1),
                    _spread(runs, "p50_ms").fmt(0),
                    _spread(runs, "p99_ms").fmt(0),
                    _spread(runs, "p999_ms").fmt(0),
                    host_busy(results, t, profile).fmt(2),
                ]
            )
    out += _table(header, rows)
    out += [
        "",
        "## Relay and proxy CPU",
        "",
        "CPU seconds (utime+stime of the process; for socat, of its parent and the children it "
        "forks per connection) per GB: of the record payload sent (records x record size, "
        "1 GB = 10^9 bytes, the same for every peer), and for idemproxy also of its "
        '`idemproxy_bytes_total{direction="request"}` counter. Cores: CPU seconds / the '
        "tool's send time.",
        "",
    ]
    header = [
        "peer",
        "profile",
        "CPU s / GB payload",
        "CPU s / GB forwarded (metric)",
        "peer cores",
        "broker cores",
    ]
    rows = []
    for t in targets:
        for profile in profiles:
            rows.append(
                [
                    LABELS[t],
                    PROFILE_NAMES.get(profile, profile),
                    "-" if t == "direct" else cpu_per_gb(results, t, profile).fmt(2),
                    cpu_per_gb(results, t, profile, payload=False).fmt(2)
                    if t == "idemproxy"
                    else "-",
                    "-" if t == "direct" else cores_used(results, t, profile, t).fmt(2),
                    cores_used(results, t, profile, "broker").fmt(2),
                ]
            )
    out += _table(header, rows)
    busy = Spread.of(
        [
            r["host_busy"] / r["host_total"] * meta["cpus"]
            for r in results["throughput"]
            if r.get("host_total")
        ]
    )
    out += [
        "",
        f"Every run keeps the host busy ({busy.fmt(2)} of {meta['cpus']} CPUs, averaged over "
        "the run including the producer JVM's start), so the runs are CPU-bound: the CPU a "
        "relay or proxy uses is taken from the broker and the producer on the same cores, and "
        "its throughput ratio mostly reflects its CPU per byte.",
    ]
    steal = [r for r in results["throughput"] if r.get("host_total") and "host_steal" in r]
    if steal:
        share = Spread.of([r["host_steal"] / r["host_total"] for r in steal])
        out += [
            "",
            f"Hypervisor steal during the runs: {100 * share.median:.1f}% of the host's CPU time "
            f"(median; highest {100 * share.high:.1f}%). On a shared virtual machine, figures "
            "from different runs can differ by more than the gaps within one run.",
        ]
    return out


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    targets = _targets(results)
    out = [
        f"# idemproxy benchmark, {meta['started']}",
        "",
        f"`{meta['command']}` on {meta['cpus']} CPUs ({meta['cpu_model']}), "
        f"Apache Kafka {meta['kafka_version']} (1 KRaft node), idemproxy {meta['idemproxy']} "
        f"(commit {meta['commit']}), Python {meta['python']}, {meta['rounds']} round(s) of every "
        "measurement, targets interleaved (order rotated each round). Figures are "
        "median [min-max] over rounds; ratios and differences are paired within a round.",
        "",
    ]
    if meta.get("quick"):
        out += [
            "**--quick**: one round of short runs. The broker's and the producer's JIT is still "
            "warming up, so the broker is slower and the proxies' throughput ratios come out "
            "closer to 1 than in the default run, and Kroxylicious's JVM is far from warm (its "
            "CPU per GB is inflated, so the comparison with it flatters idemproxy): a smoke "
            "check, not the figures to quote.",
            "",
        ]
    if results["throughput"]:
        out += _throughput_section(results)
    thr = results.get("throughput_proxy_memory")
    if thr and thr.get("produce_requests"):
        out += [
            "",
            f"Over all throughput runs (warm-ups included) idemproxy forwarded "
            f"{thr['produce_requests']:,.0f} Produce requests carrying {thr['batches']:,.0f} "
            f"batches ({thr['batches'] / thr['produce_requests']:.2f} batches and "
            f"{thr['request_bytes'] / thr['produce_requests'] / 1024:.1f} KiB a request); its "
            f"RSS peaked at {thr['hwm_kb'] / 1024:.1f} MB (VmHWM) tracking "
            f"{thr['entries']:,.0f} producer-partitions.",
        ]
    if results["latency"]:
        lm = meta["latency"]
        out += [
            "",
            "## Single-send latency",
            "",
            f"One {lm['record_size']} B record per ProduceRequest (idempotent, acks=all) at "
            f"{lm['rate']} records/s, after a warm-up, on a topic with one partition.",
            "",
            f"* **raw client** ({lm['seconds']} s a run): hand-made idempotent requests "
            "(InitProducerId through the target, then one batch per request, at most 5 in "
            "flight), timed in one Python thread from request written to response read "
            "(`time.perf_counter`). This is what the proxy adds, and nothing else.",
            f"* **librdkafka** ({lm['rdkafka_seconds']} s a run): confluent-kafka "
            f"{lm['client']} (librdkafka {lm['librdkafka']}), linger.ms=0, latency as librdkafka "
            "reports it (produce() to acknowledgement). Its broker thread puts a ~1 ms floor "
            "under every send at this rate, which hides differences below it.",
            "",
        ]
        header = [
            "client",
            "target",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "mean ms",
            "added p50",
            "added p99",
            "added p99.9",
        ]
        rows = []
        for client in ("raw", "librdkafka"):
            for t in targets:
                runs = _runs(results["latency"], target=t, client=client)
                if not runs:
                    continue
                row = [client, LABELS[t]] + [
                    _spread(runs, k).fmt(3) for k in ("p50_ms", "p99_ms", "p999_ms", "mean_ms")
                ]
                if t == "direct":
                    row += ["-", "-", "-"]
                else:
                    row += [
                        added_latency(results, t, k, client).fmt(3)
                        for k in ("p50_ms", "p99_ms", "p999_ms")
                    ]
                rows.append(row)
        out += _table(header, rows)
    state = results.get("state")
    if state and state.get("runs"):
        sm = state["meta"]
        out += [
            "",
            "## Cost per batch against tracked producer-partitions",
            "",
            f"Two fresh idemproxy processes, loaded in turn with the same raw idempotent "
            f"ProduceRequests (v{sm['version']}, {sm['partitions']} partitions x one "
            f"{sm['value_size']} B record batch each, "
            f"{sm['window']} request{'s' if sm['window'] != 1 else ''} in flight at a time, "
            f"{sm['requests']:,} requests a run) on one connection to the broker listener; one "
            f"tracks {sm['small']:,} producer-partitions ({sm['small_pids']} producer id x "
            f"{sm['partitions']} partitions), the other {sm['large']:,} ({sm['large_pids']:,} "
            "producer ids, cycled); a third sends requests of one producer id spanning "
            f"{sm.get('wide_partitions', '?')} partitions ({sm.get('wide_requests', '?'):,} "
            "requests a run, the same number of batches). CPU = utime+stime of the proxy "
            "process; batches = "
            '`idemproxy_produce_batches_total{result="forwarded"}`.',
            "",
        ]
        header = [
            "setup",
            "entries (gauge)",
            "CPU us / batch",
            "CPU us / request",
            "batches / s",
            "RSS MB after filling",
            "peak RSS MB (VmHWM)",
        ]
        labels = {
            "small": f"{sm['small']:,} tracked, {sm['partitions']} partitions a request",
            "large": f"{sm['large']:,} tracked, {sm['partitions']} partitions a request",
            "wide": f"{sm.get('wide', 0):,} tracked, {sm.get('wide_partitions', 0)} partitions "
            "a request",
        }
        rows = []
        for setup, label in labels.items():
            runs = _runs(state["runs"], setup=setup)
            mem = state["memory"].get(setup)
            if not runs or mem is None:
                continue
            rows.append(
                [
                    label,
                    f"{mem['entries']:,.0f}",
                    _spread(runs, "us_per_batch").fmt(1),
                    _spread(runs, "us_per_request").fmt(0),
                    _spread(runs, "batches_per_sec").fmt(0),
                    f"{mem['rss_after_fill_kb'] / 1024:.1f}",
                    f"{mem['hwm_end_kb'] / 1024:.1f}",
                ]
            )
        out += _table(header, rows)
        small = _spread(_runs(state["runs"], setup="small"), "us_per_batch")
        large = _spread(_runs(state["runs"], setup="large"), "us_per_batch")
        wide = _spread(_runs(state["runs"], setup="wide"), "us_per_batch")
        if small.n and large.n:
            out += [
                "",
                f"Per-batch cost at {sm['large']:,} / at {sm['small']:,} tracked: "
                f"{large.median / small.median:.3f}.",
            ]
        if small.n and wide.n:
            out += [
                f"Per-batch cost in a {sm['wide_partitions']}-partition request / in a "
                f"{sm['partitions']}-partition one: {wide.median / small.median:.3f}.",
            ]
    stamping = results.get("stamping") or []
    if stamping:
        rows = []
        for mode in ("direct", "pass", "stamp"):
            runs = [r for r in stamping if r["mode"] == mode]
            if not runs:
                continue
            mb = _spread(runs, "mb_per_sec")
            p99 = _spread(runs, "p99_ms")
            cpu = Spread.of([r["cpu_s_per_gb"] for r in runs if "cpu_s_per_gb" in r])
            rows.append(
                [mode, mb.fmt(1, " MiB/s"), p99.fmt(0, " ms"), cpu.fmt(2) if cpu.n else "-"]
            )
        out += [
            "",
            "## Stamp mode beside pass mode",
            "",
            "A producer without idempotence (ProducerPerformance, enable.idempotence=false, "
            "acks=all, 1 KB records, batch.size="
            f"{meta['producer_props'].get('batch.size')}, linger.ms="
            f"{meta['producer_props'].get('linger.ms')}) to the broker, through idemproxy "
            "passing its batches, and "
            "through idemproxy stamping them (producer id, epoch, sequence, CRC-32C).",
            "",
        ]
        out += _table(["path", "throughput", "p99", "proxy CPU s/GB"], rows)
    verdict_rows = [
        [figure, measured, target, "n/a" if met is None else ("met" if met else "MISSED")]
        for figure, measured, target, met in verdicts(results)
    ]
    if verdict_rows:
        out += [
            "",
            f"## Targets (issue 10, same run, {meta['cpus']} CPUs)",
            "",
            f"Per request profile: idemproxy throughput >= {TARGET_THROUGHPUT_RATIO} of socat's, "
            f"its CPU per GB <= {TARGET_CPU_RATIO}x socat's and <= Kroxylicious's (medians of "
            "per-round ratios); added p99 single-send latency over direct "
            f"<= {TARGET_ADDED_P99_MS} ms.",
            "",
        ]
        out += _table(["figure", "measured", "target", "verdict"], verdict_rows)
    peer = results.get("kroxylicious") or {}
    if peer:
        out += ["", "## Kroxylicious", "", peer.get("note", "")]
    profile = results.get("profile") or {}
    if profile.get("by_self"):
        out += [
            "",
            "## Where idemproxy spends its CPU",
            "",
            f"py-spy, {profile['seconds']} s at {profile['rate']} Hz during a 1 KB "
            "ProducerPerformance load, "
            f"{profile_label(profile.get('request_profile') or '-', results)} "
            f"({profile['samples']:,} samples; flame graph: "
            "`profile.svg`, collapsed stacks: `profile-collapsed.txt`).",
            "",
            "By component (each sample charged to its innermost frame):",
            "",
        ]
        out += _table(
            ["component", "% of samples"],
            [[name, f"{100 * share:.1f}"] for name, share in profile.get("by_component", [])],
        )
        out += ["", "Self time (on-CPU in the function itself):", ""]
        out += _table(
            ["function", "self %", "incl. %"],
            [
                [
                    f"`{h['function']}`",
                    f"{100 * h['self_share']:.1f}",
                    f"{100 * h['total_share']:.1f}",
                ]
                for h in profile["by_self"]
            ],
        )
        out += ["", "Inclusive time of idemproxy's own functions:", ""]
        out += _table(
            ["function", "incl. %", "self %"],
            [
                [
                    f"`{h['function']}`",
                    f"{100 * h['total_share']:.1f}",
                    f"{100 * h['self_share']:.1f}",
                ]
                for h in profile["by_total"]
            ],
        )
    elif profile.get("error"):
        out += ["", "## Profile", "", f"not taken: {profile['error']}"]
    return "\n".join(out) + "\n"


# -- plot ---------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = _targets(results)
    colors = {
        "direct": "#4c72b0",
        "socat": "#8c8c8c",
        "idemproxy": "#dd8452",
        "idemproxy-mypyc": "#c44e52",
        "kroxylicious": "#55a868",
    }
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))

    def bars(ax: Any, groups: list[str], series: dict[str, list[Spread]], ylabel: str) -> None:
        width = 0.8 / max(1, len(series))
        for i, (name, spreads) in enumerate(series.items()):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            heights = [s.median for s in spreads]
            errors = [
                [max(0.0, s.median - s.low) for s in spreads],
                [max(0.0, s.high - s.median) for s in spreads],
            ]
            ax.bar(
                xs,
                heights,
                width,
                yerr=errors,
                capsize=3,
                label=LABELS.get(name, name),
                color=colors.get(name),
            )
            for x, h in zip(xs, heights, strict=True):
                if h == h:
                    ax.annotate(f"{h:.3g}", (x, h), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    profiles = _profiles(results)
    groups = [profile_label(p, results).replace(" (", "\n(") for p in profiles]
    ax = axes[0][0]
    if results["throughput"]:
        bars(
            ax,
            groups,
            {
                t: [
                    _spread(_runs(results["throughput"], target=t, profile=p), "mb_per_sec")
                    for p in profiles
                ]
                for t in targets
            },
            "MiB/s",
        )
    ax.set_title("Throughput at saturation, 1 KB records (idempotent, acks=all)")

    ax = axes[0][1]
    if results["latency"]:
        keys = [("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")]
        bars(
            ax,
            [name for _, name in keys],
            {
                t: [_spread(_runs(results["latency"], target=t, client="raw"), k) for k, _ in keys]
                for t in targets
            },
            "ms",
        )
        ax.set_yscale("log")
        from matplotlib.ticker import FuncFormatter

        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
    rate = results["meta"].get("latency", {}).get("rate", "?")
    ax.set_title(f"Single-send latency at {rate} records/s (raw client)")

    ax = axes[1][0]
    state = results.get("state")
    if state and state.get("runs"):
        sm = state["meta"]
        setups = [s for s in ("small", "large", "wide") if _runs(state["runs"], setup=s)]
        names = {
            "small": f"{sm['small']:,} tracked",
            "large": f"{sm['large']:,} tracked",
            "wide": f"{sm.get('wide_partitions', '?')}-partition requests",
        }
        bars(
            ax,
            [names[s] for s in setups],
            {"idemproxy": [_spread(_runs(state["runs"], setup=s), "us_per_batch") for s in setups]},
            "proxy CPU us per batch",
        )
    ax.set_title("idemproxy CPU per produce batch vs producer-partitions tracked")

    ax = axes[1][1]
    relays = _relays(results)
    if results["throughput"] and relays:
        bars(
            ax,
            groups,
            {t: [cpu_per_gb(results, t, p) for p in profiles] for t in relays},
            "CPU s per GB of payload",
        )
    ax.set_title("Relay / proxy CPU per GB forwarded (lower is better)")
    fig.suptitle(
        f"idemproxy benchmark {results['meta']['started']} - {results['meta']['cpus']} CPUs, "
        f"{results['meta']['rounds']} round(s), median and min-max"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
