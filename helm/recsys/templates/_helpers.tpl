{{/*
Helpers of the recsys chart.

Most helpers take a "context" dict instead of the root object:
  (dict "root" $ "component" "retrieval" "track" "stable")
component is one of gateway|retrieval|ranking, track one of stable|canary.
Helpers that must hand back a structure render YAML or JSON; callers decode it
with fromYaml/fromJson (templates can only return strings).
*/}}

{{/*
recsys.components: the components this release deploys, in dependency order, as a
space-separated string (split with `splitList " "`); root context. One list so every
template loops over the same set. ranking is one only with ranking.separate=true; by
default Ranking runs inside the gateway's process (see recsys.rankingInGateway).
*/}}
{{- define "recsys.components" -}}
{{- if .Values.ranking.separate -}}
retrieval ranking gateway
{{- else -}}
retrieval gateway
{{- end }}
{{- end }}

{{/*
recsys.rankingInGateway: "true" when Ranking runs inside the gateway's process (the default,
ranking.separate=false), else "". Root context. Then the gateway loads the ranking model
(ranking.modelTag; a gateway canary may carry another one, gateway.canary.rankingModelTag) and
no ranking Deployment, Service or InferenceService exists.
*/}}
{{- define "recsys.rankingInGateway" -}}
{{- if not .Values.ranking.separate }}
{{- "true" }}
{{- end }}
{{- end }}

