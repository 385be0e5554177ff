#!/bin/sh
# Writes the kubeconfig of a gateway outside the cluster, from the token Secret of its
# ServiceAccount (the chart's portico-gateway-token, rendered with gateway.enabled=false).
# Run it where kubectl reaches the cluster as an administrator, then copy the file to the
# gateway host as /etc/portico/gateway.kubeconfig (docs/gateway-baremetal.md).
#
#   deploy/gateway/gateway-kubeconfig.sh [OUTPUT]          default OUTPUT: gateway.kubeconfig
#
# Environment: NAMESPACE (default portico-system), SECRET (default portico-gateway-token),
# SERVER (default: the API server of kubectl's current context; set it when the gateway host
# reaches the API server by another address), CA_FILE (default: the cluster CA in the Secret).
# The token never appears on a command line; the file is written mode 0600.
set -eu
out=${1:-gateway.kubeconfig}
ns=${NAMESPACE:-portico-system}
secret=${SECRET:-portico-gateway-token}

token=$(kubectl -n "$ns" get secret "$secret" -o jsonpath='{.data.token}' | base64 -d)
if [ -z "$token" ]; then
  echo "$0: secret $ns/$secret has no token (yet): is it of type kubernetes.io/service-account-token?" >&2
  exit 1
fi
server=${SERVER:-$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')}
if [ -n "${CA_FILE:-}" ]; then
  ca=$(base64 -w0 <"$CA_FILE")
else
  ca=$(kubectl -n "$ns" get secret "$secret" -o jsonpath='{.data.ca\.crt}')
fi
if [ -z "$ca" ]; then
  echo "$0: secret $ns/$secret has no ca.crt: set CA_FILE to the API server's CA" >&2
  exit 1
fi

umask 077
cat >"$out" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: portico
    cluster:
      server: $server
      certificate-authority-data: $ca
users:
  - name: portico-gateway
    user:
      token: $token
contexts:
  - name: portico-gateway
    context:
      cluster: portico
      user: portico-gateway
current-context: portico-gateway
KUBECONFIG
echo "wrote $out (server $server, ServiceAccount token of $ns/$secret)" >&2
