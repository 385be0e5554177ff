"""Every name and number of the nftables table that Portico's node agent owns, in one place.

Portico owns exactly one table, ``inet portico``, and never reads or writes another. Its layout
follows kube-proxy's nftables proxier (pkg/proxy/nftables/proxier.go): fixed base chains jump to
fixed dispatch chains, which look the packet up in verdict maps keyed on
``daddr . l4proto . dport``; per Service port there is one chain that picks an endpoint and one
chain per endpoint that DNATs. The maps are per address family because an ``inet`` table holds
both and a concatenated key has one address type.
"""

from __future__ import annotations

FAMILY = "inet"
TABLE = "portico"

# -- base chains: (name, type, hook, priority) --------------------------------------------------
# nftables' standard priorities (nft(8), "CHAINS"): dstnat = -100, srcnat = 100.
PRIO_DSTNAT = -100
PRIO_SRCNAT = 100
# Filtering must see the pre-DNAT destination (the VIP), so it runs just before DNAT.
PRIO_FILTER = PRIO_DSTNAT - 10

FILTER_PREROUTING = "filter-prerouting"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"

BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    (FILTER_PREROUTING, "filter", "prerouting", PRIO_FILTER),
    (FILTER_INPUT, "filter", "input", PRIO_FILTER),
    (FILTER_FORWARD, "filter", "forward", PRIO_FILTER),
    (FILTER_OUTPUT, "filter", "output", PRIO_FILTER),
    (NAT_PREROUTING, "nat", "prerouting", PRIO_DSTNAT),
    (NAT_OUTPUT, "nat", "output", PRIO_DSTNAT),
    (NAT_POSTROUTING, "nat", "postrouting", PRIO_SRCNAT),
)

# -- fixed regular chains -----------------------------------------------------------------------
SERVICES = "services"  # VIP and nodePort dispatch (nat prerouting and output)
FIREWALL_CHECK = "firewall-check"  # loadBalancerSourceRanges (filter prerouting and output)
ENDPOINTS_CHECK = "endpoints-check"  # no endpoints: drop or reject (filter input/forward/output)
REJECT = "reject-chain"  # TCP reset, ICMP(v6) port unreachable otherwise
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"

# -- verdict maps, per family (4 / 6) -----------------------------------------------------------
VIPS = {4: "vips4", 6: "vips6"}  # vip . proto . port : goto svc chain
NODEPORTS = {4: "nodeports4", 6: "nodeports6"}  # proto . nodePort : goto svc chain (NAT mode)
FIREWALL = {4: "firewall4", 6: "firewall6"}  # vip . proto . port : goto fw chain
NO_ENDPOINTS = {4: "noendpoints4", 6: "noendpoints6"}  # vip . proto . port : drop | goto reject
NO_ENDPOINT_NODEPORTS = {4: "noendpoint-nodeports4", 6: "noendpoint-nodeports6"}
# VIPs without any endpoint, rejected as local traffic: a forwarded packet makes the kernel send
# an ICMP redirect to an on-link client first, which uses up that client's ICMP rate-limit token
# and silences the port-unreachable that follows (UDP clients would hang). So nat-prerouting
# marks such packets and DNATs them to the node's own address; filter-input rejects them
# (conntrack translates the reset or ICMP error back to the VIP).
REJECT_LOCAL = {4: "reject-local4", 6: "reject-local6"}  # vip . proto . port : goto REJECT_DNAT
REJECT_DNAT = {4: "reject-dnat4", 6: "reject-dnat6"}

ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
IP_PROTO = {4: "ip", 6: "ip6"}
NFPROTO = {4: "ipv4", 6: "ipv6"}

# -- per-Service names (prefix + hash + readable part, see noderules.object_name) ---------------
SERVICE_CHAIN_PREFIX = "svc-"
ENDPOINT_CHAIN_PREFIX = "ep-"
FIREWALL_CHAIN_PREFIX = "fw-"
AFFINITY_SET_PREFIX = "aff-"
DYNAMIC_PREFIXES = (SERVICE_CHAIN_PREFIX, ENDPOINT_CHAIN_PREFIX, FIREWALL_CHAIN_PREFIX)
NAME_MAX = 256  # NFT_NAME_MAXLEN, including the terminating NUL
NAME_BASE_MAX = NAME_MAX - 1 - 16  # room for any prefix above

# -- packet mark for masquerading ---------------------------------------------------------------
# Not kube-proxy's 0x4000, so that the two can run side by side without clearing each other's bit.
MASQ_MARK = 0x00400000
REJECT_MARK = 0x00800000  # "reject me in filter-input", set by REJECT_DNAT

# -- session affinity (Service API: sessionAffinityConfig.clientIP.timeoutSeconds) -------------
AFFINITY_TIMEOUT_DEFAULT = 10800
AFFINITY_TIMEOUT_MAX = 86400
