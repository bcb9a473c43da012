#!/usr/bin/env bash
# Chart tests, offline: helm lint --strict, helm template with several value sets, kubernetes-validate --strict
# on every rendered manifest, assertions on the rendered objects and failing value sets, for
# deploy/helm/leader-elect (deploy/helm/check_chart.py, with promtool unit tests of docs/metrics.md's alert
# rules at the chart's scrape interval: deploy/helm/alert-rules.test.yaml) and deploy/helm/claim-coordinator
# (deploy/helm/check_claim_coordinator_chart.py: its Roles exactly the coordinator's calls). Both run; the
# script fails when either does.
#
# Tools: $HELM, $KUBERNETES_VALIDATE and $PROMTOOL when set (.ci/run sets the first two), else helm 4,
# kubernetes-validate and promtool (Debian's package prometheus) from PATH.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

missing() {
    echo "deploy/helm/test.sh: $1 not found: put it on PATH or set $2 to its path" >&2
    exit 1
}

if [ -z "${HELM:-}" ]; then
    # values.schema.json is draft 2020-12, which helm 4 enforces; an older helm on PATH is not used.
    if command -v helm >/dev/null && helm version --short 2>/dev/null | grep -q '^v4\.'; then
        HELM=$(command -v helm)
    else
        missing "helm 4" HELM
    fi
fi
if [ -z "${KUBERNETES_VALIDATE:-}" ]; then
    KUBERNETES_VALIDATE=$(command -v kubernetes-validate) || missing kubernetes-validate KUBERNETES_VALIDATE
fi

if [ -z "${PROMTOOL:-}" ]; then
    PROMTOOL=$(command -v promtool) || missing promtool PROMTOOL
fi

# PyYAML: kubernetes-validate's own interpreter has it (a dependency); else the system python3.
python=
for candidate in "$(dirname "$KUBERNETES_VALIDATE")/python" python3; do
    if "$candidate" -c 'import yaml' 2>/dev/null; then python=$candidate; break; fi
done
if [ -z "$python" ]; then
    echo "deploy/helm/test.sh: no python with PyYAML (pip install pyyaml)" >&2
    exit 1
fi

echo "chart tests: $("$HELM" version --short), $("$KUBERNETES_VALIDATE" --version), $("$PROMTOOL" --version 2>&1 | head -n 1)"
status=0
"$python" "$here/check_chart.py" "$HELM" "$KUBERNETES_VALIDATE" "$PROMTOOL" || status=1
"$python" "$here/check_claim_coordinator_chart.py" "$HELM" "$KUBERNETES_VALIDATE" || status=1
exit "$status"
