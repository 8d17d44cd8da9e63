"""Proxy configuration: option table, layering and validation.

Every option can be set, from highest to lowest precedence, on the command line
(``--max-frame-bytes``), by an environment variable (``IDEMPROXY_MAX_FRAME_BYTES``),
by a key in the TOML config file (``max_frame_bytes``), or left at its default.

:func:`load_config` is pure: it never prints or exits. Every problem is reported as
one :class:`ConfigError` that names the option, where the bad value came from and
what is wrong with it; the command line turns that into one line on stderr.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from proxy.address import Address
from proxy.server.tls import TLSSetupError, listener_context, upstream_context

__all__ = [
    "DEFAULT_LISTEN",
    "ENV_PREFIX",
    "OPTIONS",
    "SOURCE_CLI",
    "SOURCE_DEFAULT",
    "StartError",
    "ConfigError",
    "LogFormat",
    "LogLevel",
    "NonIdempotentPolicy",
    "Option",
    "ProxyConfig",
    "env_var_name",
    "load_config",
    "misspelled_env_vars",
    "parse_host_port",
]

ENV_PREFIX = "IDEMPROXY_"
SOURCE_CLI = "command line"
SOURCE_DEFAULT = "default"

NonIdempotentPolicy = Literal["stamp", "pass", "reject"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

MAX_FRAME_BYTES_LIMIT = 2**31 - 1


DEFAULT_LISTEN = Address("127.0.0.1", 9092)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """The validated, fully resolved proxy configuration."""

    upstream: tuple[Address, ...]
    """Bootstrap addresses of the real Kafka cluster (at least one)."""
    listen: Address = DEFAULT_LISTEN
    """Where clients bootstrap; the proxy's own metadata answers point at broker ports."""
    advertised_host: str
    """Host name the proxy puts in metadata responses (never a wildcard address)."""
    broker_port_base: int
    """Broker node id N is served on ``broker_port_base + N``."""
    metrics_listen: Address | None = None
    """Prometheus metrics endpoint; ``None`` disables it."""
    max_frame_bytes: int = 104_857_600
    """Largest request/response frame accepted, in bytes."""
    connect_timeout: float = 10.0
    """Seconds to wait for a TCP connection to an upstream broker."""
    drain_timeout: float = 30.0
    """Seconds an upstream connection stays open after its client left, to read
    responses still in flight."""
    inflight_wait: float = 1.0
    """Seconds a retry may wait for its identical original still in flight before it is
    forwarded to the broker (which deduplicates it)."""
    non_idempotent: NonIdempotentPolicy = "stamp"
    """What to do with produce requests from non-idempotent producers."""
    retry_window: float = 120.0
    """Seconds a non-idempotent client's record stays a retry candidate (stamp mode)."""
    stamp_memory: int = 64 << 20
    """Bytes of stamping state kept (batches for resends, records in doubt)."""
    max_producer_states: int = 100_000
    """Most producer-partitions (producer id, topic, partition) tracked at once."""
    producer_state_expiry: int = 86_400_000
    """Milliseconds of inactivity after which a producer's state is forgotten
    (like the broker's ``producer.id.expiration.ms``)."""
    upstream_tls: bool = False
    """Connect to the brokers over TLS (bootstrap, broker and probe connections)."""
    upstream_ca: Path | None = None
    """PEM bundle of the CAs trusted for the brokers' certificates; None: the system's."""
    upstream_cert: Path | None = None
    """Client certificate (PEM) presented to brokers that require one (mTLS)."""
    upstream_key: Path | None = None
    """Private key (PEM) of upstream_cert."""
    upstream_server_name: str | None = None
    """Name verified in every broker's certificate (and sent as SNI) instead of the host
    connected to."""
    listen_tls_cert: Path | None = None
    """Certificate (PEM, chain allowed) of the proxy's client listeners; None: plaintext."""
    listen_tls_key: Path | None = None
    """Private key (PEM) of listen_tls_cert."""
    listen_tls_client_ca: Path | None = None
    """PEM bundle of the CAs whose client certificates the listeners require (mTLS)."""
    tls_reload_interval: float = 10.0
    """Seconds between checks of the certificate files for a change (secret rotation)."""
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    shutdown_timeout: float = 10.0
    """Seconds to wait for in-flight requests on shutdown."""


