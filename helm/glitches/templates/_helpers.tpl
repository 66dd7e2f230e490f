{{- define "glitches.labels" -}}
app.kubernetes.io/name: glitches
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "glitches.redisUrl" -}}
{{- if .Values.redis.bundled -}}
{{- /* $(GLITCHES_REDIS_PASSWORD): Kubernetes expands the variable defined before it, from the redis Secret */ -}}
redis://:$(GLITCHES_REDIS_PASSWORD)@{{ .Release.Name }}-redis:6379/0
{{- else -}}
{{ required "redis.externalUrl is required when redis.bundled is false" .Values.redis.externalUrl }}
{{- end -}}
{{- end }}

{{/* env, ports, probes shared by every daemon; call with (dict "root" $ "role" "scheduler") */}}
{{- define "glitches.daemonContainer" -}}
image: "{{ .root.Values.image.repository }}-{{ .role }}:{{ .root.Values.image.tag }}"
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
env:
{{- if .root.Values.redis.bundled }}
  - name: GLITCHES_REDIS_PASSWORD
    valueFrom: {secretKeyRef: {name: "{{ .root.Release.Name }}-redis", key: password}}
{{- end }}
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
  - name: GLITCHES_KV_TOKEN_SECRET
    valueFrom: {secretKeyRef: {name: {{ include "glitches.kvTokenSecretName" .root | quote }}, key: secret}}
{{- if .root.Values.tls.enabled }}
  - {name: GLITCHES_TLS_CA, value: /etc/glitches/tls/ca.pem}
  - {name: GLITCHES_TLS_CERT, value: "/etc/glitches/tls/{{ .role }}.pem"}
  - {name: GLITCHES_TLS_KEY, value: "/etc/glitches/tls/{{ .role }}-key.pem"}
  - {name: GLITCHES_TLS_SERVER_NAME, value: {{ .root.Values.tls.serverName | quote }}}
{{- end }}
ports:
  - {name: grpc, containerPort: 50051}
  - {name: http, containerPort: 8080}
{{- if .root.Values.tls.enabled }}
{{- /* kubelet's gRPC probes speak no TLS: probe the HTTP side port instead */}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 5
  failureThreshold: 120
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
{{- else }}
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
{{- end }}
volumeMounts:
  - {name: model-cache, mountPath: /var/cache/glitches}
{{- if .root.Values.tls.enabled }}
  - {name: tls, mountPath: /etc/glitches/tls, readOnly: true}
{{- end }}
{{- end }}

{{- define "glitches.cacheVolume" -}}
- name: model-cache
{{- if .Values.modelCache.existingClaim }}
  persistentVolumeClaim: {claimName: {{ .Values.modelCache.existingClaim }}}
{{- else }}
  emptyDir: {}
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret: {secretName: {{ .Values.tls.secretName | quote }}, defaultMode: 0440}  # group: the pod's fsGroup 10001
{{- end }}
{{- end }}

{{- define "glitches.kvTokenSecretName" -}}
{{ .Values.kvTokens.existingSecret | default (printf "%s-kv-token" .Release.Name) }}
{{- end }}
