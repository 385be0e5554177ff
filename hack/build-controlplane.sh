#!/usr/bin/env bash
# Builds the pinned control plane (etcd, kube-apiserver, kube-controller-manager, kubectl), the
# same version's kube-proxy (the lab runs it beside Portico's agent on request) and
# helm from the Go module proxy into a cache outside the repo. Rebuilds only when pins change.
# Usage: hack/build-controlplane.sh            -> prints the cache dir on its last line
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"

CACHE_ROOT="${PORTICO_CACHE:-$HOME/.cache/portico}"
BIN_DIR="$CACHE_ROOT/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
WANT=(etcd kube-apiserver kube-controller-manager kubectl kube-proxy helm)

have_all() { for b in "${WANT[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done; }
if have_all; then echo "$BIN_DIR"; exit 0; fi
if [[ -n "${PORTICO_NO_BUILD:-}" ]]; then echo "control plane not built in $BIN_DIR" >&2; exit 1; fi

command -v go >/dev/null || { echo "go is required (apt-get install golang or /usr/local/go)" >&2; exit 1; }
mkdir -p "$BIN_DIR"
WORK="$(mktemp -d "$CACHE_ROOT/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export GOFLAGS="-buildvcs=false" CGO_ENABLED=0
start=$(date +%s)

build_etcd() {
  [[ -x "$BIN_DIR/etcd" ]] && return 0
  local d="$WORK/etcd"; mkdir -p "$d"; cd "$d"
  cat > go.mod <<MOD
module portico.local/etcdbuild

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
MOD
  cat > tools.go <<'SRC'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
SRC
  go mod tidy >/dev/null 2>&1 || true
  go build -mod=mod -o "$BIN_DIR/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
}

build_k8s() {
  [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" && -x "$BIN_DIR/kubectl" && -x "$BIN_DIR/kube-proxy" ]] && return 0
  local d="$WORK/k8s"; mkdir -p "$d"; cd "$d"
  local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
    cloud-provider cluster-bootstrap code-generator component-base component-helpers controller-manager
    cri-api cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
    kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet
    metrics mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller)
  {
    echo "module portico.local/k8sbuild"; echo; echo "go 1.24"; echo
    echo "require k8s.io/kubernetes $K8S_VERSION"; echo
    echo "replace ("
    for s in "${staging[@]}"; do echo "	k8s.io/$s => k8s.io/$s $STAGING_VERSION"; done
    echo ")"
  } > go.mod
  cat > tools.go <<'SRC'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
SRC
  go mod tidy >/dev/null 2>&1
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  for c in kube-apiserver kube-controller-manager kubectl kube-proxy; do
    [[ -x "$BIN_DIR/$c" ]] && continue
    go build -mod=mod -ldflags "$ld" -o "$BIN_DIR/$c.tmp" "k8s.io/kubernetes/cmd/$c"
    mv "$BIN_DIR/$c.tmp" "$BIN_DIR/$c"
  done
}

build_helm() {
  [[ -x "$BIN_DIR/helm" ]] && return 0
  GOBIN="$WORK/helmbin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$WORK/helmbin/helm" "$BIN_DIR/helm"
}

build_etcd
build_k8s
build_helm
took=$(( $(date +%s) - start ))
echo "built control plane in $took s" >&2
echo "$took s on $(nproc) cores, $(date -u +%FT%TZ), Go module cache $( [[ -n ${COLD:-} ]] && echo cold || echo as found)" >> "$BIN_DIR/../build-times.txt"
have_all
echo "$BIN_DIR"
