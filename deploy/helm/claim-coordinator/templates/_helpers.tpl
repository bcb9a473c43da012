{{/* The chart's name. */}}
{{- define "claim-coordinator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A fully qualified app name, truncated to 63 characters (the longest DNS label). */}}
{{- define "claim-coordinator.fullname" -}}
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

{{/*
The name of the RBAC objects outside the release's namespace (a Role in the hosts' or claims' namespace, the
ClusterRole): the full name and the release's namespace, so that releases of the same name in two namespaces
do not collide there.
*/}}
{{- define "claim-coordinator.foreignName" -}}
{{- printf "%s-%s" (include "claim-coordinator.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "claim-coordinator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "claim-coordinator.labels" -}}
helm.sh/chart: {{ include "claim-coordinator.chart" . }}
{{ include "claim-coordinator.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "claim-coordinator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "claim-coordinator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "claim-coordinator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "claim-coordinator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The hosts' namespace: hosts.namespace, else the release's. */}}
{{- define "claim-coordinator.hostNamespace" -}}
{{- default .Release.Namespace .Values.hosts.namespace }}
{{- end }}

{{/* The claims' namespace: claims.namespace, else the release's; "" with claims.allNamespaces. */}}
{{- define "claim-coordinator.claimNamespace" -}}
{{- if not .Values.claims.allNamespaces }}
{{- default .Release.Namespace .Values.claims.namespace }}
{{- end }}
{{- end }}

{{/*
"true" when the leader runs the binder (leader election on, mode not optimistic), "" when every replica (or
the leader) runs the fallback coordinator instead: the binder alone watches the hosts and claims and records
Events (crates/claim-coordinator/src/coordinator.rs, replica_of).
*/}}
{{- define "claim-coordinator.binder" -}}
{{- if and .Values.leaderElection.enabled (ne .Values.mode "optimistic") }}true{{ end }}
{{- end }}

{{/*
A duration string ("15s", "1m30s", "500ms"; values.schema.json admits only <integer><unit> parts with units
h, m, s, ms) in milliseconds. "ms" is tried before "m" and "s".
*/}}
{{- define "claim-coordinator.millis" -}}
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
The checks `claim-coordinator run` makes of its settings (crates/claim-coordinator/src/settings.rs, validate:
client-go's timing rules through leaderelection::Config::validate, then processingInterval and maxWait above
zero), and of its flags (--claim-namespace conflicts with --all-claim-namespaces), so that the chart never
renders a Deployment whose pods would exit at start.
*/}}
{{- define "claim-coordinator.validate" -}}
{{- $le := .Values.leaderElection }}
{{- $lease := include "claim-coordinator.millis" $le.leaseDuration | atoi }}
{{- $renew := include "claim-coordinator.millis" $le.renewDeadline | atoi }}
{{- $retry := include "claim-coordinator.millis" $le.retryPeriod | atoi }}
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
{{- range $key := list "processingInterval" "maxWait" }}
{{- if le (include "claim-coordinator.millis" (get $.Values $key) | atoi) 0 }}
{{- fail (printf "%s (%s) must be greater than 0" $key (get $.Values $key)) }}
{{- end }}
{{- end }}
{{- if and .Values.claims.allNamespaces .Values.claims.namespace }}
{{- fail (printf "claims.allNamespaces and claims.namespace (%s) exclude each other (--all-claim-namespaces conflicts with --claim-namespace)" .Values.claims.namespace) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "serviceMonitor.enabled needs service.enabled: the ServiceMonitor scrapes /metrics through the Service" }}
{{- end }}
{{- end }}

{{/* --admin: IPv6 addresses in brackets. */}}
{{- define "claim-coordinator.adminListen" -}}
{{- if contains ":" .Values.admin.bindAddress }}
{{- printf "[%s]:%d" .Values.admin.bindAddress (int .Values.admin.port) }}
{{- else }}
{{- printf "%s:%d" .Values.admin.bindAddress (int .Values.admin.port) }}
{{- end }}
{{- end }}

{{/*
The rules on the PhysicalHosts, for the hosts' namespace. Each verb is a call of the coordinator
(docs/claim-coordinator.md, "Installing"): list (Pool::list, every batch), watch (the binder's watcher: a
batch soon after a change), update (Pool::claim_host and release_host write spec.consumerRef),
physicalhosts/status update (Pool::mark_claimed and release_host write status.state).
*/}}
{{- define "claim-coordinator.hostRules" -}}
- apiGroups: [claims.leaderelection.dev]
  resources: [physicalhosts]
  verbs: [list, {{ if include "claim-coordinator.binder" . }}watch, {{ end }}update]
- apiGroups: [claims.leaderelection.dev]
  resources: [physicalhosts/status]
  verbs: [update]
{{- end }}

{{/*
The rules on the HostClaims and their Events, for the claims' namespace (or every namespace): list, watch (as
the hosts), update (Pool::remove_finalizer lets a deleted claim go), hostclaims/status update (Pool::mark_bound,
mark_pending, record_intent, count_attempt), events create and patch (ClaimEvents: kube-runtime's Recorder
creates an Event, and patches it for a repeat; the binder only).
*/}}
{{- define "claim-coordinator.claimRules" -}}
- apiGroups: [claims.leaderelection.dev]
  resources: [hostclaims]
  verbs: [list, {{ if include "claim-coordinator.binder" . }}watch, {{ end }}update]
- apiGroups: [claims.leaderelection.dev]
  resources: [hostclaims/status]
  verbs: [update]
{{- if include "claim-coordinator.binder" . }}
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
{{- end }}

{{/*
The rules on the Lease, for the release's namespace (none without leader election: the replica then makes no
Lease call). The elector reads (get), renews and releases (update) and watches (list, watch with
fieldSelector=metadata.name=<lease>, authorized as a request on that name) the one Lease; create cannot be
limited by name.
*/}}
{{- define "claim-coordinator.leaseRules" -}}
{{- if .Values.leaderElection.enabled }}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ .Values.leaderElection.leaseName | quote }}]
  verbs: [get, update, list, watch]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
{{- end }}
{{- end }}