{{/*
recsys.name: chart name (or nameOverride), cut to 63 characters because it is
used as a label value, whose limit is 63.
*/}}
{{- define "recsys.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
recsys.fullname: prefix of every resource name. Cut to 40 characters, not the
usual 63, so that the longest derived name ("<prefix>-retrieval-metrics",
18 more characters) is still a valid DNS label (63 characters).
*/}}
{{- define "recsys.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
recsys.chart: "name-version" for the helm.sh/chart label ("+" is not allowed in
label values, so SemVer build metadata becomes "_").
*/}}
{{- define "recsys.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
recsys.labels: the standard app.kubernetes.io/* labels every object carries
(root context).
*/}}
{{- define "recsys.labels" -}}
helm.sh/chart: {{ include "recsys.chart" . }}
app.kubernetes.io/name: {{ include "recsys.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: recsys
{{- end }}

{{/*
recsys.componentLabels: standard labels plus app.kubernetes.io/component
(context with root and component).
*/}}
{{- define "recsys.componentLabels" -}}
{{ include "recsys.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
recsys.selectorLabels: labels that select every pod of one component, whatever
its track. Used by the component Service, the PDB and the NetworkPolicies.
*/}}
{{- define "recsys.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recsys.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
recsys.trackSelectorLabels: selector of one track (stable|canary) of one
component. Deployment selectors are immutable, so they hold only these keys,
never a version.
*/}}
{{- define "recsys.trackSelectorLabels" -}}
{{ include "recsys.selectorLabels" . }}
track: {{ .track }}
{{- end }}

{{/*
recsys.componentName: "<fullname>-<component>", name of the component's
Service, ServiceAccount, HPA, PDB and stable Deployment.
*/}}
{{- define "recsys.componentName" -}}
{{- printf "%s-%s" (include "recsys.fullname" .root) .component }}
{{- end }}

{{/*
recsys.workloadName: the Deployment (or track Service) name of one track:
"<fullname>-<component>" for stable, "<fullname>-<component>-canary" for canary.
*/}}
{{- define "recsys.workloadName" -}}
{{- if eq .track "canary" }}
{{- printf "%s-canary" (include "recsys.componentName" .) }}
{{- else }}
{{- include "recsys.componentName" . }}
{{- end }}
{{- end }}

{{/*
recsys.serviceAccountName: the component's ServiceAccount, or "default" when
serviceAccount.create is false.
*/}}
{{- define "recsys.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create }}
{{- include "recsys.componentName" . }}
{{- else }}
{{- "default" }}
{{- end }}
{{- end }}

{{/*
recsys.stageTokenSecretName: the Secret holding the stage token (root context):
stageAuth.existingSecret, or the one the chart makes, "<fullname>-stage-token".
*/}}
{{- define "recsys.stageTokenSecretName" -}}
{{- .Values.stageAuth.existingSecret | default (printf "%s-stage-token" (include "recsys.fullname" .)) }}
{{- end }}

{{/*
recsys.trackSpec: what one track of one component runs, as YAML
{repository, tag, ref, version, modelTag}. The gateway's modelTag is the ranking
model it runs in process (ranking.modelTag, on the canary
gateway.canary.rankingModelTag), empty when ranking is separate. Inheritance: canary -> component ->
top-level image (tag defaulting to appVersion). The top-level digest pins only
stable pods of components without an image override. `version` is the tag
made into a valid label value (<=63 chars, alphanumeric at both ends).
*/}}
{{- define "recsys.trackSpec" -}}
{{- $v := .root.Values }}
{{- $c := index $v .component }}
{{- $repo := default $v.image.repository $c.image.repository }}
{{- $tag := default (default .root.Chart.AppVersion $v.image.tag) $c.image.tag }}
{{- $modelTag := $c.modelTag | default "" }}
{{- $canaryModelTag := $c.canary.modelTag | default "" }}
{{- if eq .component "gateway" }}
{{- /* The gateway's model is the in-process ranker's (none when ranking is separate). */}}
{{- $modelTag = "" }}
{{- $canaryModelTag = "" }}
{{- if include "recsys.rankingInGateway" .root }}
{{- $modelTag = $v.ranking.modelTag | default "" }}
{{- $canaryModelTag = $c.canary.rankingModelTag | default "" }}
{{- end }}
{{- end }}
{{- $digest := "" }}
{{- if and $v.image.digest (not $c.image.repository) (not $c.image.tag) }}
{{- $digest = $v.image.digest }}
{{- end }}
{{- if eq .track "canary" }}
{{- $repo = default $repo $c.canary.image.repository }}
{{- $tag = default $tag $c.canary.image.tag }}
{{- $modelTag = default $modelTag $canaryModelTag }}
{{- $digest = "" }}
{{- end }}
{{- $ref := printf "%s:%s" $repo $tag }}
{{- if $digest }}
{{- $ref = printf "%s@%s" $ref $digest }}
{{- end }}
{{- $version := regexReplaceAll "[^A-Za-z0-9._-]" (toString $tag) "_" | trunc 63 }}
{{- $version = regexReplaceAll "^[^A-Za-z0-9]+|[^A-Za-z0-9]+$" $version "" }}
repository: {{ $repo | quote }}
tag: {{ $tag | quote }}
ref: {{ $ref | quote }}
version: {{ $version | quote }}
modelTag: {{ $modelTag | quote }}
{{- end }}

{{/*
recsys.stableReplicas: replicas of the stable track used for sizing the canary:
autoscaling.minReplicas when the HPA is on, else replicaCount.
*/}}
{{- define "recsys.stableReplicas" -}}
{{- $c := index .root.Values .component }}
{{- if $c.autoscaling.enabled }}
{{- $c.autoscaling.minReplicas }}
{{- else }}
{{- $c.replicaCount }}
{{- end }}
{{- end }}

{{/*
recsys.routeWeighted: "true" when the component's canary share is set exactly
by an HTTPRoute (Gateway API north-south for the gateway, GAMMA mesh routes for
retrieval/ranking with gatewayAPI.meshRouting), else "". Then the component has
per-track Services and its main Service selects only stable pods.
*/}}
{{- define "recsys.routeWeighted" -}}
{{- $v := .root.Values }}
{{- if and (eq $v.platform "kubernetes") $v.gatewayAPI.enabled (or (eq .component "gateway") $v.gatewayAPI.meshRouting) }}
{{- "true" }}
{{- end }}
{{- end }}

{{/*
recsys.canaryReplicas: replicas of the canary Deployment (0 when the canary is off).
  Route-weighted: enough pods for the share, ceil(N * W / 100), at least 1.
  Replica ratio (one Service over both tracks): the share is c / (N + c), so
  c = round(N * W / (100 - W)); at least 1 when W > 0, and 0 when W = 0.
  N is the stable replica count (see recsys.stableReplicas). Integer maths only.
*/}}
{{- define "recsys.canaryReplicas" -}}
{{- $c := index .root.Values .component }}
{{- if not $c.canary.enabled }}
{{- 0 }}
{{- else }}
{{- $n := int (include "recsys.stableReplicas" .) }}
{{- $w := int $c.canary.weight }}
{{- if include "recsys.routeWeighted" . }}
{{- max 1 (div (add (mul $n $w) 99) 100) }}
{{- else if eq $w 0 }}
{{- 0 }}
{{- else }}
{{- $rest := sub 100 $w }}
{{- max 1 (div (add (mul $n $w) (div $rest 2)) $rest) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
recsys.workers: BentoML workers of the component. Explicit `workers` wins;
otherwise one per whole core of resources.requests.cpu ("1500m" -> 1, "2" -> 2),
at least 1. BentoML's default ("cpu_count") reads the node's cores, not the
container's quota, and would start too many processes.
*/}}
{{- define "recsys.workers" -}}
{{- $c := index .root.Values .component }}
{{- if $c.workers }}
{{- $c.workers }}
{{- else }}
{{- $cpu := toString $c.resources.requests.cpu }}
{{- $cores := 1 }}
{{- if hasSuffix "m" $cpu }}
{{- $cores = div (atoi (trimSuffix "m" $cpu)) 1000 }}
{{- else }}
{{- $cores = int (floor (float64 $cpu)) }}
{{- end }}
{{- max 1 $cores }}
{{- end }}
{{- end }}

{{/*
recsys.slo: the project's SLO file (files/slo.yaml, a byte copy of the
repository's slo.yaml kept in sync by scripts/render-manifests.sh) as YAML text;
decode with fromYaml. Helm cannot read files outside the chart, hence the copy.
*/}}
{{- define "recsys.slo" -}}
{{- $raw := .Files.Get "files/slo.yaml" }}
{{- if not $raw }}
{{- fail "files/slo.yaml is missing: run scripts/render-manifests.sh to copy the project's slo.yaml into the chart" }}
{{- end }}
{{- $raw }}
{{- end }}

{{/*
recsys.seconds: milliseconds (number) to seconds, formatted the way Python's
prometheus_client writes a bucket's `le` label (0.025 -> "0.025", 1000 -> "1.0"),
so rules can match a bucket by its exact label value.
*/}}
{{- define "recsys.seconds" -}}
{{- $s := divf . 1000 }}
{{- if eq (floor $s) $s }}
{{- printf "%.1f" $s }}
{{- else }}
{{- printf "%v" $s }}
{{- end }}
{{- end }}

{{/*
recsys.number: a float printed with 6 significant digits (%g), so computed
thresholds read 0.0144 rather than 0.014400000000000001.
*/}}
{{- define "recsys.number" -}}
{{- printf "%.6g" (float64 .) }}
{{- end }}

{{/*
recsys.durationBuckets: JSON list of histogram bounds (seconds): metrics.durationBuckets
plus every p95/p99 threshold of the SLO file, sorted and de-duplicated.
prometheus_client refuses unsorted buckets and Sprig has no numeric sort, so the
numbers are zero-padded to equal width, sorted as strings and parsed back.
Every bound is written with a decimal point ("1.0", not "1"): BentoML's config
schema accepts only floats in metrics.duration.buckets and refuses to start otherwise.
*/}}
{{- define "recsys.durationBuckets" -}}
{{- $slo := include "recsys.slo" . | fromYaml }}
{{- $keys := list }}
{{- range .Values.metrics.durationBuckets }}
{{- $keys = append $keys (printf "%020.9f" (float64 .)) }}
{{- end }}
{{- range $name, $ep := $slo.endpoints }}
{{- $keys = append $keys (printf "%020.9f" (divf $ep.p95_ms 1000)) }}
{{- $keys = append $keys (printf "%020.9f" (divf $ep.p99_ms 1000)) }}
{{- end }}
{{- $bounds := list }}
{{- range (sortAlpha (uniq $keys)) }}
{{- $text := printf "%v" (float64 .) }}
{{- if not (regexMatch "[.eE]" $text) }}
{{- $text = printf "%s.0" $text }}
{{- end }}
{{- $bounds = append $bounds $text }}
{{- end }}
{{- printf "[%s]" (join "," $bounds) }}
{{- end }}

{{/*
recsys.bentomlConfig: BENTOML_CONFIG_OVERRIDES for one component, a JSON object
deep-merged by BentoML over the service's own config: the worker count and the
latency histogram buckets of the served service. Written by hand rather than
with toJson, which would print whole-number floats as integers (see above).
*/}}
{{- define "recsys.bentomlConfig" -}}
{{- $c := index .root.Values .component }}
{{- printf "{\"services\":{%s:{\"workers\":%d,\"metrics\":{\"duration\":{\"buckets\":%s}}}}}" (toJson $c.serviceName) (int (include "recsys.workers" .)) (include "recsys.durationBuckets" .root) }}
{{- end }}

{{/*
recsys.componentURL: base URL the gateway uses to reach a dependency.
kubernetes: the component Service on the BentoML port; kserve: the predictor's
cluster-local Knative address (port 80).
*/}}
{{- define "recsys.componentURL" -}}
{{- $v := .root.Values }}
{{- if eq $v.platform "kserve" }}
{{- printf "http://%s-predictor.%s.svc.%s" (include "recsys.componentName" .) .root.Release.Namespace $v.kserve.clusterDomain }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "recsys.componentName" .) .root.Release.Namespace (int $v.port) }}
{{- end }}
{{- end }}

{{/*
recsys.dependsValue: BENTOML_SERVE_DEPENDS of the gateway: the remote stages only
(the deployed components other than the gateway). A stage left out runs inside the
gateway's process, so by default this is "Retrieval=http://..." alone, and with
ranking.separate "Retrieval=http://... Ranking=http://..." (bentoml's repeatable
`--depends` option; its environment form is whitespace-separated).
*/}}
{{- define "recsys.dependsValue" -}}
{{- $root := .root }}
{{- $deps := list }}
{{- range $dep := without (splitList " " (include "recsys.components" $root)) "gateway" }}
{{- $ctx := dict "root" $root "component" $dep }}
{{- $deps = append $deps (printf "%s=%s" (index $root.Values $dep).serviceName (include "recsys.componentURL" $ctx)) }}
{{- end }}
{{- join " " $deps }}
{{- end }}

{{/*
recsys.env: the container's environment for one track of one component.
*/}}
{{- define "recsys.env" -}}
{{- $v := .root.Values }}
{{- $c := index $v .component }}
{{- $spec := include "recsys.trackSpec" . | fromYaml -}}
- name: BENTOML_SERVE_SERVICE_NAME
  value: {{ $c.serviceName | quote }}
{{- if eq .component "gateway" }}
- name: BENTOML_SERVE_DEPENDS
  value: {{ include "recsys.dependsValue" . | quote }}
{{- end }}
- name: BENTOML_CONFIG_OVERRIDES
  value: {{ include "recsys.bentomlConfig" . | quote }}
# Same worker count for the service's own settings (BENTOML_CONFIG_OVERRIDES is what BentoML obeys).
- name: RECSYS_WORKERS
  value: {{ include "recsys.workers" . | quote }}
# Root FS is read-only: BentoML's home (stores, Prometheus multiprocess dir) goes to the /tmp emptyDir.
- name: BENTOML_HOME
  value: /tmp/bentoml
- name: BENTOML_DO_NOT_TRACK
  value: "true"
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: RECSYS_TRACK
  value: {{ .track | quote }}
# Stage token: the gateway sends it to the remote stages, which require it (docs/security.md).
# A missing Secret keeps the pod from starting rather than running it unprotected.
- name: RECSYS_STAGE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "recsys.stageTokenSecretName" .root | quote }}
      key: {{ $v.stageAuth.secretKey | quote }}
