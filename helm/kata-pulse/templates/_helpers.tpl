{{/* Chart name, overridable. */}}
{{- define "kata-pulse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects; the release name alone when it already holds the chart name. */}}
{{- define "kata-pulse.fullname" -}}
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

{{- define "kata-pulse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kata-pulse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kata-pulse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kata-pulse.labels" -}}
helm.sh/chart: {{ include "kata-pulse.chart" . }}
{{ include "kata-pulse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kata-pulse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kata-pulse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kata-pulse.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* HOST:PORT for KATA_PULSE_LISTEN; an IPv6 host is bracketed. */}}
{{- define "kata-pulse.listenAddress" -}}
{{- $host := .Values.agent.listenHost }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host (int .Values.agent.port) }}
{{- else }}
{{- printf "%s:%d" $host (int .Values.agent.port) }}
{{- end }}
{{- end }}

{{/* Directory of the CRI socket: mounted instead of the socket so a runtime restart's new socket is seen. */}}
{{- define "kata-pulse.criSocketDir" -}}
{{- dir .Values.agent.criSocket }}
{{- end }}

{{- define "kata-pulse.serviceEnabled" -}}
{{- if or .Values.service.enabled .Values.serviceMonitor.enabled }}true{{ end }}
{{- end }}

{{/*
Path scraped by a ServiceMonitor or PodMonitor: the kubelet's cAdvisor path in compat mode, so the
metrics_path label copied from __metrics_path__ is the one the kube-prometheus selectors expect.
*/}}
{{- define "kata-pulse.scrapePath" -}}
{{- if .Values.cadvisorCompat.enabled }}/metrics/cadvisor{{ else }}/metrics{{ end }}
{{- end }}

{{/* Target relabelings: the compat ones first, then the user's (which may override them). */}}
{{- define "kata-pulse.relabelings" -}}
{{- $user := .user }}
{{- $root := .root }}
{{- if $root.Values.cadvisorCompat.enabled }}
- action: replace
  sourceLabels:
    - __metrics_path__
  targetLabel: metrics_path
- action: replace
  targetLabel: job
  replacement: kubelet
{{- end }}
{{- with $user }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Metric relabelings: in compat mode the agent's own series get their own job back. */}}
{{- define "kata-pulse.metricRelabelings" -}}
{{- $user := .user }}
{{- $root := .root }}
{{- if and $root.Values.cadvisorCompat.enabled $root.Values.cadvisorCompat.ownMetricsJob }}
- action: replace
  sourceLabels:
    - __name__
  regex: kata_pulse_.+
  targetLabel: job
  replacement: {{ $root.Values.cadvisorCompat.ownMetricsJob | quote }}
{{- end }}
{{- with $user }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kata-pulse.validate" -}}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- fail "serviceMonitor.enabled and podMonitor.enabled are both true: every node would be scraped twice and sums (CPU, network) would double. Enable one of them." }}
{{- end }}
{{- end }}
