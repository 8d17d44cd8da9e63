"""A local Apache Kafka (KRaft) to try the proxy against: ``make broker`` runs this.

    python -m integration.harness [--nodes N]

Starts the same Apache Kafka 4.x JVMs the integration tests use (jars from Maven
Central, cached in ~/.cache/idemproxy), prints the bootstrap address and the
``idemproxy serve`` command to run next, and runs until Ctrl-C (or SIGTERM), which
stops the brokers and deletes their data. Topics are created on first use.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import click

from . import BrokerStartError, _proc
from .kafka_broker import KafkaCluster

#: Where the printed idemproxy command listens (bootstrap) and serves its metrics.
PROXY_LISTEN_PORT = 9092
PROXY_METRICS = "127.0.0.1:9464"


def _idemproxy_command() -> str:
    """``idemproxy``, or its path beside this interpreter (.venv/bin) when that is not on PATH."""
    script = Path(sys.executable).parent / "idemproxy"
    if not script.exists():
        return "idemproxy"
    if shutil.which("idemproxy") == str(script):
        return "idemproxy"  # the virtual environment is active
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("--nodes", default=1, show_default=True, help="Brokers in the cluster (1 or 3).")
def main(nodes: int) -> None:
    """Run a local Apache Kafka cluster until Ctrl-C."""
    if nodes < 1:
        raise click.BadParameter("must be at least 1", param_hint="--nodes")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    click.echo(f"Starting Apache Kafka (KRaft, {nodes} node{'s' if nodes > 1 else ''})...")
    cluster = KafkaCluster(nodes)
    try:
        try:
            cluster.start()
        except BrokerStartError as exc:
            click.echo(f"Kafka did not start: {exc}", err=True)
            sys.exit(1)
        bootstrap = cluster.bootstrap
        top = max(cluster.node_ids())
        click.echo(
            f"\nKafka is up in {cluster.startup_seconds:.0f}s.\n"
            f"  bootstrap: {bootstrap}\n"
            f"  node ids:  {', '.join(map(str, cluster.node_ids()))}\n"
            f"  data and logs: {cluster.work_dir} (deleted on exit)\n"
            "\nIn another terminal, put idemproxy in front of it:\n\n"
            f"  {_idemproxy_command()} serve --upstream {bootstrap} "
            f"--listen 127.0.0.1:{PROXY_LISTEN_PORT} --metrics-listen {PROXY_METRICS}\n\n"
            f"and point producers at 127.0.0.1:{PROXY_LISTEN_PORT} (broker node N is served on "
            f"port {PROXY_LISTEN_PORT + 1}+N, so {PROXY_LISTEN_PORT + 2}"
            f"{f'-{PROXY_LISTEN_PORT + 1 + top}' if top > 1 else ''}); "
            f"metrics on http://{PROXY_METRICS}/metrics.\n"
            "\nCtrl-C stops Kafka."
        )
        while True:
            time.sleep(1)
            down = sorted(set(cluster.node_ids()) - set(cluster.running_node_ids()))
            if down:
                for node_id in down:
                    log = cluster.log_path(node_id)
                    click.echo(f"Kafka node {node_id} exited; tail of {log}:", err=True)
                    click.echo(_proc.tail(log, 25), err=True)
                sys.exit(1)
    except KeyboardInterrupt:
        click.echo("\nStopping Kafka...")
    finally:
        cluster.close()
    click.echo("Stopped; its data is deleted.")


if __name__ == "__main__":
    main()
