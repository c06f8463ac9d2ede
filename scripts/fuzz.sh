#!/usr/bin/env bash
# Fuzzes the trailer and index parsers for SECONDS (default 60) with cargo-fuzz, starting from
# the corpus kept in fuzz/corpus. Fails if the fuzzer finds a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
# cargo-fuzz needs unstable compiler flags; use a nightly toolchain when there is one, otherwise
# let the stable compiler accept them (the sanitizer runtimes ship with stable's rust-std).
if rustup toolchain list | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  toolchain=()
  export RUSTC_BOOTSTRAP=1
fi
# Work on a copy of the corpus so a run does not churn the committed seeds.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r fuzz/corpus/parse_payload/. "$work/"
cargo "${toolchain[@]}" fuzz run parse_payload "$work" -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536
