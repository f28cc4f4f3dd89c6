{{/* The values with Istio's pilot.* keys merged over the top-level ones. */}}
{{- define "istiod-lite.values" -}}
{{- toYaml (mergeOverwrite (deepCopy (omit .Values "pilot")) (deepCopy (.Values.pilot | default dict))) -}}
{{- end }}

{{/* An image reference: (list $values $image). */}}
{{- define "istiod-lite.image" -}}
{{- $v := index . 0 }}{{- $image := index . 1 }}
{{- if contains "/" $image }}{{ $image }}
{{- else }}{{ $v.hub | default $v.global.hub }}/{{ $image }}:{{ $v.tag | default $v.global.tag }}
{{- end }}
{{- end }}

{{- define "istiod-lite.labels" -}}
app.kubernetes.io/name: istiod
app.kubernetes.io/part-of: ambient-lite
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The pods' labels, Istio's: the Service and the PodDisruptionBudget select them. */}}
{{- define "istiod-lite.selector" -}}
app: istiod
istio: pilot
{{- end }}
