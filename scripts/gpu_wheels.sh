#!/usr/bin/env bash
# Wheels for scripts/gpu_check.sh on a lent GPU machine, whose python3 (3.12) has torch and transformers but
# maybe not the protobuf and grpcio this repo's generated stubs were made for (glitches/services/stubs check both
# versions when imported). Run here, where pip reaches the registry; the folder .whl is git-ignored.
#   bash scripts/gpu_wheels.sh      then   run(command="bash scripts/gpu_check.sh", carry=["glitches/services/stubs", ".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir -p .whl
for name in protobuf grpcio grpcio-health-checking grpcio-reflection; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$name==$(version "$name")"
done
ls -l .whl