- name: RECSYS_STAGE_TOKEN_PREVIOUS
  valueFrom:
    secretKeyRef:
      name: {{ include "recsys.stageTokenSecretName" .root | quote }}
      key: {{ $v.stageAuth.previousSecretKey | quote }}
      optional: true
{{- if $spec.modelTag }}
# The model this pod loads (the gateway's: the ranker it runs in process).
- name: {{ printf "RECSYS_%s_MODEL_TAG" (upper (ternary "ranking" .component (eq .component "gateway"))) }}
  value: {{ $spec.modelTag | quote }}
{{- end }}
{{- if and (eq .component "gateway") $v.retrieval.modelTag }}
# The gateway's fallback list ships with the retrieval model: the same version retrieval serves.
- name: RECSYS_RETRIEVAL_MODEL_TAG
  value: {{ $v.retrieval.modelTag | quote }}
{{- end }}
{{- if include "recsys.importTags" . }}
# Models the init container imported from modelStore; searched before the image's own.
- name: RECSYS_MODEL_DIR
  value: /models
{{- end }}
{{- with $v.settings }}
{{- if not (kindIs "invalid" .numCandidates) }}
- name: RECSYS_NUM_CANDIDATES
  value: {{ .numCandidates | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .retrievalTimeoutS) }}
