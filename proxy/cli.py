"""The ``idemproxy`` command line.

click only parses; every option is taken as a string and handed to
:func:`proxy.config.load_config`, so values from the command line, the environment and
the config file are validated by the same code and fail with the same kind of
one-line message (exit code 2).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import click

from proxy import __version__
from proxy.config import (
    ENV_PREFIX,
    OPTIONS,
    SOURCE_CLI,
    ConfigError,
    StartError,
    load_config,
    misspelled_env_vars,
)
from proxy.logs import configure

__all__ = ["CONFIG_ENV_VAR", "EXIT_CONFIG_ERROR", "main", "serve"]

CONFIG_ENV_VAR = ENV_PREFIX + "CONFIG"
EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130

_F = Callable[..., object]
#: Options given on the command line as flags without a value.
_FLAGS = frozenset({"upstream_tls"})


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(
    __version__, "--version", prog_name="idemproxy", message="%(prog)s %(version)s"
)
def main() -> None:
    """A Kafka-protocol sidecar proxy that enforces producer idempotence."""


def _serve_options(f: _F) -> _F:
    for option in reversed(OPTIONS.values()):
        if not option.cli:
            continue
        # A flag gives "true" (parsed like IDEMPROXY_UPSTREAM_TLS=true); absent is None.
        flag: dict[str, Any] = (
            {"is_flag": True, "flag_value": "true"} if option.name in _FLAGS else {}
        )
        f = click.option(
            option.flag,
            option.name,
            metavar=option.metavar,
            multiple=option.name == "upstream",
            default=None,
            **flag,
            help=option.help
            + (" Repeatable." if option.name == "upstream" else "")
            + f" [env: {option.env_var}]",
        )(f)
    return click.option(
        "--config",
        "config_file",
        metavar="FILE",
        default=None,
        help=f"TOML config file; its keys are the option names with underscores "
        f"(see config/idemproxy.toml) [env: {CONFIG_ENV_VAR}].",
    )(f)


def _config_file(cli_value: str | None, environ: Mapping[str, str]) -> tuple[Path | None, str]:
    """The config file to read and where it was named."""
    if cli_value is not None:
        value, source = cli_value, SOURCE_CLI
    elif CONFIG_ENV_VAR in environ:
        value, source = environ[CONFIG_ENV_VAR], f"environment variable {CONFIG_ENV_VAR}"
    else:
        return None, SOURCE_CLI
    if not value.strip():
        raise ConfigError("config", source, f"expected a file path, got {value!r}")
    return Path(value).expanduser(), source


def _fail(ctx: click.Context, error: ConfigError) -> NoReturn:
    click.echo(f"idemproxy: error: {error}", err=True)
    ctx.exit(EXIT_CONFIG_ERROR)


@main.command()
@_serve_options
@click.pass_context
def serve(ctx: click.Context, /, config_file: str | None, **values: object) -> None:
    """Run the proxy.

    Every option can also be set by its IDEMPROXY_* environment variable or by a key
    in the config file; the command line wins over the environment, which wins over
    the file.
    """
    environ = os.environ
    try:
        path, source = _config_file(config_file, environ)
        config = load_config(values, environ, path, config_file_source=source)
    except ConfigError as e:
        _fail(ctx, e)

    configure(config.log_level, config.log_format)
    log = logging.getLogger("idemproxy.cli")
    for variable, suggestion in misspelled_env_vars(environ):
        log.warning(
            "ignoring unknown environment variable",
            extra={"variable": variable, "did_you_mean": suggestion},
        )

    # Imported lazily so `idemproxy --version` and config errors stay fast and do not
    # depend on the server's imports (uvloop, prometheus_client...).
    from proxy.server.app import run

    try:
        run(config)
    except StartError as e:  # a port in use: one line, like any other bad setting
        _fail(ctx, e)
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
