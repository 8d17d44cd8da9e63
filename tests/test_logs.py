"""Log output format and levels (proxy.logs)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from proxy.logs import configure, get_logger

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved = {
        n: (logging.getLogger(n).level, logging.getLogger(n).propagate)
        for n in ("idemproxy", "proxy")
    }
    yield
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    for name, (level, propagate) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).propagate = propagate


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_json_lines_parse_as_json_with_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "json")
    log = logging.getLogger("idemproxy.server")
    log.warning("upstream lost", extra={"peer": "10.0.0.5:9092", "reason": "eof", "n": 3})
    log.info("listening", extra={"address": "127.0.0.1:9092"})
    first, second = (json.loads(line) for line in stderr_lines(capsys))
    assert re.fullmatch(TIMESTAMP, first.pop("ts"))
    assert first == {
        "level": "WARNING",
        "logger": "idemproxy.server",
        "msg": "upstream lost",
        "peer": "10.0.0.5:9092",
        "reason": "eof",
        "n": 3,
    }
    assert second["msg"] == "listening"
    assert second["address"] == "127.0.0.1:9092"


def test_json_formats_message_arguments_and_unserialisable_extras(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info", "json")
    logging.getLogger("idemproxy.x").info("got %d bytes", 12, extra={"raw": b"\x00", "obj": {1}})
    (record,) = (json.loads(line) for line in stderr_lines(capsys))
    assert record["msg"] == "got 12 bytes"
    assert record["raw"] == "b'\\x00'"
    assert record["obj"] == "{1}"


def test_json_extra_keys_do_not_overwrite_core_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "json")
    logging.getLogger("idemproxy.x").info("m", extra={"level": "custom", "ts": 1})
    (record,) = (json.loads(line) for line in stderr_lines(capsys))
    assert record["level"] == "INFO"
    assert record["extra_level"] == "custom"
    assert record["extra_ts"] == 1


def test_json_exception_is_one_line_with_exc_field(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("idemproxy.x").exception("failed", extra={"peer": "p"})
    (line,) = stderr_lines(capsys)
    record = json.loads(line)
    assert record["msg"] == "failed"
    assert record["level"] == "ERROR"
    assert "RuntimeError: boom" in record["exc"]
    assert record["peer"] == "p"


def test_text_format_is_timestamp_level_logger_message_and_key_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info", "text")
    logging.getLogger("idemproxy.server").warning(
        "upstream lost", extra={"peer": "10.0.0.5:9092", "reason": "connection reset", "n": 3}
    )
    (line,) = stderr_lines(capsys)
    assert re.fullmatch(
        TIMESTAMP + r" WARNING idemproxy\.server: upstream lost peer=10\.0\.0\.5:9092 "
        r'reason="connection reset" n=3',
        line,
    ), line


def test_text_format_quotes_values_with_spaces_quotes_or_equals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info", "text")
    logging.getLogger("idemproxy.x").info("m", extra={"a": 'say "hi"', "b": "k=v", "c": ""})
    (line,) = stderr_lines(capsys)
    assert line.endswith(' m a="say \\"hi\\"" b="k=v" c=""')


def test_level_filters_idemproxy_records(capsys: pytest.CaptureFixture[str]) -> None:
    configure("warning", "text")
    log = logging.getLogger("idemproxy.server")
    log.info("hidden")
    log.warning("shown")
    lines = stderr_lines(capsys)
    assert len(lines) == 1
    assert "shown" in lines[0]


def test_debug_level_shows_debug_records(capsys: pytest.CaptureFixture[str]) -> None:
    configure("debug", "text")
    logging.getLogger("idemproxy.wire").debug("frame", extra={"size": 10})
    (line,) = stderr_lines(capsys)
    assert " DEBUG idemproxy.wire: frame size=10" in line


def test_other_libraries_log_warnings_but_not_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure("debug", "json")
    logging.getLogger("aiokafka").info("chatty")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    (line,) = stderr_lines(capsys)
    assert json.loads(line)["logger"] == "asyncio"


def test_package_module_loggers_are_configured_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "json")
    logging.getLogger("proxy.server.app").info("started")
    (line,) = stderr_lines(capsys)
    assert json.loads(line)["logger"] == "proxy.server.app"


def test_configure_twice_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "text")
    configure("info", "json")
    logging.getLogger("idemproxy.x").info("once")
    (line,) = stderr_lines(capsys)
    assert json.loads(line)["msg"] == "once"


def test_configure_rejects_unknown_level_and_format() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure("verbose", "text")
    with pytest.raises(ValueError, match="log format"):
        configure("info", "xml")  # type: ignore[arg-type]


def test_get_logger_maps_module_names_into_the_idemproxy_hierarchy() -> None:
    assert get_logger("proxy.server.app").name == "idemproxy.server.app"
    assert get_logger("proxy").name == "idemproxy"
    assert get_logger("proxyish.x").name == "proxyish.x"
