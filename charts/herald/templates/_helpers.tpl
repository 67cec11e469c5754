{{/* The chart's name, or nameOverride: the app.kubernetes.io/name label. */}}
{{- define "herald.name" -}}
{{ default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* Prefix of every object's name: fullnameOverride, or the release name (with the chart's
name when the release name lacks it). Kept under 50 characters so "-controller-metrics"
still fits a 63-character name. */}}
{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{ .Values.fullnameOverride | trunc 44 | trimSuffix "-" }}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{ .Release.Name | trunc 44 | trimSuffix "-" }}
{{- else -}}
{{ printf "%s-%s" .Release.Name $name | trunc 44 | trimSuffix "-" }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "herald.labels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "herald.selector" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "herald.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The gossip Secret: the user's (speaker.gossipSecret), or the one the controller makes. */}}
{{- define "herald.gossipSecret" -}}
{{ .Values.speaker.gossipSecret | default (printf "%s-gossip" (include "herald.fullname" .)) }}
{{- end -}}

{{/* A component's ServiceAccount name: call with (list $ "controller"). */}}
{{- define "herald.serviceAccount" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $sa := (index $root.Values $component).serviceAccount -}}
{{- if $sa.create -}}
{{ $sa.name | default (printf "%s-%s" (include "herald.fullname" $root) $component) }}
{{- else -}}
{{ $sa.name | default "default" }}
{{- end -}}
{{- end -}}

{{- define "herald.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
{{- end -}}
