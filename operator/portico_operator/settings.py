"""Every name and knob of the operator, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from portico_common import API_GROUP

DEFAULT_CLASS = f"{API_GROUP}/lb"
FINALIZER = f"{API_GROUP}/load-balancer"
FIELD_MANAGER = "portico-operator"
# Owns the fields of the VIPPools made from the chart's values (server-side apply).
VALUES_FIELD_MANAGER = "portico-operator-values"

# Service annotations (what users write).
ANN_IPS = f"{API_GROUP}/load-balancer-ips"  # "198.18.32.10,fd00:18::a:10"
ANN_POOL = f"{API_GROUP}/address-pool"
ANN_SHARING = f"{API_GROUP}/allow-shared-ip"
ANN_FORWARDING = f"{API_GROUP}/forwarding-mode"  # dsr (default) | nat
# Seconds a draining node keeps the Service's established flows at the gateways: "300",
# "300s"; 0 to 3600. Absent: the gateway's default (300).
ANN_DRAIN_TIMEOUT = f"{API_GROUP}/drain-timeout"
MAX_DRAIN_TIMEOUT = 3600
ANN_SOURCE_RANGES_LEGACY = "service.beta.kubernetes.io/load-balancer-source-ranges"

EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
ZONE_LABEL = "topology.kubernetes.io/zone"

SERVICE_CONDITION = f"{API_GROUP}/Allocated"
# False while an annotation or field cannot be used; the Service keeps its address and the last
# configuration that was valid meanwhile.
VALID_CONDITION = f"{API_GROUP}/Valid"
OUR_SERVICE_CONDITIONS = (SERVICE_CONDITION, VALID_CONDITION)


@dataclass(frozen=True)
class OperatorSettings:
    load_balancer_class: str = DEFAULT_CLASS
    namespace: str = "portico-system"  # where the leader Lease lives
    identity: str = "portico-operator"
    lease_name: str = "portico-operator"
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    workers: int = 8
    metrics_port: int = 0  # 0: no metrics server
    resync_seconds: float = 300.0  # full relist that prunes what a watch gap hid
    # "namespace/name" of the ConfigMap with the chart's pools (values_sync); "": none.
    pools_configmap: str = ""
