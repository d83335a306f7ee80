"""One Cloud Run service per partner: the manifest command and the deploy script's dry run."""

import os
import re
import subprocess
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.management import CommandError, call_command

from partners.services import partner_create

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


def run_script(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    db = settings.DATABASES["default"]
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        POSTBACK_IMAGE=IMAGE,
        DRY_RUN="1",
        MANIFEST_DIR=str(tmp_path),
        SECRET_KEY="deploy-test-" + "k" * 40,
    )
    return subprocess.run(
        ["bash", "deploy_multi_partner.sh", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_script_dry_run_covers_every_active_partner(partners, tmp_path):
    result = run_script(tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    replace = f"gcloud run services replace {tmp_path}"
    assert result.stdout.splitlines() == [
        f"{replace}/involve_asia.yaml --region asia-southeast1 --project acme-prod --quiet",
        f"{replace}/rector.yaml --region europe-west1 --project acme-eu --quiet",
    ]
    assert "2 service(s) not deployed" in result.stderr
    for code in ("involve_asia", "rector"):
        service = yaml.safe_load((tmp_path / f"{code}.yaml").read_text())
        assert env_of(service)["POSTBACK_PARTNERS"] == code
    assert not (tmp_path / "paused.yaml").exists()


def test_deploy_script_dry_run_for_one_partner(partners, tmp_path):
    result = run_script("rector", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"gcloud run services replace {tmp_path}/rector.yaml --region europe-west1 --project acme-eu --quiet"
    ]
    failed = run_script("paused", tmp_path=tmp_path)
    assert failed.returncode != 0
    assert "Partner 'paused' is inactive" in failed.stderr
