{{/* Names ----------------------------------------------------------------------------------- */}}
{{- define "fae.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fae.fullname" -}}
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

{{- define "fae.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: common ones, and the selector subset. Component goes in as "component". */}}
{{- define "fae.labels" -}}
helm.sh/chart: {{ include "fae.chart" . }}
app.kubernetes.io/name: {{ include "fae.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fae-serve
{{- end }}

{{- define "fae.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fae.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fae.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fae.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Images ---------------------------------------------------------------------------------- */}}
{{- define "fae.image" -}}
{{- $img := index .root.Values.image .which -}}
{{- $repo := $img.repository -}}
{{- if .root.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .root.Values.image.registry) $img.repository }}{{ end -}}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion $img.tag) -}}
{{- end }}

{{/* Secret names ----------------------------------------------------------------------------- */}}
{{- define "fae.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "fae.fullname" .)) .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "fae.hasApiKeys" -}}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}true{{ end }}
{{- end }}

{{- define "fae.s3Secret" -}}
{{- default (printf "%s-s3" (include "fae.fullname" .)) .Values.s3.existingSecret }}
{{- end }}

{{- define "fae.hasS3Credentials" -}}
{{- if or .Values.s3.existingSecret (and .Values.s3.accessKeyId .Values.s3.secretAccessKey) }}true{{ end }}
{{- end }}

{{- define "fae.webhookSecret" -}}
{{- default (printf "%s-webhooks" (include "fae.fullname" .)) .Values.webhooks.existingSecret }}
{{- end }}

{{- define "fae.hasWebhookKey" -}}
{{- if or .Values.webhooks.existingSecret .Values.webhooks.signingKey }}true{{ end }}
{{- end }}

{{- define "fae.redisHost" -}}
{{- printf "%s-redis" (include "fae.fullname" .) }}
{{- end }}

{{- define "fae.redisPasswordSecret" -}}
{{- default (printf "%s-redis" (include "fae.fullname" .)) .Values.redis.auth.existingSecret }}
{{- end }}

{{/* Environment every fae-serve container gets: Redis URL (possibly from a Secret), S3 credentials,
     webhook key. The ConfigMap carries the rest. */}}
{{- define "fae.env" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "fae.redisPasswordSecret" . }}
      key: {{ .Values.redis.auth.existingSecretKey }}
- name: FAE_REDIS_URL
  value: "redis://:$(REDIS_PASSWORD)@{{ include "fae.redisHost" . }}:6379/0"
{{- else }}
- name: FAE_REDIS_URL
  value: "redis://{{ include "fae.redisHost" . }}:6379/0"
{{- end }}
{{- else if .Values.redis.existingSecret }}
- name: FAE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else }}
- name: FAE_REDIS_URL
  value: {{ required "redis.enabled is false: set redis.url or redis.existingSecret to an external Redis" .Values.redis.url | quote }}
{{- end }}
{{- if include "fae.hasS3Credentials" . }}
- name: FAE_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "fae.s3Secret" . }}
      key: {{ .Values.s3.accessKeyIdKey }}
- name: FAE_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "fae.s3Secret" . }}
      key: {{ .Values.s3.secretAccessKeyKey }}
{{- end }}
{{- if include "fae.hasWebhookKey" . }}
- name: FAE_WEBHOOK_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "fae.webhookSecret" . }}
      key: {{ .Values.webhooks.existingSecretKey }}
{{- end }}
# The root filesystem is read-only: caches that follow $HOME land in the /tmp emptyDir.
- name: HOME
  value: /tmp
{{- end }}

{{/* Pod annotations that roll pods when their configuration changes. */}}
{{- define "fae.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ include (print .Template.BasePath "/secrets.yaml") . | sha256sum }}
{{- end }}

{{- define "fae.prometheusAnnotations" -}}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* Volume source for models / compileCache: a raw volume, an existing claim, the chart's claim, or
     an emptyDir when persistence is off. Call with (dict "root" $ "cfg" .Values.models "suffix" "models"). */}}
{{- define "fae.volumeSource" -}}
{{- if .cfg.volume }}
{{- toYaml .cfg.volume }}
{{- else if .cfg.existingClaim }}
persistentVolumeClaim:
  claimName: {{ .cfg.existingClaim }}
{{- else if .cfg.persistence.enabled }}
persistentVolumeClaim:
  claimName: {{ include "fae.fullname" .root }}-{{ .suffix }}
{{- else }}
emptyDir: {}
{{- end }}
{{- end }}
