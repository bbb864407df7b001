{{- define "truckllm.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "truckllm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "truckllm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "truckllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "truckllm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "truckllm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "truckllm.secretName" -}}
{{- default (include "truckllm.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "truckllm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "truckllm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The port the gateway listens on, from config.server.listen ("host:port" or ":port"). */}}
{{- define "truckllm.port" -}}
{{- $listen := toString (default ":8080" .Values.config.server.listen) -}}
{{- last (splitList ":" $listen) -}}
{{- end -}}

{{- define "truckllm.shutdownTimeout" -}}
{{- int (default 30 .Values.config.server.shutdown_timeout) -}}
{{- end -}}

{{- define "truckllm.drainDelay" -}}
{{- int (default 0 .Values.config.server.drain_delay) -}}
{{- end -}}
