#!/usr/bin/env bash
# Deploy one Cloud Run service per active partner, or only the partner named:
#
#   POSTBACK_IMAGE=asia-southeast1-docker.pkg.dev/PROJECT/postback/postback:TAG ./deploy_multi_partner.sh [partner_code]
#   DRY_RUN=1 ./deploy_multi_partner.sh          # print the gcloud commands, deploy nothing
#
# Each manifest comes from `manage.py cloudrun_manifest <code>` (the Partner row), so this
# needs DATABASE_URL pointing at the configuration database. Secrets are Secret Manager
# references in the manifest; create them once (postback-database-url, ...).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
: "${POSTBACK_IMAGE:?set POSTBACK_IMAGE to the image every partner service runs}"
export POSTBACK_IMAGE
MANIFEST_DIR="${MANIFEST_DIR:-$(mktemp -d -t postback-manifests.XXXXXX)}"
mkdir -p "$MANIFEST_DIR"

# "code service region project", one line per partner to deploy.
partners="$("$PYTHON" manage.py cloudrun_manifest --list ${1:+"$1"})"
if [[ -z "$partners" ]]; then
    echo "No active partner to deploy." >&2
    exit 1
fi

deployed=0
while read -r code service region project; do
    manifest="$MANIFEST_DIR/$code.yaml"
    "$PYTHON" manage.py cloudrun_manifest "$code" > "$manifest"
    command=(gcloud run services replace "$manifest" --region "$region" --project "$project" --quiet)
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        echo "${command[*]}"
    else
        echo "Deploying $code as $service in $project/$region" >&2
        "${command[@]}"
    fi
    deployed=$((deployed + 1))
done <<< "$partners"

if [[ "${DRY_RUN:-0}" == "1" ]]; then
    echo "DRY_RUN: $deployed service(s) not deployed; manifests in $MANIFEST_DIR" >&2
else
    echo "Deployed $deployed service(s)." >&2
fi