- name: RECSYS_RETRIEVAL_TIMEOUT_S
  value: {{ .retrievalTimeoutS | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .rankingTimeoutS) }}
- name: RECSYS_RANKING_TIMEOUT_S
  value: {{ .rankingTimeoutS | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .categoryCap) }}
- name: RECSYS_CATEGORY_CAP
  value: {{ .categoryCap | toString | quote }}
{{- end }}
{{- end }}
{{- if eq .track "canary" }}
{{- with $c.canary.faults }}
{{- if .latencyMs }}
- name: RECSYS_FAULT_LATENCY_MS
  value: {{ .latencyMs | toString | quote }}
{{- end }}
{{- if .errorRate }}
- name: RECSYS_FAULT_ERROR_RATE
  value: {{ .errorRate | toString | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.otel.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $v.otel.protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "recsys-%s" .component | quote }}
{{- $attrs := list (printf "service.version=%s" $spec.tag) (printf "deployment.environment.name=%s" $v.environment) (printf "recsys.track=%s" .track) }}
{{- range $key, $value := $v.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $key $value) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
- name: RECSYS_TRACE_SAMPLE_RATE
  value: {{ $v.otel.sampleRate | toString | quote }}
{{- with $v.otel.userHashKeySecret }}
{{- if .name }}
- name: RECSYS_TRACE_HASH_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name | quote }}
      key: {{ .key | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with $c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
recsys.containerSecurityContext: hardened container settings: non-root, no
privilege escalation, read-only root filesystem, every capability dropped,
the runtime's default seccomp profile.
*/}}
{{- define "recsys.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
recsys.podSecurityContext: pod-level counterpart of the container settings.
*/}}
{{- define "recsys.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
recsys.httpProbe: one HTTP probe from a probes.<kind> block; .path, .port and an
optional .initialDelaySeconds are added by the caller.
*/}}
{{- define "recsys.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{- with .initialDelaySeconds }}
initialDelaySeconds: {{ . }}
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
{{- end }}

{{/*
recsys.container: the BentoML server container of one track. With
.kserve set it follows KServe/Knative's rules: the name `kserve-container`,
one port named http1, no startupProbe and no lifecycle hook (Knative's
queue-proxy drains requests itself).

The Bento image's entrypoint turns "start-http-server ARGS" into
`python -m bentoml_cli._internal.start start-http-server ARGS $BENTO_PATH`
(BENTO_PATH=/home/bentoml/bento); the service to serve and its remote
dependencies come from BENTOML_SERVE_SERVICE_NAME / BENTOML_SERVE_DEPENDS.
*/}}
{{- define "recsys.container" -}}
{{- $v := .root.Values }}
{{- $c := index $v .component }}
{{- $spec := include "recsys.trackSpec" . | fromYaml }}
{{- $portName := ternary "http1" "http" (default false .kserve) -}}
- name: {{ ternary "kserve-container" "bento" (default false .kserve) }}
  image: {{ $spec.ref | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - start-http-server
    - --port
    - {{ $v.port | quote }}
    - --timeout-graceful-shutdown
    - {{ $v.rollout.gracefulShutdownSeconds | quote }}
  env:
    {{- include "recsys.env" . | nindent 4 }}
  ports:
    - name: {{ $portName }}
      containerPort: {{ $v.port }}
      protocol: TCP
  {{- if not .kserve }}
  startupProbe:
    {{- include "recsys.httpProbe" (dict "path" "/livez" "port" $portName "probe" $c.probes.startup) | nindent 4 }}
  {{- end }}
  readinessProbe:
    {{- include "recsys.httpProbe" (dict "path" "/readyz" "port" (ternary (int $v.port) $portName (default false .kserve)) "probe" $c.probes.readiness) | nindent 4 }}
  livenessProbe:
    {{- $liveness := dict "path" "/livez" "port" (ternary (int $v.port) $portName (default false .kserve)) "probe" $c.probes.liveness }}
    {{- if .kserve }}
    {{- /* No startupProbe under Knative: hold liveness off for the whole startup budget instead. */}}
    {{- $_ := set $liveness "initialDelaySeconds" (mul $c.probes.startup.periodSeconds $c.probes.startup.failureThreshold) }}
    {{- end }}
    {{- include "recsys.httpProbe" $liveness | nindent 4 }}
  resources:
    {{- toYaml $c.resources | nindent 4 }}
  securityContext:
    {{- include "recsys.containerSecurityContext" .root | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if include "recsys.importTags" . }}
    - name: models
      mountPath: /models
      readOnly: true
    {{- end }}
  {{- if not .kserve }}
  lifecycle:
    preStop:
      exec:
        # Keep serving while endpoints and load balancers drop this pod; then SIGTERM starts
        # BentoML's graceful shutdown.
        command: ["sleep", {{ $v.rollout.preStopSleepSeconds | quote }}]
  {{- end }}
{{- end }}

{{/*
recsys.importTags: the model tags a pod of one track imports from modelStore at start,
space-separated (empty when modelStore.url is unset or the pod's tags are the image's):
retrieval its model, ranking its model, the gateway its in-process ranker and the retrieval
model its fallback list ships with. `latest` is the image's own and is not imported.
*/}}
{{- define "recsys.importTags" -}}
{{- $v := .root.Values }}
{{- if $v.modelStore.url }}
{{- $spec := include "recsys.trackSpec" . | fromYaml }}
{{- $own := ternary "recsys-retrieval" "recsys-ranking" (eq .component "retrieval") }}
{{- $wanted := list (list $own $spec.modelTag) }}
{{- if eq .component "gateway" }}
{{- $wanted = append $wanted (list "recsys-retrieval" $v.retrieval.modelTag) }}
{{- end }}
{{- $tags := list }}
{{- range $wanted }}
{{- $tag := index . 1 | default "" }}
{{- if and $tag (not (contains ":" $tag)) }}
{{- $tag = printf "%s:%s" (index . 0) $tag }}
{{- end }}
{{- if and $tag (not (hasSuffix ":latest" $tag)) (ne $tag "latest") }}
{{- $tags = append $tags $tag }}
{{- end }}
{{- end }}
{{- join " " ($tags | uniq) }}
{{- end }}
{{- end }}

{{/*
recsys.modelImport: the init container importing recsys.importTags from modelStore into the
pod's `models` emptyDir (`recsys models import`: archives are checked against their manifests,
nothing is unpickled). Same image, user and hardening as the serving container.
*/}}
{{- define "recsys.modelImport" -}}
{{- $v := .root.Values }}
{{- $spec := include "recsys.trackSpec" . | fromYaml -}}
- name: import-models
  image: {{ $spec.ref | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  # The Bento's source directory, where the `recsys` package is.
  workingDir: /home/bentoml/bento/src
  command: ["python", "-m", "recsys", "models", "import"]
  args:
    {{- range splitList " " (include "recsys.importTags" .) }}
    - {{ . | quote }}
    {{- end }}
    - --from
    - {{ $v.modelStore.url | quote }}
    - --into
    - /models
  env:
    - name: BENTOML_HOME
      value: /tmp/bentoml
    - name: HOME
      value: /tmp
    - name: BENTOML_DO_NOT_TRACK
      value: "true"
    - name: PYTHONDONTWRITEBYTECODE
      value: "1"
    {{- with $v.modelStore.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  resources:
    requests:
      cpu: 100m
      memory: 256Mi
    limits:
      cpu: "1"
      memory: 1Gi
  securityContext:
    {{- include "recsys.containerSecurityContext" .root | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: models
      mountPath: /models
    {{- if $v.modelStore.claimName }}
    - name: model-store
      mountPath: {{ $v.modelStore.mountPath }}
      readOnly: true
    {{- end }}
{{- end }}

{{/*
recsys.modelVolumes: the volumes recsys.modelImport needs (nothing without import tags).
*/}}
{{- define "recsys.modelVolumes" -}}
{{- $v := .root.Values }}
{{- if include "recsys.importTags" . -}}
- name: models
  emptyDir:
    sizeLimit: {{ $v.modelStore.sizeLimit }}
{{- with $v.modelStore.claimName }}
- name: model-store
  persistentVolumeClaim:
    claimName: {{ . }}
    readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/*
recsys.podAnnotations: pod annotations of one track: the model tag (not a
valid label value, hence an annotation) and the user's extras.
*/}}
{{- define "recsys.podAnnotations" -}}
{{- $c := index .root.Values .component }}
{{- $spec := include "recsys.trackSpec" . | fromYaml }}
{{- if $spec.modelTag }}
recsys.io/model-tag: {{ $spec.modelTag | quote }}
{{- end }}
{{- with $c.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
recsys.podLabels: labels of one track's pods: selector labels with `track`,
the image tag as app.kubernetes.io/version (Prometheus copies both onto every
series, so metrics split stable vs canary and by version), user extras.
*/}}
{{- define "recsys.podLabels" -}}
{{- $c := index .root.Values .component }}
{{- $spec := include "recsys.trackSpec" . | fromYaml }}
{{- include "recsys.trackSelectorLabels" . }}
app.kubernetes.io/version: {{ $spec.version | quote }}
app.kubernetes.io/part-of: recsys
{{- with $c.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
recsys.topologySpread: the component's topologySpreadConstraints, with a
labelSelector for this track filled in where the user left it out.
*/}}
{{- define "recsys.topologySpread" -}}
{{- $c := index .root.Values .component }}
{{- $selector := dict "matchLabels" (include "recsys.trackSelectorLabels" . | fromYaml) }}
{{- $out := list }}
{{- range $c.topologySpreadConstraints }}
{{- $out = append $out (merge (deepCopy .) (dict "labelSelector" $selector)) }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
recsys.validate: cross-field checks the JSON schema cannot express; each fails
with a message naming the values to change.
*/}}
{{- define "recsys.validate" -}}
{{- $v := .Values }}
{{- $root := . }}
{{- range $name := splitList " " (include "recsys.components" .) }}
{{- $c := index $v $name }}
{{- $ctx := dict "root" $root "component" $name }}
{{- if gt (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas) }}
{{- fail (printf "%s.autoscaling.minReplicas (%v) is above %s.autoscaling.maxReplicas (%v)" $name $c.autoscaling.minReplicas $name $c.autoscaling.maxReplicas) }}
{{- end }}
{{- if and $c.canary.enabled (eq $v.platform "kubernetes") (not (include "recsys.routeWeighted" $ctx)) (eq (int $c.canary.weight) 100) }}
{{- fail (printf "%s.canary.weight=100 cannot be approximated by replicas (the stable Deployment keeps its pods): promote instead (set %s.image.tag to the canary's and %s.canary.enabled=false), or use gatewayAPI for exact weights" $name $name $name) }}
{{- end }}
{{- end }}
{{- if and $v.ranking.canary.enabled (not $v.ranking.separate) }}
{{- fail "ranking.canary.enabled needs ranking.separate=true: by default Ranking runs inside the gateway, so a ranking-model canary is a gateway canary (gateway.canary.enabled=true, gateway.canary.rankingModelTag=<model tag>)" }}
{{- end }}
{{- if and $v.gateway.canary.rankingModelTag $v.ranking.separate }}
{{- fail "gateway.canary.rankingModelTag applies only when Ranking runs inside the gateway (ranking.separate=false): with ranking.separate=true the ranking canary is ranking.canary.modelTag" }}
{{- end }}
{{- if eq $v.platform "kserve" }}
{{- if or $v.ingress.enabled $v.gatewayAPI.enabled }}
{{- fail "ingress and gatewayAPI apply to platform=kubernetes only: with platform=kserve, KServe exposes the gateway InferenceService" }}
{{- end }}
{{- if $v.serviceMonitor.enabled }}
{{- fail "serviceMonitor applies to platform=kubernetes only: with platform=kserve, pods are scraped through their prometheus.io/* annotations" }}
{{- end }}
{{- end }}
{{- if and $v.gatewayAPI.enabled (not $v.gatewayAPI.parentRefs) }}
{{- fail "gatewayAPI.enabled needs gatewayAPI.parentRefs: the Gateway(s) the HTTPRoute attaches to" }}
{{- end }}
{{- end }}
