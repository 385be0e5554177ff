"""`kubectl portico`: the kubectl plugin that explains a LoadBalancer Service's path."""
