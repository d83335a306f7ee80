#!/usr/bin/env bash
# Initialise the databases, then deploy one Cloud Run service per active partner (or only
# the partner named):
#
#   POSTBACK_IMAGE=asia-southeast1-docker.pkg.dev/PROJECT/postback/postback:TAG ./deploy_multi_partner.sh [partner_code]
#   DRY_RUN=1 ./deploy_multi_partner.sh          # print the gcloud commands, deploy nothing
#
# A dry run needs neither POSTBACK_IMAGE nor GOOGLE_CLOUD_PROJECT: placeholders stand in
# for what is missing, and it says so on stderr (docs/operations.md, "Deploy").
#
# First the Cloud Run job `postback-init` (POSTBACK_INIT_JOB) runs `python manage.py
# init_partners` from the same image, with the services' environment, and must succeed:
# it creates and migrates the configuration database and every active partner's
# database, so no service starts on a schema it does not know. It runs in
# POSTBACK_INIT_PROJECT (default GOOGLE_CLOUD_PROJECT) and POSTBACK_INIT_REGION (default
# asia-southeast1), where the databases and the secrets must be reachable.
#
# Then each manifest comes from `manage.py cloudrun_manifest <code>` (the Partner row), so
# this needs DATABASE_URL pointing at the configuration database. Secrets are Secret
# Manager references in the manifests; create them once (postback-database-url, ...).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
dry_run=0
[[ "${DRY_RUN:-0}" == "1" ]] && dry_run=1
if (( dry_run )); then
    # Placeholders, so a dry run shows every command on a machine that is not set up to deploy.
    if [[ -z "${POSTBACK_IMAGE:-}" ]]; then
        POSTBACK_IMAGE="example.invalid/postback:dry-run"
        echo "DRY_RUN: POSTBACK_IMAGE is not set; the placeholder image $POSTBACK_IMAGE stands in" >&2
    fi
    if [[ -z "${GOOGLE_CLOUD_PROJECT:-}" ]]; then
        export GOOGLE_CLOUD_PROJECT="dry-run-project"
        echo "DRY_RUN: GOOGLE_CLOUD_PROJECT is not set; the placeholder project $GOOGLE_CLOUD_PROJECT stands in" >&2
    fi
fi
: "${POSTBACK_IMAGE:?set POSTBACK_IMAGE to the image every partner service runs}"
export POSTBACK_IMAGE
MANIFEST_DIR="${MANIFEST_DIR:-$(mktemp -d -t postback-manifests.XXXXXX)}"
mkdir -p "$MANIFEST_DIR"

run() {
    if (( dry_run )); then echo "$*"; else "$@"; fi
}

init_job="${POSTBACK_INIT_JOB:-postback-init}"
init_project="${POSTBACK_INIT_PROJECT:-${GOOGLE_CLOUD_PROJECT:-}}"
init_region="${POSTBACK_INIT_REGION:-asia-southeast1}"
init_manifest="$MANIFEST_DIR/$init_job.yaml"
"$PYTHON" manage.py cloudrun_manifest --init-job --job-name "$init_job" \
    --project "$init_project" --region "$init_region" > "$init_manifest"
(( dry_run )) || echo "Initialising the databases: job $init_job in $init_project/$init_region" >&2
run gcloud run jobs replace "$init_manifest" --region "$init_region" --project "$init_project" --quiet
run gcloud run jobs execute "$init_job" --region "$init_region" --project "$init_project" --wait --quiet

# "code service region project", one line per partner to deploy (read after the init job:
# on a fresh install it is what creates the partners).
# Status 3: the configuration database cannot be read yet (a fresh install before its init job).
status=0
partners="$("$PYTHON" manage.py cloudrun_manifest --list ${1:+"$1"})" || status=$?
if (( status == 3 && dry_run )); then
    echo "DRY_RUN: the partners cannot be listed before the init job has run; a real run lists them after it" >&2
    exit 0
elif (( status )); then
    exit "$status"
fi
if [[ -z "$partners" ]]; then
    echo "No active partner to deploy." >&2
    exit 1
fi

deployed=0
while read -r code service region project; do
    manifest="$MANIFEST_DIR/$code.yaml"
    "$PYTHON" manage.py cloudrun_manifest "$code" > "$manifest"
    (( dry_run )) || echo "Deploying $code as $service in $project/$region" >&2
    run gcloud run services replace "$manifest" --region "$region" --project "$project" --quiet
    deployed=$((deployed + 1))
done <<< "$partners"

# The delivery worker (deliver_postbacks) sends every partner's postbacks to publishers;
# POSTBACK_WORKER_INSTANCES scales it (claims are leased: any number is safe).
worker_manifest="$MANIFEST_DIR/postback-delivery-worker.yaml"
"$PYTHON" manage.py cloudrun_manifest --worker --project "$init_project" --region "$init_region" \
    --worker-instances "${POSTBACK_WORKER_INSTANCES:-1}" > "$worker_manifest"
(( dry_run )) || echo "Deploying the delivery worker in $init_project/$init_region" >&2
run gcloud run services replace "$worker_manifest" --region "$init_region" --project "$init_project" --quiet

if (( dry_run )); then
    echo "DRY_RUN: init job, $deployed service(s) and the delivery worker not deployed; manifests in $MANIFEST_DIR" >&2
else
    echo "Initialised the databases and deployed $deployed service(s) and the delivery worker." >&2
fi
