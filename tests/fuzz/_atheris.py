"""One target under atheris (libFuzzer): ``python -m tests.fuzz._atheris TARGET [libFuzzer args]``.

Started by the runner (``python -m tests.fuzz``) in its own process: libFuzzer exits
the process when it is done. ``proxy`` (and on request ``kafka.protocol``, see
INSTRUMENTED) is imported under atheris' import hook so its branches guide the
mutations. The address space is capped a little above what the process uses once
loaded, so an allocation sized by a length field raises MemoryError (a finding)
instead of eating the machine.
"""

from __future__ import annotations

import importlib
import os
import resource
import sys

from tests.fuzz import TARGETS

#: Packages whose branches guide the fuzzer. kafka-python's protocol package is added
#: with IDEMPROXY_FUZZ_INSTRUMENT_KAFKA=1 (runner: --instrument-kafka): atheris then
#: instruments all of kafka-python (about 150 modules), which costs ten times the
#: start-up, and its generated codecs (compile()d at run time) are not instrumented anyway.
INSTRUMENTED = ["proxy", "tests.fuzz"]
KAFKA_ENV = "IDEMPROXY_FUZZ_INSTRUMENT_KAFKA"

#: Head room above the loaded process for the inputs and what decoding them allocates.
ADDRESS_SPACE_HEADROOM = 1 << 30


def _vm_size() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    import atheris  # type: ignore[import-untyped]

    target = sys.argv[1]
    include = [*INSTRUMENTED, "kafka.protocol"] if os.environ.get(KAFKA_ENV) else INSTRUMENTED
    with atheris.instrument_imports(include=include):
        module = importlib.import_module(f"tests.fuzz.{TARGETS[target]}")
    atheris.Setup([sys.argv[0], *sys.argv[2:]], module.test_one_input)
    size = _vm_size()
    if size:
        limit = size + ADDRESS_SPACE_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
