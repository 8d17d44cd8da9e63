# The two commands of the README (`make demo`, `make test`) and `make broker`.
# Each installs what it needs first, into places of the project's own:
#   - a virtual environment .venv/ at the top of the checkout, made with `python3 -m venv`
#     (nothing is installed into the python3 you run, and its pip is left alone);
#   - the Apache Kafka jars (Maven Central), cached in ~/.cache/idemproxy;
#   - `make test` only: Debian's prometheus package (promtool, prometheus) with apt-get,
#     when either command is missing (needs root or sudo).
# The install runs again only when pyproject.toml changes (stamp file .venv/.installed).

# The interpreter the virtual environment is made from (3.11 or newer).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-test demo broker test lint unit compiled compiled-test integration soak clean-venv fuzz

$(PY):
	$(PYTHON) -m venv $(VENV)

# The proxy (editable) with the test clients and tools, into the virtual environment.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,fast]'
	touch $@

# The proxy, the test clients and the Apache Kafka jars (Maven Central, cached in ~/.cache/idemproxy).
install: $(STAMP)
	$(PY) -m integration.harness.kafka_dist

# Also promtool and prometheus (Debian's package) for the deploy/ and Prometheus tests.
install-test: install
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
		echo "installing Debian's prometheus package (promtool, prometheus) with apt-get"; \
		if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi

# The main job: a real Apache Kafka broker, the proxy in front of it, a producer
# and a consumer going through the proxy.
demo: install
	$(PY) -m integration.demo

# A local Apache Kafka (KRaft) to put the proxy in front of; Ctrl-C stops it.
# `make broker NODES=3` starts a 3-node cluster.
NODES ?= 1
broker: install
	$(PY) -m integration.harness --nodes $(NODES)

lint: $(STAMP)
	$(PY) -m ruff check proxy tests integration setup.py
	$(PY) -m ruff format --check proxy tests integration setup.py
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider

# The optional compiled build (setup.py: the sans-I/O core through mypyc), made in a copy of
# the tracked files under build/compiled so the checkout itself stays pure Python.
COMPILED ?= build/compiled
compiled: $(STAMP)
	rm -rf $(COMPILED) && mkdir -p $(COMPILED)
	git ls-files -z | xargs -0 cp --parents -t $(COMPILED)
	cd $(COMPILED) && IDEMPROXY_MYPYC=1 $(abspath $(PY)) setup.py -q build_ext --inplace

# The unit tests of the core again, against the compiled build (the fuzz targets aside:
# atheris instruments Python bytecode, which compiled modules no longer have).
compiled-test: compiled
	cd $(COMPILED) && PYTHONPATH=$$PWD $(abspath $(PY)) -m pytest tests -q -p no:cacheprovider \
		--ignore=tests/fuzz -p tests.compiled_check

# Every fuzz target of tests/fuzz under atheris, FUZZ_SECONDS each (the unit job already
# runs them for 60 s through tests/fuzz/test_fuzz.py): make fuzz FUZZ_SECONDS=3600
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	$(PY) -m tests.fuzz --all --seconds $(FUZZ_SECONDS)

# Integration tests against Apache Kafka (JVM from Maven Central jars) and Tansu;
# IDEMPROXY_TEST_BROKER=testcontainers uses Docker where an engine answers.
integration: install
	IDEMPROXY_TEST_BROKER=$${IDEMPROXY_TEST_BROKER:-kafka} $(PY) -m pytest integration -q -p no:cacheprovider

# The whole test suite.
test: install-test lint unit compiled-test integration

# Not in `make test`: 10 minutes of steady idempotent producers through the proxy,
# sampling its RSS and producer-state size (python -m integration.soak --help).
soak: install
	$(PY) -m integration.soak --minutes $${MINUTES:-10}

# Start over with a new virtual environment on the next make.
clean-venv:
	rm -rf $(VENV)
