{{/* The chart's short name. */}}
{{- define "portico.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The operator's resource names (Deployment, Service, ServiceAccount, RBAC). */}}
{{- define "portico.operatorName" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-operator" (include "portico.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "portico.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "portico.labels" -}}
helm.sh/chart: {{ include "portico.chart" . }}
app.kubernetes.io/name: {{ include "portico.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portico
{{- end -}}

{{/* The operator's pod selector. */}}
{{- define "portico.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "portico.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "portico.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "portico.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "portico.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion (toString .Values.image.tag)) -}}
{{- end -}}

{{/* The node agent's resource names (DaemonSet, ServiceAccount, RBAC). */}}
{{- define "portico.nodeAgentName" -}}
{{- printf "%s-node-agent" (include "portico.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The node agent's pod selector. */}}
{{- define "portico.nodeAgentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "portico.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{- define "portico.nodeAgentServiceAccountName" -}}
{{- if .Values.nodeAgent.serviceAccount.create -}}
{{- default (include "portico.nodeAgentName" .) .Values.nodeAgent.serviceAccount.name -}}
{{- else -}}
{{- required "nodeAgent.serviceAccount.name is required when nodeAgent.serviceAccount.create is false" .Values.nodeAgent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The node agent's image: nodeAgent.image.* where set, else the chart's image. */}}
{{- define "portico.nodeAgentImage" -}}
{{- $img := .Values.nodeAgent.image | default dict -}}
{{- $repo := default .Values.image.repository $img.repository -}}
{{- $tag := default (default .Chart.AppVersion (toString .Values.image.tag)) (toString (default "" $img.tag)) -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* nodeSelector of every pod: kubernetes.io/os: linux (the programs need Linux's nftables),
     then the component's own selector, which may override it. */}}
{{- define "portico.nodeSelector" -}}
{{- toYaml (merge (deepCopy (. | default dict)) (dict "kubernetes.io/os" "linux")) -}}
{{- end -}}

{{/* The gateway's resource names (Deployment, ServiceAccount, RBAC). */}}
{{- define "portico.gatewayName" -}}
{{- printf "%s-gateway" (include "portico.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The gateway's pod selector. */}}
{{- define "portico.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "portico.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "portico.gatewayServiceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "portico.gatewayName" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The gateway's image: gateway.image.repository, its tag or the chart's image.tag or appVersion. */}}
{{- define "portico.gatewayImage" -}}
{{- $img := .Values.gateway.image -}}
{{- $tag := default (default .Chart.AppVersion (toString .Values.image.tag)) (toString (default "" $img.tag)) -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}

{{/* The ConfigMap with the pools of `pools`, which the operator makes VIPPools of. */}}
{{- define "portico.poolsConfigMapName" -}}
{{- printf "%s-pools" (include "portico.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
