"""One Cloud Run service per partner: the manifests (service and init job) and the deploy script's dry run."""

import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import psycopg
import pytest
import yaml
from django.conf import settings
from django.core.management import CommandError, call_command
from psycopg import sql

from partners.services import partner_create
from tests.conftest import POSTGRES_SERVER

PROJECT_DIR = Path(__file__).resolve().parents[2]
IMAGE = "asia-southeast1-docker.pkg.dev/acme/postback/postback:1.0.0"


@pytest.fixture
def partners(live_db):
    involve = partner_create(
        partner_code="involve_asia",
        partner_name="InvolveAsia",
        endpoint_path="/involve/event",
        database_name="involve_asia_db",
        cloud_run_service_name="postback-involve",
        cloud_run_region="asia-southeast1",
        cloud_run_project_id="acme-prod",
        database_url="postgres://app:never-inline@db/involve",
    )
    rector = partner_create(
        partner_code="rector",
        partner_name="Rector",
        endpoint_path="/rector/event",
        database_name="rector_db",
        cloud_run_region="europe-west1",
        cloud_run_project_id="acme-eu",
    )
    partner_create(
        partner_code="paused",
        partner_name="Paused",
        endpoint_path="/paused/event",
        database_name="paused_db",
        is_active=False,
        cloud_run_project_id="acme-prod",
    )
    return involve, rector


def manifest(*args: str) -> dict:
    out = StringIO()
    call_command("cloudrun_manifest", *args, stdout=out)
    return yaml.safe_load(out.getvalue())


def env_of(service: dict) -> dict:
    container = service["spec"]["template"]["spec"]["containers"][0]
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container["env"]}


def test_manifest_is_a_knative_service_built_from_the_partner_row(partners):
    service = manifest("involve_asia", "--image", IMAGE)
    assert service["apiVersion"] == "serving.knative.dev/v1"
    assert service["kind"] == "Service"
    assert service["metadata"]["name"] == "postback-involve"
    assert service["metadata"]["namespace"] == "acme-prod"
    assert service["metadata"]["labels"]["cloud.googleapis.com/location"] == "asia-southeast1"
    container = service["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert container["ports"] == [{"name": "http1", "containerPort": 8080}]
    env = env_of(service)
    assert env["POSTBACK_PARTNERS"] == "involve_asia"
    assert env["GOOGLE_CLOUD_PROJECT"] == "acme-prod"
    assert env["LOG_FORMAT"] == "json"
    for name, secret in (
        ("DATABASE_URL", "postback-database-url"),
        ("PARTNER_DATABASE_URL", "postback-partner-database-url"),
        ("SECRET_KEY", "postback-secret-key"),
    ):
        assert env[name] == {"secretKeyRef": {"name": secret, "key": "latest"}}


def test_manifest_never_inlines_credentials(partners, monkeypatch):
    monkeypatch.setattr(settings, "SECRET_KEY", "the-real-secret-key-value")
    out = StringIO()
    call_command("cloudrun_manifest", "involve_asia", "--image", IMAGE, stdout=out)
    text = out.getvalue()
    assert "never-inline" not in text
    assert "the-real-secret-key-value" not in text
    assert settings.DATABASES["default"]["NAME"] not in text


def test_default_service_name_and_image_from_env(partners, monkeypatch):
    monkeypatch.setenv("POSTBACK_IMAGE", "example/postback:env")
    service = manifest("rector")
    assert service["metadata"]["name"] == "postback-rector"
    assert service["metadata"]["labels"]["cloud.googleapis.com/location"] == "europe-west1"
    assert service["spec"]["template"]["spec"]["containers"][0]["image"] == "example/postback:env"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nobody", "--image", IMAGE), "No partner 'nobody' (known: involve_asia, paused, rector)"),
        (("paused", "--image", IMAGE), "Partner 'paused' is inactive"),
        (("rector",), "No image: pass --image or set POSTBACK_IMAGE"),
    ],
)
def test_manifest_errors_say_what_to_fix(partners, monkeypatch, args, message):
    monkeypatch.delenv("POSTBACK_IMAGE", raising=False)
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("cloudrun_manifest", *args, stdout=StringIO())


