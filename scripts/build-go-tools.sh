#!/usr/bin/env bash
# build-go-tools.sh: the Go programs ferry's tests and benchmarks measure ferry against, built
# from Go modules through the module proxy (this machine's only way to them) and cached:
#
#   registry  distribution v3's registry: a second registry implementation for `ferry push/pull`
#             (Debian's docker-registry is distribution 2.8)
#   oras      the push/pull benchmark's baseline (scripts/bench-publish.sh)
#
#   scripts/build-go-tools.sh DEST TOOL...     copies each TOOL to DEST/TOOL
#
#   FERRY_GO_TOOLS_CACHE  the cache (default /var/cache/ferry/go-tools): module downloads, the
#                         build cache and each tool at its version, so a second run takes seconds
set -euo pipefail
DEST=${1:?usage: build-go-tools.sh DEST TOOL...}
shift
CACHE=${FERRY_GO_TOOLS_CACHE:-/var/cache/ferry/go-tools}
declare -A MODULE=(
  [registry]=github.com/distribution/distribution/v3/cmd/registry@v3.1.2
  [oras]=oras.land/oras/cmd/oras@v1.3.6
)
command -v go >/dev/null || { echo "build-go-tools: needs Go (https://go.dev/dl; the module proxy must be reachable)" >&2; exit 1; }
export GOMODCACHE=$CACHE/mod GOCACHE=$CACHE/build GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$GOMODCACHE" "$GOCACHE" "$CACHE/bin" "$DEST"
for tool in "$@"; do
  module=${MODULE[$tool]:-}
  [ -n "$module" ] || { echo "build-go-tools: unknown tool $tool (known: ${!MODULE[*]})" >&2; exit 2; }
  kept=$CACHE/bin/$tool-${module##*@}
  if [ ! -x "$kept" ]; then
    echo "build-go-tools: building $module (first time only)" >&2
    tmp=$(mktemp -d "$CACHE/bin/.build.XXXXXX")
    GOBIN=$tmp go install "$module" >&2
    mv "$tmp/$tool" "$kept.tmp" && mv "$kept.tmp" "$kept"
    rm -rf "$tmp"
  fi
  cp "$kept" "$DEST/$tool.tmp" && mv "$DEST/$tool.tmp" "$DEST/$tool"
done