class ConfigError(Exception):
    """A configuration value is missing or invalid.

    ``option`` is the option name as in :data:`OPTIONS` (``"listen"``), or
    ``"config"`` for problems with the config file itself. ``source`` says where the
    value came from: :data:`SOURCE_CLI`, ``"environment variable IDEMPROXY_LISTEN"``,
    ``"config file /etc/idemproxy.toml, key 'listen'"`` or :data:`SOURCE_DEFAULT`.
    ``str(error)`` is a one-line message such as
    ``--listen: expected HOST:PORT, got 'foo'``.
    """

    def __init__(self, option: str, source: str, reason: str) -> None:
        self.option = option
        self.source = source
        self.reason = reason
        super().__init__(self.message)

    @property
    def message(self) -> str:
        flag = "--" + self.option.replace("_", "-")
        where = "" if self.source == SOURCE_CLI else f" ({self.source})"
        return _one_line(f"{flag}{where}: {self.reason}")


class StartError(ConfigError):
    """A configured address cannot be used at start (a port in use, an address not local)."""

    def __init__(self, option: str, address: Address, reason: str) -> None:
        super().__init__(option, SOURCE_CLI, f"cannot listen on {address}: {reason}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def env_var_name(option: str) -> str:
    return ENV_PREFIX + option.upper()


# --- value parsers -------------------------------------------------------------------
# Each takes the raw value (a str from the command line or environment, or any TOML
# value from the config file) and returns the typed value or raises ValueError with
# the reason.

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_PORT_RE = re.compile(r"[0-9]+")


def parse_host_port(text: str) -> Address:
    """Parse ``HOST:PORT`` (IPv6 as ``[::1]:9092``); raise ValueError with the reason."""
    stripped = text.strip()
    if stripped.startswith("["):
        close = stripped.find("]")
        if close < 0 or stripped[close + 1 : close + 2] != ":":
            raise ValueError(f"expected [IPV6]:PORT, got {text!r}")
        host, port_text = stripped[1:close], stripped[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = stripped.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets, e.g. [::1]:9092; got {text!r}")
        if not _HOSTNAME_RE.fullmatch(host):
            raise ValueError(f"invalid host {host!r} in {text!r}")
    if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port in 1..65535, got {port_text!r} in {text!r}")
    return Address(host, int(port_text))


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _as_text(raw: object, what: str) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected {what} as a string, got {raw!r}")
    return raw


def _host_port(raw: object) -> Address:
    return parse_host_port(_as_text(raw, "HOST:PORT"))


def _optional_host_port(raw: object) -> Address | None:
    text = _as_text(raw, "HOST:PORT (or an empty string to disable)")
    if not text.strip():
        return None
    return parse_host_port(text)


def _host_port_list(raw: object) -> tuple[Address, ...]:
    items: list[str] = []
    if isinstance(raw, str):
        items.extend(raw.split(","))
    elif isinstance(raw, list | tuple) and raw:
        for item in raw:
            items.extend(_as_text(item, "each HOST:PORT").split(","))
    else:
        raise ValueError(f"expected a list of HOST:PORT, got {raw!r}")
    result: list[Address] = []
    for item in items:
        if not item.strip():
            raise ValueError(f"empty entry in HOST:PORT list {raw!r}")
        address = parse_host_port(item)
        if address not in result:
            result.append(address)
    return tuple(result)


def _advertised_host(raw: object) -> str:
    text = _as_text(raw, "a host name").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise ValueError("must not be empty")
    if ":" in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(
                f"expected a host name or IP address without a port, got {raw!r}"
            ) from None
    elif not _HOSTNAME_RE.fullmatch(text):
        raise ValueError(f"invalid host name {raw!r}")
    if _is_wildcard(text):
        raise ValueError(f"{text!r} is a wildcard address clients cannot connect to")
    return text


def _boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = _as_text(raw, "true or false").strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _readable_file(raw: object) -> Path:
    """A path to a file that can be read now (a certificate, key or CA bundle)."""
    text = _as_text(raw, "a file path").strip()
    if not text:
        raise ValueError("expected a file path, got an empty string")
    path = Path(text).expanduser()
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    return path


def _server_name(raw: object) -> str:
    text = _as_text(raw, "a host name").strip()
    if not text:
        raise ValueError("must not be empty")
    if not _HOSTNAME_RE.fullmatch(text) and not _is_ip(text):
        raise ValueError(f"invalid host name {raw!r}")
    return text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _integer(low: int, high: int) -> Callable[[object], int]:
    def parse(raw: object) -> int:
        value: int
        if isinstance(raw, bool):
            raise ValueError(f"expected an integer, got {raw!r}")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"\s*[+-]?[0-9][0-9_]*\s*", raw):
            value = int(raw)
        else:
            raise ValueError(f"expected an integer, got {raw!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _seconds(*, allow_zero: bool) -> Callable[[object], float]:
    def parse(raw: object) -> float:
        value: float
        if isinstance(raw, bool):
            raise ValueError(f"expected a number of seconds, got {raw!r}")
        if isinstance(raw, int | float):
            value = float(raw)
        elif isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"expected a number of seconds, got {raw!r}") from None
        else:
            raise ValueError(f"expected a number of seconds, got {raw!r}")
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"must be a finite number of seconds {bound}, got {raw!r}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(raw: object) -> str:
        text = _as_text(raw, "one of " + ", ".join(choices)).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}; got {raw!r}")
        return text

    return parse


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration option: its parser plus what the CLI help needs."""

    name: str
    parse: Callable[[object], object]
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return env_var_name(self.name)


_FIELDS = {f.name: f for f in dataclasses.fields(ProxyConfig)}


def _default(name: str) -> object:
    """The dataclass default, so the help text cannot drift from it."""
    return _FIELDS[name].default


OPTIONS: dict[str, Option] = {
    o.name: o
    for o in [
        Option(
            "upstream",
            _host_port_list,
            "HOST:PORT[,HOST:PORT...]",
            "Bootstrap brokers of the real Kafka cluster (required; IPv6 as [::1]:9092).",
        ),
        Option(
            "listen",
            _host_port,
            "HOST:PORT",
            f"Address clients bootstrap from [default: {_default('listen')}].",
        ),
        Option(
            "advertised_host",
            _advertised_host,
            "HOST",
            "Host name put in metadata responses [default: the --listen host; required "
            "when that is a wildcard such as 0.0.0.0].",
        ),
        Option(
            "broker_port_base",
            _integer(1, 65535),
            "PORT",
            "Broker node id N is served on PORT+N [default: the --listen port + 1].",
        ),
        Option(
            "metrics_listen",
            _optional_host_port,
            "HOST:PORT",
            "Serve Prometheus metrics here; empty disables [default: disabled].",
        ),
        Option(
            "max_frame_bytes",
            _integer(1, MAX_FRAME_BYTES_LIMIT),
            "BYTES",
            f"Largest Kafka frame accepted [default: {_default('max_frame_bytes')}].",
        ),
        Option(
            "connect_timeout",
            _seconds(allow_zero=False),
            "SECONDS",
            "Timeout connecting to a broker, and for a client's TLS handshake "
            f"[default: {_default('connect_timeout')}].",
        ),
        Option(
            "drain_timeout",
            _seconds(allow_zero=True),
            "SECONDS",
            "How long an upstream connection stays open after its client disconnected, "
            f"to read responses in flight [default: {_default('drain_timeout')}].",
        ),
        Option(
            "inflight_wait",
            _seconds(allow_zero=True),
            "SECONDS",
            "Longest a retry waits for its identical original still in flight; after that it "
            "is forwarded and the broker deduplicates it "
            f"[default: {_default('inflight_wait')}].",
        ),
        Option(
            "non_idempotent",
            _choice("stamp", "pass", "reject"),
            "stamp|pass|reject",
            "Produce requests from non-idempotent producers: stamp them with the proxy's own "
            "producer ids so a retried record is written once, forward them as they are, or "
            f"reject them [default: {_default('non_idempotent')}].",
        ),
        Option(
            "retry_window",
            _seconds(allow_zero=False),
            "SECONDS",
            "Stamp mode: how long a record whose acknowledgement the client may have missed is "
            "recognised when sent again (like the producer's delivery.timeout.ms) "
            f"[default: {_default('retry_window')}].",
        ),
        Option(
            "stamp_memory",
            _integer(1 << 20, 2**63 - 1),
            "BYTES",
            "Stamp mode: most bytes kept for resends and records in doubt; the least recently "
            f"used partition's state is forgotten first [default: {_default('stamp_memory')}].",
        ),
        Option(
            "max_producer_states",
            _integer(1, 2**63 - 1),
            "COUNT",
            "Most producer-partitions tracked; the least recently used is evicted "
            f"[default: {_default('max_producer_states')}].",
        ),
        Option(
            "producer_state_expiry",
            _integer(1, 2**63 - 1),
            "MILLISECONDS",
            "Forget a producer after this much inactivity, like the broker's "
            "producer.id.expiration.ms; lowered to the brokers' own value when they report a "
            f"smaller one [default: {_default('producer_state_expiry')}].",
        ),
        Option(
            "upstream_tls",
            _boolean,
            "",
            "Connect to the brokers over TLS, verifying each broker's certificate and host "
            "name [default: off].",
        ),
        Option(
            "upstream_ca",
            _readable_file,
            "FILE",
            "PEM bundle of the CAs trusted for the brokers' certificates "
            "[default: the system's trust store].",
        ),
        Option(
            "upstream_cert",
            _readable_file,
            "FILE",
            "Client certificate (PEM) for brokers that require one (mTLS); needs "
            "--upstream-key [default: none].",
        ),
        Option(
            "upstream_key",
            _readable_file,
            "FILE",
            "Private key (PEM, unencrypted) of --upstream-cert [default: none].",
        ),
        Option(
            "upstream_server_name",
            _server_name,
            "NAME",
            "Name verified in every broker's certificate and sent as SNI [default: the host "
            "connected to: the bootstrap host, or the broker's advertised host].",
        ),
        Option(
            "listen_tls_cert",
            _readable_file,
            "FILE",
            "Serve clients over TLS with this certificate (PEM, chain allowed); it must name "
            "the --advertised-host. Needs --listen-tls-key [default: plaintext].",
        ),
        Option(
            "listen_tls_key",
            _readable_file,
            "FILE",
            "Private key (PEM, unencrypted) of --listen-tls-cert [default: none].",
        ),
        Option(
            "listen_tls_client_ca",
            _readable_file,
            "FILE",
            "Require a client certificate signed by one of these CAs (PEM bundle; mTLS) "
            "[default: no client certificate asked].",
        ),
        Option(
            "tls_reload_interval",
            _seconds(allow_zero=False),
            "SECONDS",
            "How often the certificate, key and CA files (--listen-tls-*, --upstream-*) are "
            "checked for a change and re-read [default: "
            f"{_default('tls_reload_interval')}].",
        ),
        Option(
            "log_level",
            _choice("debug", "info", "warning", "error"),
            "debug|info|warning|error",
            f"Log level [default: {_default('log_level')}].",
        ),
        Option(
            "log_format",
            _choice("text", "json"),
            "text|json",
            f"Log line format [default: {_default('log_format')}].",
        ),
        Option(
            "shutdown_timeout",
            _seconds(allow_zero=True),
            "SECONDS",
            "Time allowed for in-flight requests on shutdown "
            f"[default: {_default('shutdown_timeout')}].",
        ),
    ]
}

assert set(OPTIONS) == set(_FIELDS), "every ProxyConfig field needs an Option"


# --- loading --------------------------------------------------------------------------


def _is_given(value: object) -> bool:
    """Command-line values of None (or an empty tuple from a repeatable option) are unset."""
    return value is not None and value != ()


def _read_config_file(path: Path, path_source: str) -> dict[str, object]:
    file_source = f"config file {path}"
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError("config", path_source, f"cannot read {path}: {reason}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("config", file_source, f"not UTF-8 text: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", file_source, f"invalid TOML: {e}") from None
    for key in data:
        if key not in OPTIONS:
            hint = difflib.get_close_matches(key.replace("-", "_"), list(OPTIONS), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(
                "config", f"{file_source}, key '{key}'", f"unknown key '{key}'{suggestion}"
            )
    return data


def load_config(
    cli_values: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: Path | None,
    *,
    config_file_source: str = SOURCE_CLI,
) -> ProxyConfig:
    """Layer command line > environment > config file > defaults, and validate.

    ``cli_values`` maps option names (keys of :data:`OPTIONS`) to raw values; None
    (or an empty tuple) means "not given". Raw values are strings, or for
    ``upstream`` also a sequence of strings, each possibly comma-separated.
    ``environ`` is searched for ``IDEMPROXY_<OPTION>``; other variables are ignored.
    ``config_file_source`` says where ``config_file`` was named (for the error when it
    cannot be read), e.g. ``"environment variable IDEMPROXY_CONFIG"``.

    With ``upstream_tls`` or ``listen_tls_cert``, the CA bundles, certificates and keys are
    loaded once to check them (the server re-reads them when they change).

    Raises :class:`ConfigError` for the first problem found.
    """
    unknown = set(cli_values) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) in cli_values: {sorted(unknown)}")
    file_values = (
        _read_config_file(config_file, config_file_source) if config_file is not None else {}
    )

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name, option in OPTIONS.items():
        cli_value = cli_values.get(name)
        if _is_given(cli_value):
            raw, source = cli_value, SOURCE_CLI
        elif option.env_var in environ:
            raw, source = environ[option.env_var], f"environment variable {option.env_var}"
        elif name in file_values:
            raw, source = file_values[name], f"config file {config_file}, key '{name}'"
        else:
            continue
        try:
            values[name] = option.parse(raw)
        except ValueError as e:
            raise ConfigError(name, source, str(e)) from None
        sources[name] = source

    if "upstream" not in values:
        raise ConfigError(
            "upstream",
            SOURCE_DEFAULT,
            "required: set --upstream, the IDEMPROXY_UPSTREAM environment variable "
            "or 'upstream' in the config file",
        )

    listen = cast(Address, values.get("listen", DEFAULT_LISTEN))
    listen_source = sources.get("listen", SOURCE_DEFAULT)
    if "advertised_host" not in values:
        if _is_wildcard(listen.host):
            raise ConfigError(
                "advertised_host",
                SOURCE_DEFAULT,
                f"required because --listen {listen} (from {listen_source}) is a wildcard "
                "address clients cannot connect to: set --advertised-host, "
                "IDEMPROXY_ADVERTISED_HOST or 'advertised_host' in the config file",
            )
        values["advertised_host"] = listen.host
    if "broker_port_base" not in values:
        if listen.port + 1 > 65535:
            raise ConfigError(
                "broker_port_base",
                SOURCE_DEFAULT,
                f"the default (--listen port + 1 = {listen.port + 1}) is not a valid "
                "port: set --broker-port-base",
            )
        values["broker_port_base"] = listen.port + 1

    _check_upstream_tls(values, sources)
    _check_listen_tls(values, sources)
    return ProxyConfig(**values)  # type: ignore[arg-type]


_TLS_DETAILS = ("upstream_ca", "upstream_cert", "upstream_key", "upstream_server_name")


def _check_upstream_tls(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    """The --upstream-* TLS settings make sense together, and their files load."""
    if not values.get("upstream_tls"):
        for name in _TLS_DETAILS:
            if name in values:
                raise ConfigError(name, sources[name], "has no effect without --upstream-tls")
        return
    cert, key = values.get("upstream_cert"), values.get("upstream_key")
    if (cert is None) != (key is None):
        given, missing = (
            ("upstream_cert", "upstream_key") if key is None else ("upstream_key", "upstream_cert")
        )
        flag = "--" + missing.replace("_", "-")
        raise ConfigError(
            given,
            sources[given],
            f"needs {flag} too (a client certificate needs both a certificate and its key)",
        )
    try:
        upstream_context(
            cast(Path | None, values.get("upstream_ca")),
            cast(Path | None, cert),
            cast(Path | None, key),
        )
    except TLSSetupError as e:
        raise ConfigError(e.option, sources.get(e.option, SOURCE_DEFAULT), e.reason) from None


def _check_listen_tls(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    """The --listen-tls-* settings make sense together, and their files load."""
    cert, key = values.get("listen_tls_cert"), values.get("listen_tls_key")
    client_ca = values.get("listen_tls_client_ca")
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError(
                "listen_tls_client_ca",
                sources["listen_tls_client_ca"],
                "has no effect without --listen-tls-cert and --listen-tls-key",
            )
        return
    if cert is None or key is None:
        given, missing = (
            ("listen_tls_cert", "listen_tls_key")
            if key is None
            else ("listen_tls_key", "listen_tls_cert")
        )
        flag = "--" + missing.replace("_", "-")
        raise ConfigError(
            given,
            sources[given],
            f"needs {flag} too (TLS towards clients needs both a certificate and its key)",
        )
    try:
        listener_context(cast(Path, cert), cast(Path, key), cast(Path | None, client_ca))
    except TLSSetupError as e:
        raise ConfigError(e.option, sources.get(e.option, SOURCE_DEFAULT), e.reason) from None


def misspelled_env_vars(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """``IDEMPROXY_*`` variables that are not options but look like one.

    Returns ``(variable, suggested variable)`` pairs. Unknown ``IDEMPROXY_*``
    variables are not errors, because Kubernetes injects service-link variables such
    as ``IDEMPROXY_PORT`` and ``IDEMPROXY_SERVICE_HOST`` for a service named
    idemproxy; only close misspellings are worth a warning.
    """
    known = {o.env_var for o in OPTIONS.values()} | {ENV_PREFIX + "CONFIG"}
    result: list[tuple[str, str]] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)
        if match:
            result.append((name, match[0]))
    return result
