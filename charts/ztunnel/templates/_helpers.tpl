{{- define "ztunnel.name" -}}
{{ .Values.resourceName | default "ztunnel" }}
{{- end }}

{{- define "ztunnel.image" -}}
{{- if contains "/" .Values.image }}{{ .Values.image }}
{{- else }}{{ .Values.hub | default .Values.global.hub }}/{{ .Values.image }}:{{ .Values.tag | default .Values.global.tag }}
{{- end }}
{{- end }}

{{- define "ztunnel.labels" -}}
app.kubernetes.io/name: ztunnel
app.kubernetes.io/part-of: ambient-lite
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* istiod-lite's gRPC address (CA and xDS). */}}
{{- define "ztunnel.istiod" -}}
istiod.{{ .Values.istioNamespace }}.svc:15012
{{- end }}
