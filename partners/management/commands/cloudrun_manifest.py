"""`python manage.py cloudrun_manifest <partner_code>`: the partner's Cloud Run service YAML.

One image serves every partner; each partner gets its own Cloud Run service whose
POSTBACK_PARTNERS names only that partner. Credentials are Secret Manager references,
never values. `--list` prints the deployable partners for deploy_multi_partner.sh.
"""

import json
import os
import re
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from partners.models import Partner

SERVICE_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
# env name -> Secret Manager secret (after the prefix); the value never appears in the manifest.
SECRET_ENV = {
    "DATABASE_URL": "database-url",
    "PARTNER_DATABASE_URL": "partner-database-url",
    "SECRET_KEY": "secret-key",
    "METRICS_TOKEN": "metrics-token",
}


class Command(BaseCommand):
    help = "Print the Cloud Run (Knative) service YAML for one partner, built from its Partner row."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("partner_code", nargs="?", help="the partner to deploy, e.g. involve_asia")
        parser.add_argument("--image", default=os.environ.get("POSTBACK_IMAGE", ""), help="container image")
        parser.add_argument("--project", default="", help="GCP project when the partner has none")
        parser.add_argument("--secret-prefix", default="postback-", help="Secret Manager names' prefix")
        parser.add_argument("--max-instances", type=int, default=10)
        parser.add_argument(
            "--list", action="store_true", help="print 'code service region project' of every active partner"
        )

    def handle(self, *args: Any, **options: Any) -> None:
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
                            partner.cloud_run_region,
                            self._project(partner, options),
                        )
                    )
                )
            return
        if not options["partner_code"]:
            raise CommandError("Name the partner: cloudrun_manifest <partner_code> (or --list)")
        if not options["image"]:
            raise CommandError("No image: pass --image or set POSTBACK_IMAGE")
        partner = self._partner(options["partner_code"])
        manifest = service_manifest(
            partner,
            image=options["image"],
            project=self._project(partner, options),
            secret_prefix=options["secret_prefix"],
            max_instances=options["max_instances"],
        )
        self.stdout.write(to_yaml(manifest), ending="")

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


def service_manifest(
    partner: Partner, *, image: str, project: str, secret_prefix: str, max_instances: int
) -> dict[str, Any]:
    """The Knative Service for one partner's Cloud Run service."""
    env: list[dict[str, Any]] = [
        {"name": "POSTBACK_PARTNERS", "value": partner.partner_code},
        {"name": "GOOGLE_CLOUD_PROJECT", "value": project},
        {"name": "LOG_FORMAT", "value": "json"},
        {"name": "TRUSTED_PROXY_COUNT", "value": "1"},
        {"name": "WEB_CONCURRENCY", "value": "2"},
    ]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": f"{secret_prefix}{secret}", "key": "latest"}}}
        for name, secret in SECRET_ENV.items()
    ]
    labels = {
        "cloud.googleapis.com/location": partner.cloud_run_region,
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
                            "ports": [{"name": "http1", "containerPort": 8080}],
                            "env": env,
                            "resources": {"limits": {"cpu": "2", "memory": "1Gi"}},
                            "startupProbe": {"httpGet": {"path": "/info", "port": 8080}, "periodSeconds": 2},
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
