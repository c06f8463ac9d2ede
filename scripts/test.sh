#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what it needs, builds in release
# mode, runs unit and integration tests (real processes, registries, containerd and lab hosts),
# then fuzzes the payload parser for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
if [[ -x scripts/testhosts ]]; then
  scripts/testhosts deps
  scripts/testhosts rootfs
fi

examples/demo/make-images.sh
cargo build --release --locked
cargo test --release --locked --workspace
scripts/fuzz.sh "${FERRY_FUZZ_SECONDS:-60}"
echo "test.sh: all tests passed"
