#!/usr/bin/env bash
# Builds MetalLB's controller (pinned) from the Go module proxy into a cache outside the repo, for
# bench/metallb_latency.py. Idempotent: does nothing when the binary is there.
# Usage: hack/build-metallb.sh   -> prints the bin dir on its last line; the CRDs are in
#        $(go env GOMODCACHE)/go.universe.tf/metallb@$METALLB_VERSION/config/crd/bases
set -euo pipefail

METALLB_VERSION="${METALLB_VERSION:-v0.15.2}"
CACHE_ROOT="${PORTICO_CACHE:-$HOME/.cache/portico}"
BIN_DIR="$CACHE_ROOT/metallb-$METALLB_VERSION/bin"

command -v go >/dev/null || { echo "go is required (apt-get install golang or /usr/local/go)" >&2; exit 1; }
CRDS="$(go env GOMODCACHE)/go.universe.tf/metallb@$METALLB_VERSION/config/crd/bases"

if [[ -x "$BIN_DIR/controller" && -d "$CRDS" ]]; then echo "$BIN_DIR"; exit 0; fi

mkdir -p "$BIN_DIR"
export GOFLAGS="-buildvcs=false" CGO_ENABLED=0
start=$(date +%s)
if [[ ! -x "$BIN_DIR/controller" ]]; then
  WORK="$(mktemp -d "$CACHE_ROOT/metallb-build.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  GOBIN="$WORK" go install -ldflags "-s -w" "go.universe.tf/metallb/controller@$METALLB_VERSION"
  mv "$WORK/controller" "$BIN_DIR/controller"
fi
# `go install pkg@version` leaves the whole module (with config/crd/bases) in the module cache;
# fetch it explicitly in case the cache was cleaned since the binary was built.
[[ -d "$CRDS" ]] || (cd "$(mktemp -d)" && go mod download "go.universe.tf/metallb@$METALLB_VERSION")
[[ -d "$CRDS" ]] || { echo "MetalLB CRDs not found in $CRDS" >&2; exit 1; }
echo "built MetalLB controller $METALLB_VERSION in $(( $(date +%s) - start )) s" >&2
echo "$BIN_DIR"
