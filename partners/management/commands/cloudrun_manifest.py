"""`python manage.py cloudrun_manifest <partner_code>`: the partner's Cloud Run service YAML.

One image serves every partner; each partner gets its own Cloud Run service whose
POSTBACK_PARTNERS names only that partner. Credentials are Secret Manager references,
never values. `--list` prints the deployable partners for deploy_multi_partner.sh, and
`--init-job` the Cloud Run job that runs `init_partners` from the same image before the
services start (the first boot, and the migrations of every later image), and `--worker`
the service that runs the delivery worker (`deliver_postbacks`) for every partner.
"""

import json
import os
import re
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from infra.errors import error_first_line
from partners.models import Partner

SERVICE_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
CONTAINER_PORT = 8080
INIT_JOB_NAME = "postback-init"
INIT_COMMAND = ["python", "manage.py", "init_partners"]
WORKER_NAME = "postback-delivery-worker"
# The delivery worker of the publishers app; it answers its metrics on the container port
# (which is also what Cloud Run's startup probe checks).
WORKER_COMMAND = ["python", "manage.py", "deliver_postbacks", "--metrics-port", str(8080)]
DEFAULT_REGION = "asia-southeast1"
# Exit status when the partners cannot be read (e.g. not initialised yet), told apart by the deploy script.
UNREADABLE_CONFIGURATION = 3
# The Host header of the startup probe: the probe talks to the container directly, not
# through a run.app host name, and Django refuses a Host that ALLOWED_HOSTS lacks.
PROBE_HOST = "localhost"
# env name -> Secret Manager secret (after the prefix); the value never appears in the manifest.
SECRET_ENV = {
    "DATABASE_URL": "database-url",
    "PARTNER_DATABASE_URL": "partner-database-url",
    "SECRET_KEY": "secret-key",
    "METRICS_TOKEN": "metrics-token",
}


