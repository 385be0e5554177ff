"""Code that Portico's programs (the operator, node agents, lbnode) share."""

API_GROUP = "portico.dev"
API_VERSION = "v1alpha1"
