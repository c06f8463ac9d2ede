#!/usr/bin/env bash
# The main job: builds ferry, builds the example installer from examples/demo, then verifies and
# inspects it the way an operator would on site.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --locked
examples/demo/make-images.sh

out="${FERRY_DEMO_DIR:-target/demo}"
mkdir -p "$out"
[[ -f "$out/vendor.key" ]] || target/release/ferry keygen -o "$out/vendor"
target/release/ferry build examples/demo/bundle.yaml -o "$out/installer" --key "$out/vendor.key"
echo
"$out/installer" verify --key "$out/vendor.pub"
echo
"$out/installer" inspect
echo
echo "The installer is $out/installer; copy it and $out/vendor.pub to the site and run"
echo "  ./installer verify --key vendor.pub"