class Command(BaseCommand):
    help = (
        "Print the Cloud Run (Knative) service YAML for one partner, built from its Partner row; "
        "--list: the deployable partners; --init-job: the job that runs init_partners."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("partner_code", nargs="?", help="the partner to deploy, e.g. involve_asia")
        parser.add_argument("--image", default=os.environ.get("POSTBACK_IMAGE", ""), help="container image")
        parser.add_argument("--project", default="", help="GCP project when the partner has none")
        parser.add_argument("--secret-prefix", default="postback-", help="Secret Manager names' prefix")
        parser.add_argument("--max-instances", type=int, default=10)
        parser.add_argument(
            "--public-base-url",
            default=settings.PUBLIC_BASE_URL,
            help="the base URL partners call (default: PUBLIC_BASE_URL), e.g. https://postback.example.com",
        )
        parser.add_argument(
            "--list", action="store_true", help="print 'code service region project' of every active partner"
        )
        parser.add_argument(
            "--init-job", action="store_true", help="print the Cloud Run job that runs init_partners (no partner)"
        )
        parser.add_argument(
            "--region", default=DEFAULT_REGION, help=f"the init job's region (default {DEFAULT_REGION})"
        )
        parser.add_argument("--job-name", default=INIT_JOB_NAME, help=f"the init job's name (default {INIT_JOB_NAME})")
        parser.add_argument(
            "--worker", action="store_true", help="print the delivery worker's service (deliver_postbacks, no partner)"
        )
        parser.add_argument(
            "--worker-instances", type=int, default=1, help="the delivery worker's instances (default 1; min = max)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["worker"]:
            self._require_image(options)
            project = options["project"] or settings.GOOGLE_CLOUD_PROJECT
            if not project:
                raise CommandError("The worker needs a project: pass --project or set GOOGLE_CLOUD_PROJECT")
            if not 1 <= options["worker_instances"] <= 100:
                raise CommandError("--worker-instances must be from 1 to 100")
            manifest = worker_manifest(
                image=options["image"],
                project=project,
                region=_region(options["region"], owner="--region"),
                secret_prefix=options["secret_prefix"],
                instances=options["worker_instances"],
                public_base_url=options["public_base_url"],
            )
            self.stdout.write(to_yaml(manifest), ending="")
            return
        if options["init_job"]:
            self._require_image(options)
            project = options["project"] or settings.GOOGLE_CLOUD_PROJECT
            if not project:
                raise CommandError("The init job needs a project: pass --project or set GOOGLE_CLOUD_PROJECT")
            manifest = init_job_manifest(
                name=options["job_name"],
                image=options["image"],
                project=project,
                region=_region(options["region"], owner="--region"),
                secret_prefix=options["secret_prefix"],
                public_base_url=options["public_base_url"],
            )
            self.stdout.write(to_yaml(manifest), ending="")
            return
        try:
            self._handle_partner(options)
        except DatabaseError as exc:
            reason = error_first_line(exc)
            raise CommandError(
                f"Cannot read the partners from the configuration database ({reason}); a fresh one needs "
                "`python manage.py init_partners` first (deploy_multi_partner.sh runs it as a Cloud Run job)",
                returncode=UNREADABLE_CONFIGURATION,
            ) from exc

    def _handle_partner(self, options: dict[str, Any]) -> None:
        if options["list"]:
            partners = Partner.objects.filter(is_active=True).order_by("partner_code")
            if options["partner_code"]:
                partners = [self._partner(options["partner_code"])]
            for partner in partners:
                self.stdout.write(
                    " ".join(
                        (
                            partner.partner_code,
                            service_name(partner),
                            _region(partner.cloud_run_region, owner=f"Partner '{partner.partner_code}'"),
                            self._project(partner, options),
                        )
                    )
                )
            return
        if not options["partner_code"]:
            raise CommandError("Name the partner: cloudrun_manifest <partner_code> (or --list, --init-job)")
        self._require_image(options)
        partner = self._partner(options["partner_code"])
        manifest = service_manifest(
            partner,
            image=options["image"],
            project=self._project(partner, options),
            secret_prefix=options["secret_prefix"],
            max_instances=options["max_instances"],
            public_base_url=options["public_base_url"],
        )
        self.stdout.write(to_yaml(manifest), ending="")

    @staticmethod
    def _require_image(options: dict[str, Any]) -> None:
        if not options["image"]:
            raise CommandError("No image: pass --image or set POSTBACK_IMAGE")

    def _partner(self, code: str) -> Partner:
        partner = Partner.objects.filter(partner_code=code).first()
        if partner is None:
            known = ", ".join(Partner.objects.order_by("partner_code").values_list("partner_code", flat=True))
            raise CommandError(f"No partner '{code}' (known: {known or 'none'})")
        if not partner.is_active:
            raise CommandError(f"Partner '{code}' is inactive; activate it before deploying")
        service_name(partner)
        return partner

    @staticmethod
    def _project(partner: Partner, options: dict[str, Any]) -> str:
        project = partner.cloud_run_project_id or options["project"] or settings.GOOGLE_CLOUD_PROJECT
        if not project:
            raise CommandError(
                f"Partner '{partner.partner_code}' has no cloud_run_project_id: set it, pass --project "
                "or set GOOGLE_CLOUD_PROJECT"
            )
        return project


def service_name(partner: Partner) -> str:
    """The partner's Cloud Run service name (its own, else postback-<code>)."""
    name = partner.cloud_run_service_name or f"postback-{partner.partner_code.replace('_', '-')}"
    if not SERVICE_NAME_RE.match(name):
        raise CommandError(
            f"'{name}' is not a Cloud Run service name: lowercase letters, digits and hyphens, "
            "starting with a letter, at most 49 characters"
        )
    return name


def _region(region: str, *, owner: str) -> str:
    if not REGION_RE.match(region or ""):
        raise CommandError(f"{owner}: '{region}' is not a Cloud Run region (e.g. {DEFAULT_REGION})")
    return region


def _public_base(public_base_url: str) -> tuple[str, str] | None:
    """(host, origin) of PUBLIC_BASE_URL, None when unset."""
    if not public_base_url:
        return None
    parts = urlsplit(public_base_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise CommandError(
            f"PUBLIC_BASE_URL '{public_base_url}' is not an http(s) URL, e.g. https://postback.example.com"
        )
    return parts.hostname, f"{parts.scheme}://{parts.netloc}"


def runtime_env(*, project: str, region: str, secret_prefix: str, public_base_url: str) -> list[dict[str, Any]]:
    """The environment every container of the deployment runs with, secrets by reference.

    Production settings (also where Cloud Run does not set K_SERVICE, as in jobs), the
    host names Django answers to (the service's run.app URLs in both of Cloud Run's forms,
    `SERVICE-HASH-XX.a.run.app` and `SERVICE-PROJECT_NUMBER.REGION.run.app`, the startup
    probe's Host, and PUBLIC_BASE_URL's host) and the origins the admin's forms come from.
    """
    hosts = [PROBE_HOST, ".a.run.app", f".{region}.run.app"]
    origins = ["https://*.a.run.app", f"https://*.{region}.run.app"]
    env: list[dict[str, Any]] = [
        {"name": "POSTBACK_ENV", "value": "production"},
        {"name": "GOOGLE_CLOUD_PROJECT", "value": project},
        {"name": "LOG_FORMAT", "value": "json"},
        {"name": "TRUSTED_PROXY_COUNT", "value": "1"},
    ]
    public = _public_base(public_base_url)
    if public is not None:
        hosts.append(public[0])
        origins.append(public[1])
        env.append({"name": "PUBLIC_BASE_URL", "value": public_base_url.rstrip("/")})
    env += [
        {"name": "ALLOWED_HOSTS", "value": ",".join(hosts)},
        {"name": "CSRF_TRUSTED_ORIGINS", "value": ",".join(origins)},
    ]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": f"{secret_prefix}{secret}", "key": "latest"}}}
        for name, secret in SECRET_ENV.items()
    ]
    return env


def service_manifest(
    partner: Partner, *, image: str, project: str, secret_prefix: str, max_instances: int, public_base_url: str = ""
) -> dict[str, Any]:
    """The Knative Service for one partner's Cloud Run service."""
    region = _region(partner.cloud_run_region, owner=f"Partner '{partner.partner_code}'")
    env: list[dict[str, Any]] = [
        {"name": "POSTBACK_PARTNERS", "value": partner.partner_code},
        {"name": "WEB_CONCURRENCY", "value": "2"},
        *runtime_env(project=project, region=region, secret_prefix=secret_prefix, public_base_url=public_base_url),
    ]
    labels = {
        "cloud.googleapis.com/location": region,
        "app": "postback",
        "partner": partner.partner_code.replace("_", "-"),
    }
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(partner),
            "namespace": project,
            "labels": labels,
            "annotations": {
                "run.googleapis.com/ingress": "all",
                "run.googleapis.com/description": f"Postbacks of {partner.partner_name} ({partner.endpoint_path})",
            },
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": {"app": "postback", "partner": labels["partner"]},
                    "annotations": {
                        "autoscaling.knative.dev/maxScale": str(max_instances),
                        "run.googleapis.com/startup-cpu-boost": "true",
                    },
                },
                "spec": {
                    "containerConcurrency": 80,
                    "timeoutSeconds": 30,
                    "containers": [
                        {
                            "image": image,
                            "ports": [{"name": "http1", "containerPort": CONTAINER_PORT}],
                            "env": env,
                            "resources": {"limits": {"cpu": "2", "memory": "1Gi"}},
                            # Ready only when /health is 200: every database reachable, initialised and migrated.
                            "startupProbe": {
                                "httpGet": {
                                    "path": "/health",
                                    "port": CONTAINER_PORT,
                                    "httpHeaders": [{"name": "Host", "value": PROBE_HOST}],
                                },
                                "timeoutSeconds": 5,
                                "periodSeconds": 3,
                                "failureThreshold": 40,
                            },
                        }
                    ],
                },
            },
            "traffic": [{"latestRevision": True, "percent": 100}],
        },
    }


