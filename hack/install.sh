#!/usr/bin/env bash
# Installs everything Portico's lab and tests need on a fresh Debian machine, idempotently:
# Debian packages (nftables, iproute2, python3-nftables), a virtualenv in .venv with Portico
# (the product, root pyproject.toml) and the lab (lab/pyproject.toml), both editable, plus the
# test and lint tools (the pyproject's dependency groups), and the pinned control plane built
# from the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

need_apt=()
# iputils-arping, ndisc6: the gateway tests ask for VIPs as a LAN host would; iperf3, wrk: its
# benchmarks; iptables: kube-proxy's iptables mode, which the lab can run beside the agent;
# python3-venv: tests/unit/packaging installs the product wheel into a virtualenv of Debian's
# python3, as images/Dockerfile does.
for pkg in nftables libnftables1 python3-nftables python3-venv iproute2 procps psmisc util-linux \
  iputils-arping ndisc6 iperf3 wrk iptables; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "==> apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.portico-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || lab/pyproject.toml -nt $stamp ]]; then
  echo "==> pip install -e . --group test --group dev; pip install -e ./lab"
  # Dependency groups (PEP 735) need pip >= 25.1.
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e . --group test --group dev
  # The lab second: a .venv made when the product still held the lab loses the portico-lab
  # command when that old product is replaced, after which the lab brings it back.
  .venv/bin/pip install -q -e ./lab
  touch "$stamp"
fi

# libnftables' Python binding is Debian's python3-nftables; expose just that module to the venv
# (not all of dist-packages, which would shadow the pinned PyPI packages).
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ln -sfn /usr/lib/python3/dist-packages/nftables "$site/nftables"
.venv/bin/python -c 'import nftables; nftables.Nftables()' || {
  echo "libnftables is not usable from .venv" >&2; exit 1; }

echo "==> control plane"
bash hack/build-controlplane.sh | tail -1
