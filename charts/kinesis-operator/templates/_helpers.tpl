{{/* Chart name, overridable with nameOverride. */}}
{{- define "kinesis-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: fullnameOverride, else <release>-<name> (just <release> when it contains <name>). */}}
{{- define "kinesis-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kinesis-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "kinesis-operator.labels" -}}
helm.sh/chart: {{ include "kinesis-operator.chart" . }}
{{ include "kinesis-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kinesis-exporter
{{- end }}

{{/* Selector labels (the Deployment's selector is immutable: keep these stable). */}}
{{- define "kinesis-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kinesis-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kinesis-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kinesis-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "true" when leader election is on: asked for, or more than one replica. */}}
{{- define "kinesis-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{- end }}
{{- end }}

{{- define "kinesis-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "kinesis-operator.exporterImage" -}}
{{- printf "%s:%s" .Values.exporterImage.repository (.Values.exporterImage.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The rules the operator needs, shared by the ClusterRole (cluster-wide mode) and the Role in
each watched namespace (namespaced mode): exactly the verbs it calls. Server-side apply is a
patch, authorized as create when the object does not exist yet; delete is only for the
ServiceAccount and PodDisruptionBudget a spec can stop asking for; pods are only listed, to
say why they do not become ready. The Lease rules live in
leader-election-rbac.yaml.
*/}}
{{- define "kinesis-operator.rules" -}}
- apiGroups: ["kinesis.otlp.dev"]
  resources: ["kinesisexporters"]
  verbs: ["list", "watch"]
- apiGroups: ["kinesis.otlp.dev"]
  resources: ["kinesisexporters/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The operator's user name, as the API server sees its ServiceAccount token. */}}
{{- define "kinesis-operator.username" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "kinesis-operator.serviceAccountName" . }}
{{- end }}

{{/*
A list of globs (`*` any run of characters, `?` one character) as a CEL list of anchored
regular expressions, the same matching as the operator's --allowed-* flags.
*/}}
{{- define "kinesis-operator.globRegexes" -}}
{{- $out := list }}
{{- range . }}
{{- $out = append $out (printf "^%s$" (regexQuoteMeta . | replace "\\*" ".*" | replace "\\?" ".")) }}
{{- end }}
{{- toJson $out }}
{{- end }}