def init_job_manifest(
    *, name: str, image: str, project: str, region: str, secret_prefix: str, public_base_url: str = ""
) -> dict[str, Any]:
    """The Cloud Run job running `init_partners` from the services' image, with their environment."""
    if not SERVICE_NAME_RE.match(name):
        raise CommandError(f"'{name}' is not a Cloud Run job name: lowercase letters, digits and hyphens")
    env = runtime_env(project=project, region=region, secret_prefix=secret_prefix, public_base_url=public_base_url)
    return {
        "apiVersion": "run.googleapis.com/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": project,
            "labels": {"cloud.googleapis.com/location": region, "app": "postback"},
            "annotations": {
                "run.googleapis.com/description": "Migrates and provisions every database before the services start"
            },
        },
        "spec": {
            "template": {
                "spec": {
                    "taskCount": 1,
                    "parallelism": 1,
                    "template": {
                        "spec": {
                            "maxRetries": 2,
                            "timeoutSeconds": 1800,
                            "containers": [
                                {
                                    "image": image,
                                    "command": INIT_COMMAND[:1],
                                    "args": INIT_COMMAND[1:],
                                    "env": env,
                                    "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                                }
                            ],
                        }
                    },
                }
            }
        },
    }


def worker_manifest(
    *, image: str, project: str, region: str, secret_prefix: str, instances: int, public_base_url: str = ""
) -> dict[str, Any]:
    """The Knative Service running the delivery worker: CPU always allocated (it works
    between requests), `instances` always running, reachable only from inside the project."""
    env = [
        {"name": "DELIVERY_CONCURRENCY", "value": "32"},
        *runtime_env(project=project, region=region, secret_prefix=secret_prefix, public_base_url=public_base_url),
    ]
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": WORKER_NAME,
            "namespace": project,
            "labels": {"cloud.googleapis.com/location": region, "app": "postback", "role": "delivery-worker"},
            "annotations": {
                "run.googleapis.com/ingress": "internal",
                "run.googleapis.com/description": (
                    "Sends postbacks to publishers and performs queued and daily reconciliation runs "
                    "(python manage.py deliver_postbacks)"
                ),
            },
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": {"app": "postback", "role": "delivery-worker"},
                    "annotations": {
                        "autoscaling.knative.dev/minScale": str(instances),
                        "autoscaling.knative.dev/maxScale": str(instances),
                        "run.googleapis.com/cpu-throttling": "false",
                    },
                },
                "spec": {
                    "containerConcurrency": 10,
                    # SIGTERM lets the batch in flight finish within the send timeouts.
                    "timeoutSeconds": 30,
                    "containers": [
                        {
                            "image": image,
                            "command": WORKER_COMMAND[:1],
                            "args": WORKER_COMMAND[1:],
                            "ports": [{"name": "http1", "containerPort": CONTAINER_PORT}],
                            "env": env,
                            "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                        }
                    ],
                },
            },
            "traffic": [{"latestRevision": True, "percent": 100}],
        },
    }


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars (strings double-quoted, JSON-escaped)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}\n")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = to_yaml(item, indent + 1)
                lines.append(f"{pad}- {nested[len(pad) + 2 :]}")
            else:
                lines.append(f"{pad}- {_scalar(item)}\n")
    else:
        lines.append(f"{pad}{_scalar(value)}\n")
    return "".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value), ensure_ascii=False)
