"""Configuration layering and validation (proxy.config)."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import (
    OPTIONS,
    SOURCE_CLI,
    SOURCE_DEFAULT,
    Address,
    ConfigError,
    ProxyConfig,
    load_config,
    misspelled_env_vars,
    parse_host_port,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config" / "idemproxy.toml"
UPSTREAM = {"upstream": "kafka:9092"}


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "idemproxy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(
    cli: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> ProxyConfig:
    return load_config(dict(cli or {}), dict(env or {}), file)


# --- defaults and derived values ---------------------------------------------------


def test_defaults_when_only_upstream_is_given() -> None:
    config = load(UPSTREAM)
    assert config == ProxyConfig(
        upstream=(Address("kafka", 9092),),
        listen=Address("127.0.0.1", 9092),
        advertised_host="127.0.0.1",
        broker_port_base=9093,
        metrics_listen=None,
        max_frame_bytes=104_857_600,
        connect_timeout=10.0,
        drain_timeout=30.0,
        non_idempotent="stamp",
        retry_window=120.0,
        stamp_memory=64 << 20,
        max_producer_states=100_000,
        producer_state_expiry=86_400_000,
        log_level="info",
        log_format="text",
        shutdown_timeout=10.0,
    )


def test_config_is_frozen() -> None:
    config = load(UPSTREAM)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen = Address("x", 1)  # type: ignore[misc]


def test_advertised_host_and_broker_port_base_follow_listen() -> None:
    config = load({**UPSTREAM, "listen": "proxy.local:19092"})
    assert config.advertised_host == "proxy.local"
    assert config.broker_port_base == 19093


def test_explicit_advertised_host_and_broker_port_base_win_over_derived() -> None:
    config = load(
        {
            **UPSTREAM,
            "listen": "0.0.0.0:9092",
            "advertised_host": "proxy.example.com",
            "broker_port_base": "20000",
        }
    )
    assert config.listen == Address("0.0.0.0", 9092)
    assert config.advertised_host == "proxy.example.com"
    assert config.broker_port_base == 20000


@pytest.mark.parametrize("listen", ["0.0.0.0:9092", "[::]:9092"])
def test_wildcard_listen_requires_advertised_host(listen: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({**UPSTREAM, "listen": listen})
    assert info.value.option == "advertised_host"
    assert "wildcard" in info.value.reason
    assert "--advertised-host" in str(info.value)


def test_default_broker_port_base_past_65535_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load({**UPSTREAM, "listen": "127.0.0.1:65535"})
    assert info.value.option == "broker_port_base"
    assert "65536" in info.value.reason


def test_missing_upstream_is_an_error_naming_all_three_ways_to_set_it() -> None:
    with pytest.raises(ConfigError) as info:
        load()
    assert info.value.option == "upstream"
    assert info.value.source == SOURCE_DEFAULT
    assert "--upstream" in info.value.reason
    assert "IDEMPROXY_UPSTREAM" in info.value.reason
    assert "config file" in info.value.reason


# --- precedence ----------------------------------------------------------------------

# (option, file value, env value, cli value, expected from file, env, cli)
PRECEDENCE_CASES = [
    ("listen", '"f:1"', "e:2", "c:3", Address("f", 1), Address("e", 2), Address("c", 3)),
    ("max_frame_bytes", "1000", "2000", "3000", 1000, 2000, 3000),
    ("connect_timeout", "1.5", "2.5", "3.5", 1.5, 2.5, 3.5),
    ("log_level", '"debug"', "warning", "error", "debug", "warning", "error"),
    ("non_idempotent", '"reject"', "pass", "reject", "reject", "pass", "reject"),
    ("producer_state_expiry", "1", "2", "3", 1, 2, 3),
    ("retry_window", "30", "60", "90.5", 30.0, 60.0, 90.5),
]


@pytest.mark.parametrize(
    ("option", "file_value", "expected"),
    [(c[0], c[1], c[4]) for c in PRECEDENCE_CASES],
)
def test_config_file_overrides_default(
    tmp_path: Path, option: str, file_value: str, expected: object
) -> None:
    path = write_toml(tmp_path, f'upstream = ["kafka:9092"]\n{option} = {file_value}\n')
    assert getattr(load(file=path), option) == expected


@pytest.mark.parametrize(
    ("option", "file_value", "env_value", "expected"),
    [(c[0], c[1], c[2], c[5]) for c in PRECEDENCE_CASES],
)
def test_env_overrides_config_file(
    tmp_path: Path, option: str, file_value: str, env_value: str, expected: object
) -> None:
    path = write_toml(tmp_path, f'upstream = ["kafka:9092"]\n{option} = {file_value}\n')
    env = {f"IDEMPROXY_{option.upper()}": env_value}
    assert getattr(load(env=env, file=path), option) == expected


@pytest.mark.parametrize(
    ("option", "file_value", "env_value", "cli_value", "expected"),
    [(c[0], c[1], c[2], c[3], c[6]) for c in PRECEDENCE_CASES],
)
def test_cli_overrides_env_and_config_file(
    tmp_path: Path,
    option: str,
    file_value: str,
    env_value: str,
    cli_value: str,
    expected: object,
) -> None:
    path = write_toml(tmp_path, f'upstream = ["kafka:9092"]\n{option} = {file_value}\n')
    env = {f"IDEMPROXY_{option.upper()}": env_value}
    assert getattr(load({option: cli_value}, env, path), option) == expected


def test_none_and_empty_tuple_cli_values_mean_not_given() -> None:
    env = {"IDEMPROXY_UPSTREAM": "e:1", "IDEMPROXY_LISTEN": "e:2"}
    config = load({"upstream": (), "listen": None}, env)
    assert config.upstream == (Address("e", 1),)
    assert config.listen == Address("e", 2)


def test_empty_metrics_listen_in_env_disables_metrics_set_in_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'upstream = "kafka:9092"\nmetrics_listen = "0.0.0.0:9100"\n')
    assert load(file=path).metrics_listen == Address("0.0.0.0", 9100)
    assert load(env={"IDEMPROXY_METRICS_LISTEN": ""}, file=path).metrics_listen is None


def test_unrelated_environment_variables_are_ignored() -> None:
    env = {"LISTEN": "nonsense", "IDEMPROXY_PORT": "tcp://10.0.0.1:9092"}
    assert load(UPSTREAM, env).listen == Address("127.0.0.1", 9092)


def test_unknown_cli_value_key_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        load({**UPSTREAM, "lisen": "x:1"})


# --- upstream lists ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "a:1,[::1]:2,b.example:3",
        " a:1 , [::1]:2 ,b.example:3",
        ("a:1", "[::1]:2,b.example:3"),
        ["a:1", "[::1]:2", "b.example:3", "a:1"],
    ],
)
def test_upstream_accepts_comma_separated_strings_and_lists(raw: object) -> None:
    config = load({"upstream": raw})
    assert config.upstream == (Address("a", 1), Address("::1", 2), Address("b.example", 3))


def test_upstream_list_in_config_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'upstream = ["k1:9092", "[fd00::5]:9093"]\n')
    assert load(file=path).upstream == (Address("k1", 9092), Address("fd00::5", 9093))


# --- host:port parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:9092", Address("localhost", 9092)),
        ("10.1.2.3:1", Address("10.1.2.3", 1)),
        ("[::1]:9092", Address("::1", 9092)),
        ("[2001:db8::7]:65535", Address("2001:db8::7", 65535)),
        ("kafka_1.svc-x:19092", Address("kafka_1.svc-x", 19092)),
    ],
)
def test_parse_host_port_accepts(text: str, expected: Address) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("foo", "expected HOST:PORT, got 'foo'"),
        (":9092", "expected HOST:PORT"),
        ("host:", "expected a port in 1..65535"),
        ("host:0", "expected a port in 1..65535"),
        ("host:65536", "expected a port in 1..65535"),
        ("host:-1", "expected a port in 1..65535"),
        ("host:http", "expected a port in 1..65535"),
        ("::1:9092", "IPv6 addresses need brackets"),
        ("[::1]9092", "expected [IPV6]:PORT"),
        ("[nothost]:9092", "is not an IPv6 address"),
        ("ho st:1", "invalid host"),
    ],
)
def test_parse_host_port_rejects_with_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_host_port(text)


def test_host_port_str_brackets_ipv6() -> None:
    assert str(Address("::1", 9092)) == "[::1]:9092"
    assert str(Address("kafka", 9092)) == "kafka:9092"


hosts = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.-]+", fullmatch=True),
    st.ip_addresses().map(str),
)


@given(host=hosts, port=st.integers(1, 65535))
def test_host_port_str_round_trips_through_parse(host: str, port: int) -> None:
    address = Address(host, port)
    assert parse_host_port(str(address)) == address


# --- bad values: option, source and reason -----------------------------------------

BAD_VALUES = [
    ("upstream", "kafka", "expected HOST:PORT"),
    ("upstream", "a:1,,b:2", "empty entry"),
    ("listen", "foo", "expected HOST:PORT, got 'foo'"),
    ("advertised_host", "host:9092", "without a port"),
    ("advertised_host", "0.0.0.0", "wildcard"),
    ("advertised_host", "", "must not be empty"),
    ("broker_port_base", "0", "between 1 and 65535"),
    ("broker_port_base", "70000", "between 1 and 65535"),
    ("metrics_listen", "9100", "expected HOST:PORT"),
    ("max_frame_bytes", "0", "between 1 and 2147483647"),
    ("max_frame_bytes", "2147483648", "between 1 and 2147483647"),
    ("max_frame_bytes", "100MiB", "expected an integer"),
    ("connect_timeout", "0", "> 0"),
    ("connect_timeout", "10s", "expected a number of seconds"),
    ("drain_timeout", "-1", ">= 0"),
    ("drain_timeout", "inf", "finite"),
    ("shutdown_timeout", "nan", "finite"),
    ("non_idempotent", "drop", "expected one of stamp, pass, reject"),
    ("retry_window", "0", "> 0"),
    ("stamp_memory", "1000", "between 1048576 and"),
    ("max_producer_states", "0", "between 1 and"),
    ("producer_state_expiry", "1.5", "expected an integer"),
    ("log_level", "verbose", "expected one of debug, info, warning, error"),
    ("log_format", "xml", "expected one of text, json"),
]


@pytest.mark.parametrize(("option", "value", "reason"), BAD_VALUES)
def test_bad_cli_value_names_option_and_command_line(option: str, value: str, reason: str) -> None:
    cli = {**UPSTREAM, option: value}
    with pytest.raises(ConfigError) as info:
        load(cli)
    assert info.value.option == option
    assert info.value.source == SOURCE_CLI
    assert reason in info.value.reason
    assert str(info.value).startswith(f"--{option.replace('_', '-')}: ")


@pytest.mark.parametrize(("option", "value", "reason"), BAD_VALUES)
def test_bad_env_value_names_option_and_variable(option: str, value: str, reason: str) -> None:
    env = {"IDEMPROXY_UPSTREAM": "kafka:9092", f"IDEMPROXY_{option.upper()}": value}
    with pytest.raises(ConfigError) as info:
        load(env=env)
    assert info.value.option == option
    assert info.value.source == f"environment variable IDEMPROXY_{option.upper()}"
    assert reason in info.value.reason
    assert f"IDEMPROXY_{option.upper()}" in str(info.value)


@pytest.mark.parametrize(("option", "value", "reason"), BAD_VALUES)
def test_bad_config_file_value_names_option_file_and_key(
    tmp_path: Path, option: str, value: str, reason: str
) -> None:
    upstream = "" if option == "upstream" else 'upstream = "kafka:9092"\n'
    path = write_toml(tmp_path, f"{upstream}{option} = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError) as info:
        load(file=path)
    assert info.value.option == option
    assert info.value.source == f"config file {path}, key '{option}'"
    assert reason in info.value.reason
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("toml", "option", "reason"),
    [
        ("max_frame_bytes = true", "max_frame_bytes", "expected an integer, got True"),
        ("max_frame_bytes = 1.5", "max_frame_bytes", "expected an integer"),
        ("connect_timeout = false", "connect_timeout", "expected a number of seconds"),
        ("listen = 9092", "listen", "expected HOST:PORT as a string"),
        ("upstream = []", "upstream", "expected a list of HOST:PORT"),
        ("upstream = [9092]", "upstream", "as a string"),
        ("log_level = 1", "log_level", "expected one of"),
    ],
)
def test_config_file_value_of_wrong_toml_type_is_an_error(
    tmp_path: Path, toml: str, option: str, reason: str
) -> None:
    upstream = "" if option == "upstream" else 'upstream = "kafka:9092"\n'
    path = write_toml(tmp_path, upstream + toml + "\n")
    with pytest.raises(ConfigError) as info:
        load(file=path)
    assert info.value.option == option
    assert reason in info.value.reason


def test_toml_native_numbers_are_accepted(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'upstream = "kafka:9092"\nmax_frame_bytes = 1_048_576\nconnect_timeout = 3\n',
    )
    config = load(file=path)
    assert config.max_frame_bytes == 1_048_576
    assert config.connect_timeout == 3.0
    assert isinstance(config.connect_timeout, float)


def test_enum_values_are_case_insensitive() -> None:
    config = load({**UPSTREAM, "log_level": "WARNING", "log_format": "Json"})
    assert config.log_level == "warning"
    assert config.log_format == "json"


def test_error_message_is_a_single_line(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'upstream = "kafka:9092"\nlisten = """a\nb"""\n')
    with pytest.raises(ConfigError) as info:
        load(file=path)
    assert "\n" not in str(info.value)


# --- the config file itself ----------------------------------------------------------


def test_unknown_config_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'upstream = "kafka:9092"\nmax_frame_byte = 10\n')
    with pytest.raises(ConfigError) as info:
        load(file=path)
    assert info.value.option == "config"
    assert info.value.source == f"config file {path}, key 'max_frame_byte'"
    assert "unknown key 'max_frame_byte'" in info.value.reason
    assert "did you mean 'max_frame_bytes'?" in info.value.reason


def test_config_sections_are_unknown_keys(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[proxy]\nupstream = "kafka:9092"\n')
    with pytest.raises(ConfigError, match="unknown key 'proxy'"):
        load(file=path)


def test_invalid_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "upstream = [\n")
    with pytest.raises(ConfigError) as info:
        load(file=path)
    assert info.value.option == "config"
    assert info.value.source == f"config file {path}"
    assert info.value.reason.startswith("invalid TOML:")


def test_unreadable_config_file_is_an_error_naming_where_it_was_given(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(
            UPSTREAM, {}, missing, config_file_source="environment variable IDEMPROXY_CONFIG"
        )
    assert info.value.option == "config"
    assert info.value.source == "environment variable IDEMPROXY_CONFIG"
    assert str(missing) in info.value.reason
    assert "No such file" in info.value.reason


TLS_FILE_EXAMPLES = {"upstream_ca", "upstream_cert", "upstream_key", "upstream_server_name"}
# The client-side TLS examples name files this machine does not have either.
TLS_FILE_EXAMPLES |= {"listen_tls_cert", "listen_tls_key", "listen_tls_client_ca"}


def test_example_config_documents_every_option_and_is_valid_when_uncommented(
    tmp_path: Path,
) -> None:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    settings = re.findall(r"^# ([a-z_]+ = .*)$", text, flags=re.MULTILINE)
    assert sorted(line.split(" = ")[0] for line in settings) == sorted(OPTIONS)
    # The TLS examples name files this machine does not have (and need upstream_tls on).
    loadable = [s for s in settings if s.split(" = ")[0] not in TLS_FILE_EXAMPLES]
    path = write_toml(tmp_path, "\n".join(loadable) + "\n")
    config = load(file=path)
    assert config.upstream == (
        Address("kafka-1.internal", 9092),
        Address("kafka-2.internal", 9092),
    )


def test_example_config_shows_the_real_defaults() -> None:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    shown = tomllib.loads("\n".join(re.findall(r"^# ([a-z_]+ = .*)$", text, flags=re.MULTILINE)))
    examples_not_defaults = {"upstream", "advertised_host", "metrics_listen", *TLS_FILE_EXAMPLES}
    defaults = load(UPSTREAM)
    for name, value in shown.items():
        if name not in examples_not_defaults:
            assert OPTIONS[name].parse(value) == getattr(defaults, name), name


# --- misspelled environment variables ------------------------------------------------


def test_misspelled_env_vars_are_reported_with_a_suggestion() -> None:
    env = {
        "IDEMPROXY_MAX_FRAME_BYTE": "1",
        "IDEMPROXY_LISTN": "x:1",
        "IDEMPROXY_LISTEN": "x:1",
        "IDEMPROXY_CONFIG": "f.toml",
        "IDEMPROXY_PORT": "tcp://10.0.0.1:9092",
        "IDEMPROXY_SERVICE_HOST": "10.0.0.1",
        "IDEMPROXY_PORT_9092_TCP_ADDR": "10.0.0.1",
        "PATH": "/bin",
    }
    assert misspelled_env_vars(env) == [
        ("IDEMPROXY_LISTN", "IDEMPROXY_LISTEN"),
        ("IDEMPROXY_MAX_FRAME_BYTE", "IDEMPROXY_MAX_FRAME_BYTES"),
    ]
