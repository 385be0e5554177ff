"""The node-level ports Portico's programs agree on: where the node agent answers and where
the gateways ask (pure constants, one place)."""

from __future__ import annotations

# The node agent's own port: node /healthz (kube-proxy's answer) and the aggregate view of every
# Service (/portico/v1/services), which the gateways probe. Its own because kube-proxy holds
# 10256 on kind and most clusters; chosen clear of the well-known node ports: kubelet
# 10248/10250/10255, kube-proxy 10249/10256, kube-controller-manager 10257,
# cloud-controller-manager 10258, kube-scheduler 10259.
AGENT_HEALTH_PORT = 10262

# kube-proxy's node /healthz. The agent answers there too while nothing else holds it (a cluster
# without kube-proxy), and gateways probe it for nodes that offer no aggregate view.
KUBE_PROXY_HEALTHZ_PORT = 10256
