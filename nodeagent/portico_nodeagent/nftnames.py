"""Every name and number of the nftables table that Portico's node agent owns, in one place.

Portico owns exactly one table, ``inet portico``, and never reads or writes another. Fixed base
chains jump to fixed dispatch chains, which look the packet up in verdict maps keyed on
``daddr . l4proto . dport`` (kube-proxy's nftables proxier's dispatch). Endpoint choice is flat:
a Service port's endpoint count N (a data map) picks the shared chain ``pick4-N``, which draws a
slot at random and DNATs through two maps keyed ``daddr . l4proto . dport . slot`` (address,
port). So a table of 10,000 Services has a few dozen chains, and an endpoint change is a few
data elements, which the kernel commits without re-validating the table's jumps (a verdict
element added costs a walk of every verdict map: ~10 ms at 10,000 Services). Only
ClientIP-affinity Services, whose pins are per endpoint, keep kube-proxy's chain per Service
port and per endpoint. The maps are per address family because an
``inet`` table holds both and a concatenated key has one address type.
"""

from __future__ import annotations

FAMILY = "inet"
TABLE = "portico"

# -- base chains: (name, type, hook, priority) --------------------------------------------------
# nftables' standard priorities (nft(8), "CHAINS"): dstnat = -100, srcnat = 100.
PRIO_DSTNAT = -100
PRIO_SRCNAT = 100
# Our DNAT runs one step before the standard one, where kube-proxy's (nftables or iptables
# mode) is: a connection's NAT is set by the first NAT chain that acts, and the kernel skips
# the later ones, so where kube-proxy also programs a VIP (ipMode VIP) Portico's rules handle
# it, whichever program started first. (At equal priorities the base chain registered last
# runs first: kube-proxy's chains, made after ours, would otherwise take the VIPs.)
PRIO_NAT = PRIO_DSTNAT - 1
# Filtering must see the pre-DNAT destination (the VIP), so it runs just before DNAT.
PRIO_FILTER = PRIO_DSTNAT - 10

FILTER_PREROUTING = "filter-prerouting"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"
# Right after DNAT and before the routing decision, the packet mark that carried the endpoint
# slot is given back (see SLOT_BASE).
SLOT_PREROUTING = "slot-prerouting"
SLOT_OUTPUT = "slot-output"
PRIO_SLOT_RESTORE = PRIO_DSTNAT + 10

BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    (FILTER_PREROUTING, "filter", "prerouting", PRIO_FILTER),
    (FILTER_INPUT, "filter", "input", PRIO_FILTER),
    (FILTER_FORWARD, "filter", "forward", PRIO_FILTER),
    (FILTER_OUTPUT, "filter", "output", PRIO_FILTER),
    (NAT_PREROUTING, "nat", "prerouting", PRIO_NAT),
    (NAT_OUTPUT, "nat", "output", PRIO_NAT),
    (NAT_POSTROUTING, "nat", "postrouting", PRIO_SRCNAT),
    (SLOT_PREROUTING, "filter", "prerouting", PRIO_SLOT_RESTORE),
    (SLOT_OUTPUT, "filter", "output", PRIO_SLOT_RESTORE),
)

# -- fixed regular chains -----------------------------------------------------------------------
SERVICES = "services"  # VIP and nodePort dispatch (nat prerouting and output)
FIREWALL_CHECK = "firewall-check"  # loadBalancerSourceRanges (filter prerouting and output)
ENDPOINTS_CHECK = "endpoints-check"  # no endpoints: drop or reject (filter input/forward/output)
REJECT = "reject-chain"  # TCP reset, ICMP(v6) port unreachable otherwise
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"
SLOT_RESTORE = "slot-restore"  # gives the mark back, then masquerade decisions by address
PICK_PREFIX = "pick"  # pick4-N / pick6-N: a random slot of N, DNAT through the endpoint maps
NODEPORT_PICK_PREFIX = "nodeport-pick"
# Traffic that starts inside the cluster (this node itself, its pods) to an
# externalTrafficPolicy: Local VIP goes to the Service's endpoints anywhere, as kube-proxy's
# "short-circuit" sends it: nat-output, and nat-prerouting for a source in the node's pod CIDRs,
# jump here first; its own counts and picks choose among every endpoint (slots from
# INTERNAL_SLOT_BASE), with the pod's address kept.
INTERNAL = "internal-services"
INTERNAL_PICK_PREFIX = "internal-pick"
INTERNAL_SLOT_RESTORE = "internal-slot-restore"  # slot-restore less the remote masquerade
# Pick chains for 1..PICKS_ALWAYS endpoints always exist, so that an endpoint coming or going
# changes data elements only; larger counts get their chain while a Service has them.
PICKS_ALWAYS = 16

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

