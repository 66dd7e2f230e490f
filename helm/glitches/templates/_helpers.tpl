{{- define "glitches.labels" -}}
app.kubernetes.io/name: glitches
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "glitches.redisUrl" -}}
{{- if .Values.redis.bundled -}}
redis://{{ .Release.Name }}-redis:6379/0
{{- else -}}
{{ required "redis.externalUrl is required when redis.bundled is false" .Values.redis.externalUrl }}
{{- end -}}
{{- end }}

{{/* env, ports, probes shared by every daemon; call with (dict "root" $ "role" "scheduler") */}}
{{- define "glitches.daemonContainer" -}}
image: "{{ .root.Values.image.repository }}-{{ .role }}:{{ .root.Values.image.tag }}"
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
env:
  - {name: GLITCHES_REDIS_URL, value: {{ include "glitches.redisUrl" .root | quote }}}
  - {name: GLITCHES_REDIS_PREFIX, value: {{ .root.Values.redisPrefix | quote }}}
  - {name: GLITCHES_MODEL, value: {{ .root.Values.model | quote }}}
  - {name: GLITCHES_HOST, value: "0.0.0.0"}
  - {name: GLITCHES_PORT, value: "50051"}
  - {name: GLITCHES_HTTP_PORT, value: "8080"}
  - name: GLITCHES_ADVERTISE_HOST
    valueFrom: {fieldRef: {fieldPath: status.podIP}}
  - name: GLITCHES_WORKER_ID
    valueFrom: {fieldRef: {fieldPath: metadata.name}}
ports:
  - {name: grpc, containerPort: 50051}
  - {name: http, containerPort: 8080}
startupProbe:
  grpc: {port: 50051}
  periodSeconds: 5
  failureThreshold: 120
livenessProbe:
  grpc: {port: 50051}
  periodSeconds: 10
readinessProbe:
  grpc: {port: 50051}
  periodSeconds: 5
volumeMounts:
  - {name: model-cache, mountPath: /var/cache/glitches}
{{- end }}

{{- define "glitches.cacheVolume" -}}
- name: model-cache
{{- if .Values.modelCache.existingClaim }}
  persistentVolumeClaim: {claimName: {{ .Values.modelCache.existingClaim }}}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
