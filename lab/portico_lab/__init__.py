"""The Portico lab: a real control plane and network namespaces on one machine."""