def test_partner_without_project_needs_one(live_db, settings):
    settings.GOOGLE_CLOUD_PROJECT = ""
    partner_create(partner_code="noproj", partner_name="N", endpoint_path="/n/e", database_name="n_db")
    with pytest.raises(CommandError, match="has no cloud_run_project_id"):
        call_command("cloudrun_manifest", "noproj", "--image", IMAGE, stdout=StringIO())
    assert manifest("noproj", "--image", IMAGE, "--project", "fallback")["metadata"]["namespace"] == "fallback"


def run_script(*args: str, tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess:
    db = settings.DATABASES["default"]
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        POSTBACK_IMAGE=IMAGE,
        DRY_RUN="1",
        MANIFEST_DIR=str(tmp_path),
        SECRET_KEY="deploy-test-" + "k" * 40,
        GOOGLE_CLOUD_PROJECT="acme-prod",
    )
    env.update(overrides)
    return subprocess.run(
        ["bash", "deploy_multi_partner.sh", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def init_job_lines(tmp_path: Path, project: str = "acme-prod", region: str = "asia-southeast1") -> list[str]:
    where = f"--region {region} --project {project}"
    return [
        f"gcloud run jobs replace {tmp_path}/postback-init.yaml {where} --quiet",
        f"gcloud run jobs execute postback-init {where} --wait --quiet",
    ]


def test_deploy_script_dry_run_initialises_then_covers_every_active_partner(partners, tmp_path):
    result = run_script(tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    replace = f"gcloud run services replace {tmp_path}"
    assert result.stdout.splitlines() == [
        *init_job_lines(tmp_path),
        f"{replace}/involve_asia.yaml --region asia-southeast1 --project acme-prod --quiet",
        f"{replace}/rector.yaml --region europe-west1 --project acme-eu --quiet",
        f"{replace}/postback-delivery-worker.yaml --region asia-southeast1 --project acme-prod --quiet",
    ]
    assert "init job, 2 service(s) and the delivery worker not deployed" in result.stderr
    worker = yaml.safe_load((tmp_path / "postback-delivery-worker.yaml").read_text())
    assert worker["metadata"]["name"] == "postback-delivery-worker"
    job = yaml.safe_load((tmp_path / "postback-init.yaml").read_text())
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "acme-prod"
    for code in ("involve_asia", "rector"):
        service = yaml.safe_load((tmp_path / f"{code}.yaml").read_text())
        assert env_of(service)["POSTBACK_PARTNERS"] == code
    assert not (tmp_path / "paused.yaml").exists()


def test_deploy_script_dry_run_for_one_partner(partners, tmp_path):
    result = run_script(
        "rector", tmp_path=tmp_path, POSTBACK_INIT_PROJECT="acme-eu", POSTBACK_INIT_REGION="europe-west1"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        *init_job_lines(tmp_path, "acme-eu", "europe-west1"),
        f"gcloud run services replace {tmp_path}/rector.yaml --region europe-west1 --project acme-eu --quiet",
        f"gcloud run services replace {tmp_path}/postback-delivery-worker.yaml --region europe-west1 "
        "--project acme-eu --quiet",
    ]
    failed = run_script("paused", tmp_path=tmp_path)
    assert failed.returncode != 0
    assert "Partner 'paused' is inactive" in failed.stderr


# --- a manifest that starts in production -------------------------------------------

PUBLIC = "https://postback.example.com"
# What each Secret Manager reference stands for in these tests.
SECRET_VALUES = {
    "postback-database-url": "postgres://root@127.0.0.1:1/postback",  # nothing listens: /health says so
    "postback-partner-database-url": "postgres://root@127.0.0.1:5432/{name}",
    "postback-secret-key": "Vq3-zL8mN1xR7cT0bY5wK2pJ9dH4sF6gU_aE8oI3rQ1tZ7kXnM",
    "postback-metrics-token": "metrics-" + "t" * 32,
}


def container_of(manifest_: dict) -> dict:
    spec = manifest_["spec"]["template"]["spec"]
    return (spec["template"]["spec"] if manifest_["kind"] == "Job" else spec)["containers"][0]


def environment(manifest_: dict) -> dict[str, str]:
    """The container's environment as Cloud Run would give it, secret references resolved."""
    env = {}
    for entry in container_of(manifest_)["env"]:
        if "valueFrom" in entry:
            env[entry["name"]] = SECRET_VALUES[entry["valueFrom"]["secretKeyRef"]["name"]]
        else:
            env[entry["name"]] = entry["value"]
    return env


def test_manifest_sets_production_hosts_origins_and_a_health_startup_probe(partners):
    container = container_of(manifest("involve_asia", "--image", IMAGE, "--public-base-url", PUBLIC + "/"))
    env = env_of({"spec": {"template": {"spec": {"containers": [container]}}}})
    assert env["POSTBACK_ENV"] == "production"
    assert env["ALLOWED_HOSTS"] == "localhost,.a.run.app,.asia-southeast1.run.app,postback.example.com"
    assert (
        env["CSRF_TRUSTED_ORIGINS"]
        == "https://*.a.run.app,https://*.asia-southeast1.run.app,https://postback.example.com"
    )
    assert env["PUBLIC_BASE_URL"] == PUBLIC
    probe = container["startupProbe"]
    assert probe["httpGet"]["path"] == "/health" and probe["httpGet"]["port"] == 8080
    assert probe["httpGet"]["httpHeaders"] == [{"name": "Host", "value": "localhost"}]
    without_public = env_of(manifest("rector", "--image", IMAGE, "--public-base-url", ""))
    assert without_public["ALLOWED_HOSTS"] == "localhost,.a.run.app,.europe-west1.run.app"
    assert "PUBLIC_BASE_URL" not in without_public


def test_every_credential_is_a_secret_reference(partners):
    for service in (
        manifest("involve_asia", "--image", IMAGE, "--public-base-url", PUBLIC),
        manifest("--init-job", "--image", IMAGE, "--project", "acme-prod"),
    ):
        entries = container_of(service)["env"]
        literal = {entry["name"] for entry in entries if "value" in entry}
        referenced = {entry["name"]: entry["valueFrom"]["secretKeyRef"] for entry in entries if "valueFrom" in entry}
        assert set(referenced) == {"DATABASE_URL", "PARTNER_DATABASE_URL", "SECRET_KEY", "METRICS_TOKEN"}
        assert all(ref["key"] == "latest" and ref["name"].startswith("postback-") for ref in referenced.values())
        assert literal <= {
            "POSTBACK_PARTNERS",
            "WEB_CONCURRENCY",
            "POSTBACK_ENV",
            "GOOGLE_CLOUD_PROJECT",
            "LOG_FORMAT",
            "TRUSTED_PROXY_COUNT",
            "PUBLIC_BASE_URL",
            "ALLOWED_HOSTS",
            "CSRF_TRUSTED_ORIGINS",
        }


def run_with(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # Only the manifest's environment (plus what runs Python here): nothing of this shell leaks in.
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_DIR,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["service", "init job"])
def test_the_manifest_environment_boots_django_on_cloud_run_with_check_deploy_clean(partners, kind):
    if kind == "service":
        env = environment(manifest("involve_asia", "--image", IMAGE, "--public-base-url", PUBLIC))
        env["K_SERVICE"] = "postback-involve"  # what Cloud Run sets in a service
    else:
        env = environment(
            manifest("--init-job", "--image", IMAGE, "--project", "acme-prod", "--public-base-url", PUBLIC)
        )
        env["CLOUD_RUN_JOB"] = "postback-init"  # a job gets no K_SERVICE: the manifest says production itself
    checked = run_with(env, "check", "--deploy", "--fail-level", "WARNING")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Silenced: only Django's middleware checks that postback_site.checks replaces.
    assert "System check identified no issues (5 silenced)." in checked.stdout

    hosts = {
        "localhost": True,  # the startup probe's Host
        "postback-involve-123456789012.asia-southeast1.run.app": True,
        "postback-involve-ab12cd34ef-as.a.run.app": True,
        "postback.example.com": True,
        "evil.com": False,
        "postback-involve-123456789012.europe-west1.run.app": False,
    }
    code = (
        "from django.conf import settings as s; from django.http.request import validate_host;"
        f"print(s.PRODUCTION, s.DEBUG, [validate_host(h, s.ALLOWED_HOSTS) for h in {list(hosts)!r}])"
    )
    shown = run_with(env, "shell", "-c", code)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip().splitlines()[-1] == f"True False {list(hosts.values())!r}"

    # The startup probe as Cloud Run sends it: plain HTTP to the container, Host: localhost.
    # It must reach /health (no HTTPS redirect, no DisallowedHost), which then reports the database.
    probe = (
        "from django.test import Client; c = Client();"
        "r = c.get('/health', HTTP_HOST='localhost'); e = c.get('/health', HTTP_HOST='evil.com');"
        "print(r.status_code, r.json()['failing'], e.status_code, e.json()['status'])"
    )
    probed = run_with(env, "shell", "-c", probe)
    assert probed.returncode == 0, probed.stderr
    assert probed.stdout.strip().splitlines()[-1] == "503 ['default'] 400 error"


def test_init_job_runs_init_partners_from_the_same_image_with_the_services_environment(partners):
    job = manifest("--init-job", "--image", IMAGE, "--project", "acme-prod", "--public-base-url", PUBLIC)
    assert (job["apiVersion"], job["kind"]) == ("run.googleapis.com/v1", "Job")
    assert job["metadata"]["name"] == "postback-init"
    assert job["metadata"]["labels"]["cloud.googleapis.com/location"] == "asia-southeast1"
    container = container_of(job)
    assert container["image"] == IMAGE
    assert [*container["command"], *container["args"]] == ["python", "manage.py", "init_partners"]
    service_env = container_of(manifest("involve_asia", "--image", IMAGE, "--public-base-url", PUBLIC))["env"]
    shared = [entry for entry in service_env if entry["name"] not in {"POSTBACK_PARTNERS", "WEB_CONCURRENCY"}]
    assert container["env"] == shared


def test_worker_is_a_service_with_cpu_always_allocated_running_deliver_postbacks(partners):
    worker = manifest("--worker", "--image", IMAGE, "--project", "acme-prod", "--worker-instances", "3")
    assert (worker["kind"], worker["metadata"]["name"]) == ("Service", "postback-delivery-worker")
    assert worker["metadata"]["annotations"]["run.googleapis.com/ingress"] == "internal"
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    assert annotations["autoscaling.knative.dev/minScale"] == annotations["autoscaling.knative.dev/maxScale"] == "3"
    container = container_of(worker)
    assert [*container["command"], *container["args"]] == [
        "python",
        "manage.py",
        "deliver_postbacks",
        "--metrics-port",
        "8080",
    ]
    shared = [
        e
        for e in container_of(manifest("involve_asia", "--image", IMAGE))["env"]
        if e["name"] not in {"POSTBACK_PARTNERS", "WEB_CONCURRENCY"}
    ]
    assert [e for e in container["env"] if e["name"] != "DELIVERY_CONCURRENCY"] == shared
    with pytest.raises(CommandError, match="--worker-instances must be from 1 to 100"):
        call_command("cloudrun_manifest", "--worker", "--image", IMAGE, "--project", "p", "--worker-instances", "0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("involve_asia", "--image", IMAGE, "--public-base-url", "postback.example.com"), "is not an http(s) URL"),
        (("--init-job", "--image", IMAGE, "--project", "p", "--region", "Mars"), "'Mars' is not a Cloud Run region"),
        (("--init-job", "--image", IMAGE, "--project", "p", "--job-name", "Init_Job"), "is not a Cloud Run job name"),
    ],
)
def test_manifest_option_errors_say_what_to_fix(partners, args, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("cloudrun_manifest", *args, stdout=StringIO())


def test_a_fresh_configuration_database_cannot_be_listed_but_dry_runs_the_init_job(live_db, database_pool, tmp_path):
    url = database_pool.url("postgres", "never_initialised")
    with psycopg.connect(**POSTGRES_SERVER, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.rsplit("/", 1)[1])))
    listed = run_with({"DATABASE_URL": url, "SECRET_KEY": "k" * 50}, "cloudrun_manifest", "--list")
    assert listed.returncode == 3
    assert "a fresh one needs `python manage.py init_partners` first" in listed.stderr

    result = run_script(tmp_path=tmp_path, DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == init_job_lines(tmp_path)
    assert "the partners cannot be listed before the init job has run" in result.stderr
