# shellcheck shell=bash
# Building Go programs from the Go module proxy alone, for scripts/build-kubernetes.sh.
#
# A module that `replace`s its siblings with directories of its own repository (Kubernetes and
# its staging modules, etcd and its api/client modules) cannot be built with `go install
# MODULE/cmd@VERSION`. gobuild_wrapper makes a throw-away wrapper module that requires MODULE at
# VERSION and turns each such directory replace into a replace by the sibling's published
# version, read off MODULE's own go.mod every time (never a hand-kept list).
#
# Expects: GOMODCACHE, GOCACHE, GOFLAGS=-mod=mod, GOWORK=off, GOTOOLCHAIN=local in the
# environment, and python3.

# gomod_file MODULE VERSION: prints the path of MODULE@VERSION's go.mod (downloaded if needed).
gomod_file() {
  go mod download -json "$1@$2" | python3 -c '
import json, sys
d = json.load(sys.stdin)
if d.get("Error"):
    sys.exit(d["Error"])
print(d["GoMod"])'
}

# gomod_source MODULE VERSION: prints the directory holding MODULE@VERSION's source.
gomod_source() {
  go mod download -json "$1@$2" | python3 -c '
import json, sys
d = json.load(sys.stdin)
if d.get("Error"):
    sys.exit(d["Error"])
print(d["Dir"])'
}

# gomod_served MODULE VERSION: exit 0 when the proxy serves MODULE@VERSION. A listing
# (`go list -m -versions`) can leave out versions the proxy still serves, so ask for the one.
gomod_served() {
  go mod download -json "$1@$2" >/dev/null 2>&1
}

# gomod_versions MODULE: the released versions the proxy lists, oldest first, one per line.
gomod_versions() {
  go list -m -versions "$1" 2>/dev/null | tr ' ' '\n' | tail -n +2
}

# gobuild_wrapper DIR MODULE VERSION SIBLING_VERSION PKG...
# Prepares DIR as a wrapper module requiring MODULE@VERSION whose directory replaces point at
# SIBLING_VERSION, and fetches what PKG... need. Build it afterwards with `go build` in DIR.
gobuild_wrapper() {
  local dir=$1 module=$2 version=$3 sibling=$4; shift 4
  local gomod edits
  rm -rf "$dir"; mkdir -p "$dir"
  gomod=$(gomod_file "$module" "$version")
  # Directory replaces become version replaces; `FORBIDDEN_DEPENDENCY`-style guards (a replace
  # pointing at a directory that does not exist, to keep a module out) are left out, since a
  # module that is never needed needs no replace. The godebug settings go along: they change
  # runtime behaviour the module was tested with.
  edits=$(go mod edit -json "$gomod" | python3 -c '
import json, sys
sibling = sys.argv[1]
d = json.load(sys.stdin)
for r in d.get("Replace") or []:
    new = r["New"]["Path"]
    if (new.startswith("./") or new.startswith("../")) and "FORBIDDEN" not in new:
        print("-replace=%s=%s@%s" % (r["Old"]["Path"], r["Old"]["Path"], sibling))
for g in d.get("Godebug") or []:
    print("-godebug=%s=%s" % (g["Key"], g["Value"]))
go = (d.get("Go") or {}).get("Version") if isinstance(d.get("Go"), dict) else d.get("Go")
if go:
    print("-go=%s" % go)
' "$sibling")
  (
    cd "$dir"
    go mod init ferry.build/wrapper >/dev/null 2>&1
    # shellcheck disable=SC2086
    [ -z "$edits" ] || go mod edit $edits
    go mod edit -require="$module@$version"
    local p args=()
    for p in "$@"; do args+=("$p@$version"); done
    go get "${args[@]}"
  )
}
