#!/usr/bin/env bash
# Fetch, here (with the package index), what the GPU machine's image lacks for benchmarks/gpu_check.sh: the pinned,
# hash-checked packages of benchmarks/gpu_wheels.txt, as wheels for CPython 3.12 on x86-64, into .whl/ (git-ignored;
# carried to the GPU machine and installed there without an index by gpu_check.sh). The three packages published only
# as sources are built into wheels here (pure Python). Prints the folder's size: it must stay under 64 MiB, what the
# device tool carries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --require-hashes -r benchmarks/gpu_wheels.txt -d .whl \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any
for source in .whl/*.tar.gz .whl/*.zip; do
    [ -e "$source" ] || continue
    "$PY" -m pip wheel -q --no-deps -w .whl "$source"  # a pure-Python wheel, built with what its source asks for
    rm "$source"
done
size=$(du -sm .whl | cut -f1)
echo "fetch_gpu_wheels: $(ls .whl/*.whl | wc -l) wheels, ${size} MiB in .whl/ (the device tool carries at most 64 MiB)"
[ "$size" -lt 64 ]
