# The two commands of the README. Each installs what it needs first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-test demo test lint unit integration fuzz

# The proxy, the test clients and the Apache Kafka jars (Maven Central, cached in ~/.cache/idemproxy).
install:
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,fast]'
	$(PYTHON) -m integration.harness.kafka_dist

# Also promtool and prometheus (Debian's package) for the deploy/ and Prometheus tests.
install-test: install
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# The main job: a real Apache Kafka broker, the proxy in front of it, a producer
# and a consumer going through the proxy.
demo: install
	$(PYTHON) -m integration.demo

lint:
	$(PYTHON) -m ruff check proxy tests integration
	$(PYTHON) -m ruff format --check proxy tests integration
	$(PYTHON) -m mypy

unit:
	$(PYTHON) -m pytest tests -q -p no:cacheprovider

# Every fuzz target of tests/fuzz under atheris, FUZZ_SECONDS each (the unit job already
# runs them for 60 s through tests/fuzz/test_fuzz.py): make fuzz FUZZ_SECONDS=3600
FUZZ_SECONDS ?= 600
fuzz:
	$(PYTHON) -m tests.fuzz --all --seconds $(FUZZ_SECONDS)

# Integration tests against Apache Kafka (JVM from Maven Central jars) and Tansu;
# IDEMPROXY_TEST_BROKER=testcontainers uses Docker where an engine answers.
integration:
	IDEMPROXY_TEST_BROKER=$${IDEMPROXY_TEST_BROKER:-kafka} $(PYTHON) -m pytest integration -q -p no:cacheprovider

# The whole test suite.
test: install-test lint unit integration
