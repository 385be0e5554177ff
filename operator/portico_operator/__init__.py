"""The Portico operator: IP pools, allocation, Service status and the LoadBalancer CR."""
