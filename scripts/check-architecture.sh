#!/usr/bin/env bash
# Checks that dependencies point one way (docs/architecture.md):
#   - no import circle between the modules of any crate (scripts/check-module-cycles.py);
#   - the packer (`ferry`) links neither the stub nor its network stack: the installer's SSH, HTTP
#     and async runtime are the stub's alone.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check-module-cycles.py

linked=$(cargo tree --locked -p ferry -e normal --prefix none | awk '{print $1}' | sort -u)
bad=$(grep -xE 'ferry-stub|russh|hyper|tokio' <<<"$linked" || true)
if [[ -n "$bad" ]]; then
  echo "check-architecture: the packer links what only the installer should: $(echo $bad)" >&2
  cargo tree --locked -p ferry -e normal -i "$(head -n1 <<<"$bad")" >&2 || true
  exit 1
fi
echo "check-architecture: no import circles; the packer links no stub, russh, hyper or tokio"