# Flat endpoint choice: "daddr . l4proto . dport" -> N (as a mark), N -> goto pick4-N, then
# "daddr . l4proto . dport . slot" -> endpoint address / port; for the gateway's NAT mode the
# same keyed "l4proto . nodePort". Two maps rather than one with "address . port" data:
# libnftables 1.0.6 crashes on a JSON-made map with concatenated data.
ENDPOINT_COUNTS = {4: "endpoint-counts4", 6: "endpoint-counts6"}
PICKS = {4: "picks4", 6: "picks6"}
NODEPORT_ENDPOINT_COUNTS = {4: "nodeport-endpoint-counts4", 6: "nodeport-endpoint-counts6"}
NODEPORT_PICKS = {4: "nodeport-picks4", 6: "nodeport-picks6"}
INTERNAL_COUNTS = {4: "internal-endpoint-counts4", 6: "internal-endpoint-counts6"}
# vip . proto . port : goto isvc chain (ClientIP-affinity Local Services: pins are per endpoint)
INTERNAL_VIPS = {4: "internal-vips4", 6: "internal-vips6"}
# Every VIP port with an internal path (a data map looked up as a set: filter-output may not
# look up a verdict map whose chains DNAT)
INTERNAL_PORTS = {4: "internal-ports4", 6: "internal-ports6"}
INTERNAL_PICKS = {4: "internal-picks4", 6: "internal-picks6"}
ENDPOINT_ADDRS = {4: "endpoint-addrs4", 6: "endpoint-addrs6"}
ENDPOINT_PORTS = {4: "endpoint-ports4", 6: "endpoint-ports6"}
NODEPORT_ENDPOINT_ADDRS = {4: "nodeport-endpoint-addrs4", 6: "nodeport-endpoint-addrs6"}
NODEPORT_ENDPOINT_PORTS = {4: "nodeport-endpoint-ports4", 6: "nodeport-endpoint-ports6"}
# After DNAT: an endpoint on another node is masqueraded (Cluster policy), and so is a pod that
# reached itself (hairpin). Looked up as sets; the data (IN_SET) is unused: a map, because the
# table's other lookups are maps and one container kind keeps the differ simple.
REMOTE_ENDPOINTS = {4: "remote-endpoints4", 6: "remote-endpoints6"}
HAIRPIN = {4: "hairpin4", 6: "hairpin6"}

ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
IP_PROTO = {4: "ip", 6: "ip6"}
NFPROTO = {4: "ipv4", 6: "ipv6"}

# -- per-Service names (prefix + hash + readable part, see ruleset.object_name) -----------------
SERVICE_CHAIN_PREFIX = "svc-"
INTERNAL_SERVICE_CHAIN_PREFIX = "isvc-"  # a ClientIP Local Service port's internal path
ENDPOINT_CHAIN_PREFIX = "ep-"
FIREWALL_CHAIN_PREFIX = "fw-"
AFFINITY_SET_PREFIX = "aff-"
NAME_MAX = 256  # NFT_NAME_MAXLEN, including the terminating NUL
NAME_BASE_MAX = NAME_MAX - 1 - 16  # room for any prefix above

# -- packet mark for masquerading ---------------------------------------------------------------
# Not kube-proxy's 0x4000, so that the two can run side by side without clearing each other's bit.
MASQ_MARK = 0x00400000
REJECT_MARK = 0x00800000  # "reject me in filter-input", set by REJECT_DNAT
# The endpoint slot rides in the packet mark from the pick chain to the DNAT map lookup (nft
# 1.0.6 takes a random number into a map key only through a mark: typeof maps are text-only and
# a ct mark key crashes it). The pick chain first saves the packet's own mark in the conntrack
# mark, which a new connection has at 0; slot-restore, right after DNAT, puts it back and sets
# the conntrack mark to 0 again. The slot is SLOT_BASE + i, told apart by its top 16 bits.
SLOT_BASE = 0x00200000
INTERNAL_SLOT_BASE = SLOT_BASE + 0x8000  # an internal path's slots (same top 16 bits)
SLOT_PREFIX_LEN = 16
IN_SET = 1
