"""Portico's node agent: applies this node's nftables NAT rules (``portico-node-agent``)."""
