{{/* The chart's name. */}}
{{- define "leader-elect.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A fully qualified app name, truncated to 63 characters (the longest DNS label). */}}
{{- define "leader-elect.fullname" -}}
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

{{- define "leader-elect.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "leader-elect.labels" -}}
helm.sh/chart: {{ include "leader-elect.chart" . }}
{{ include "leader-elect.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "leader-elect.selectorLabels" -}}
app.kubernetes.io/name: {{ include "leader-elect.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "leader-elect.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "leader-elect.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Lease's name: leaderElection.leaseName, else the full name. */}}
{{- define "leader-elect.leaseName" -}}
{{- default (include "leader-elect.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
A duration string ("15s", "1m30s", "500ms"; values.schema.json admits only <integer><unit> parts with units
h, m, s, ms) in milliseconds. "ms" is tried before "m" and "s".
*/}}
{{- define "leader-elect.millis" -}}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+(ms|h|m|s)" . -1 }}
{{- if hasSuffix "ms" . }}
{{- $total = add $total (atoi (trimSuffix "ms" .)) }}
{{- else if hasSuffix "h" . }}
{{- $total = add $total (mul (atoi (trimSuffix "h" .)) 3600000) }}
{{- else if hasSuffix "m" . }}
{{- $total = add $total (mul (atoi (trimSuffix "m" .)) 60000) }}
{{- else }}
{{- $total = add $total (mul (atoi (trimSuffix "s" .)) 1000) }}
{{- end }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
The timings, checked as leader-elect checks them (client-go's rules, then ours), as JSON (milliseconds):
leaseDuration > renewDeadline > 1.2 x retryPeriod, each > 0, retryPeriod >= 100ms, leaseDuration whole seconds,
gracePeriod within the stop window leaseDuration - renewDeadline - margin (margin = min(1s, (leaseDuration -
renewDeadline) / 5), rounded up here so that the chart never accepts a grace period leader-elect refuses).
terminationGracePeriodSeconds: the grace period + the release (one request, bounded by max(renewDeadline / 2,
1s)) + 2s, rounded up.
*/}}
{{- define "leader-elect.timings" -}}
{{- $le := .Values.leaderElection }}
{{- $lease := include "leader-elect.millis" $le.leaseDuration | atoi }}
{{- $renew := include "leader-elect.millis" $le.renewDeadline | atoi }}
{{- $retry := include "leader-elect.millis" $le.retryPeriod | atoi }}
{{- if or (le $lease 0) (le $renew 0) (le $retry 0) }}
{{- fail (printf "leaderElection: leaseDuration (%s), renewDeadline (%s) and retryPeriod (%s) must each be greater than 0" $le.leaseDuration $le.renewDeadline $le.retryPeriod) }}
{{- end }}
{{- if le $lease $renew }}
{{- fail (printf "leaderElection.leaseDuration (%s) must be greater than leaderElection.renewDeadline (%s)" $le.leaseDuration $le.renewDeadline) }}
{{- end }}
{{- if le (mul $renew 10) (mul $retry 12) }}
{{- fail (printf "leaderElection.renewDeadline (%s) must be greater than 1.2 x leaderElection.retryPeriod (%s)" $le.renewDeadline $le.retryPeriod) }}
{{- end }}
{{- if lt $retry 100 }}
{{- fail (printf "leaderElection.retryPeriod (%s) must be at least 100ms: every replica makes about one API request per retry period" $le.retryPeriod) }}
{{- end }}
{{- if ne (mod $lease 1000) 0 }}
{{- fail (printf "leaderElection.leaseDuration (%s) must be a whole number of seconds (it is written to the Lease as leaseDurationSeconds)" $le.leaseDuration) }}
{{- end }}
{{- $diff := sub $lease $renew }}
{{- $margin := min 1000 (div (add $diff 4) 5) }}
{{- $window := sub $diff $margin }}
{{- $grace := $window }}
{{- if $le.gracePeriod }}
{{- $grace = include "leader-elect.millis" $le.gracePeriod | atoi }}
{{- if gt $grace $window }}
{{- fail (printf "leaderElection.gracePeriod (%s) must fit in leaseDuration - renewDeadline - min(1s, (leaseDuration - renewDeadline) / 5) = %dms" $le.gracePeriod $window) }}
{{- end }}
{{- end }}
{{- $request := max 1000 (div $renew 2) }}
{{- $minTermination := add (div (add $grace $request 999) 1000) 2 }}
{{- $termination := $minTermination }}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- $termination = int .Values.terminationGracePeriodSeconds }}
{{- if lt $termination $minTermination }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least %d: the child's grace period (%dms) + the release (%dms) + 2s" $termination $minTermination $grace $request) }}
{{- end }}
{{- end }}
{{- dict "lease" $lease "renew" $renew "retry" $retry "grace" $grace "window" $window "terminationGracePeriodSeconds" $termination | toJson }}
{{- end }}

{{/* The checks that are not about timings. */}}
{{- define "leader-elect.validate" -}}
{{- if eq .Values.mode "wrap" }}
{{- if not .Values.wrap.image.repository }}
{{- fail "mode wrap needs wrap.image.repository: the user's image, whose container runs /le/leader-elect run ... -- COMMAND" }}
{{- end }}
{{- if not .Values.command }}
{{- fail "mode wrap needs command: what the user's container runs while it leads (a list, e.g. [\"my-job\", \"--flag\"])" }}
{{- end }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "serviceMonitor.enabled needs service.enabled: the ServiceMonitor scrapes /metrics through the Service" }}
{{- end }}
{{- end }}

{{/* --admin-listen: IPv6 addresses in brackets. */}}
{{- define "leader-elect.adminListen" -}}
{{- if contains ":" .Values.admin.bindAddress }}
{{- printf "[%s]:%d" .Values.admin.bindAddress (int .Values.admin.port) }}
{{- else }}
{{- printf "%s:%d" .Values.admin.bindAddress (int .Values.admin.port) }}
{{- end }}
{{- end }}

{{/*
The Role rules on the guarded resources (fencing.resources, group/version/resource) with fencing.verbs: what
the leader needs to write them. Nothing when fencing is off or fencing.verbs is empty.
*/}}
{{- define "leader-elect.fencingRules" -}}
{{- if and .Values.fencing.enabled .Values.fencing.verbs }}
{{- range .Values.fencing.resources }}
{{- $parts := splitList "/" . }}
{{- if eq (len $parts) 2 }}
{{- $parts = prepend $parts "" }}
{{- end }}
  - apiGroups: [{{ index $parts 0 | quote }}]
    resources: [{{ index $parts 2 | quote }}]
    verbs: {{ toJson $.Values.fencing.verbs }}
{{- end }}
{{- end }}
{{- end }}
