{{/* The values with the nested cni.* keys merged over the top-level ones. */}}
{{- define "cni.values" -}}
{{- toYaml (mergeOverwrite (deepCopy (omit .Values "cni")) (deepCopy (.Values.cni | default dict))) -}}
{{- end }}

{{- define "cni.labels" -}}
app.kubernetes.io/name: istio-cni
app.kubernetes.io/part-of: ambient-lite
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}
