"""The README and the manual in docs/ say what the service does.

The README's seed postbacks and docs/api.md's read-API examples return what they claim; the
README's quick start (a partner added in four steps, then its first postback) works as
written; every link between the pages, every command and every file they name exists; and
the README stays short.
"""

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.core.management import get_commands
from django.utils.text import capfirst

from partners.mapping import postback_url_template
from partners.models import Partner
from tests.conftest import partner_rows

PROJECT_DIR = Path(__file__).resolve().parents[1]
README_PATH = PROJECT_DIR / "README.md"
API_PATH = PROJECT_DIR / "docs" / "api.md"
README = README_PATH.read_text()
PAGES = [README_PATH, PROJECT_DIR / "CHANGELOG.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
BASE_URL = "http://localhost:8000"


def section(title: str, text: str = README) -> str:
    """The text under `title`, up to the next heading (not a `# comment` in a code block)."""
    if f"\n{title}\n" not in text:
        return ""
    return re.split(r"\n#{2,4} ", text.split(f"\n{title}\n", 1)[1], maxsplit=1)[0]


def bash_urls(text: str, path_pattern: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [url for block in blocks for url in re.findall(rf'"http://localhost:8000({path_pattern}[^"]*)"', block)]


SEED_POSTBACKS = bash_urls(section("### Postback examples (from the original design)"), r"/partner/involve/event\?")
API_SECTION = section("## Reading conversions and stats (API)", API_PATH.read_text())
API_EXAMPLES = bash_urls(API_SECTION, r"/partner/involve/event/")
QUICK_START = section("## Quick start")


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_the_readme_has_examples_to_check():
    assert len(SEED_POSTBACKS) >= 2 and len(API_EXAMPLES) >= 5


def test_each_api_example_finds_the_seed_postbacks(client, users, involve):
    for postback in SEED_POSTBACKS:
        assert client.get(postback).status_code == 200, postback
    client.force_login(users["root"])
    for url in API_EXAMPLES:
        response = client.get(url)
        assert response.status_code == 200, (url, response.content)
        if "format=csv" in url:
            lines = b"".join(response.streaming_content).decode().splitlines()
            assert len(lines) == 1 + len(SEED_POSTBACKS), url
        elif "/stats" in url:
            assert response.json()["totals"]["originals"] == len(SEED_POSTBACKS), url
        else:
            results = response.json()["results"]
            assert results, url
            if "sub_id=test123" in url:
                assert {row["sub_id"] for row in results} == {"test123"}


# --- the quick start ------------------------------------------------------------------


def quick_start_partner() -> tuple[dict[str, str], dict[str, str]]:
    """The boxes the quick start fills in (admin label -> Partner field), and its mapping."""
    labels = {capfirst(field.verbose_name): field.name for field in Partner._meta.fields}
    fields: dict[str, str] = {}
    mapping: dict[str, str] = {}
    for label, value in re.findall(r"^\s*\| ([^|`]+?) \| (.+?) \|$", QUICK_START, re.M):
        if label.startswith("Parameter mapping"):
            mapping = dict(re.findall(r"`(\w+)` ← `(\w+)`", value))
        elif label in labels:
            fields[labels[label]] = value.strip("`")
    return fields, mapping


def test_the_quick_start_fills_in_admin_boxes_that_exist():
    fields, mapping = quick_start_partner()
    assert set(fields) == {"partner_code", "partner_name", "endpoint_path", "database_name"}, fields
    assert mapping and "conversion_id" in mapping, mapping
    # The postback URL it says to copy is the one the partner's page shows.
    url = postback_url_template(base_url=BASE_URL, endpoint_path=fields["endpoint_path"], mapping=mapping)
    assert f"`{url}`" in QUICK_START, url


def test_the_quick_start_partner_answers_its_first_postback(client, make_partner):
    fields, mapping = quick_start_partner()
    code = fields.pop("partner_code")
    partner = make_partner(code, parameter_mapping=mapping, **fields)
    [url] = bash_urls(QUICK_START, r"/partner/")
    assert url.startswith(f"/partner{partner.endpoint_path}?"), url

    first = client.get(url)
    assert (first.status_code, first.json()["status"]) == (200, "success"), first.content
    again = client.get(url)
    assert (again.status_code, again.json()["status"]) == (200, "duplicate"), again.content

    # Each of the partner's own parameter names filled the field the mapping says.
    sent = dict(parse_qsl(urlsplit(url).query))
    original = partner_rows(partner).get(is_duplicate=False)
    for our_field, their_param in mapping.items():
        stored = getattr(original, our_field)
        assert (Decimal(sent[their_param]) if isinstance(stored, Decimal) else sent[their_param]) == stored


def test_make_run_says_where_the_admin_is_and_how_to_log_in():
    recipe = re.search(r"^run:.*?(?=^\S)", (PROJECT_DIR / "Makefile").read_text(), re.M | re.S).group(0)
    assert "/admin/" in recipe and "manage.py createsuperuser" in recipe
    assert ".venv/bin/python manage.py createsuperuser" in QUICK_START
    assert "http://localhost:8000/admin/" in QUICK_START


def test_the_deploy_dry_run_works_as_written_on_a_fresh_checkout(tmp_path):
    command = "DRY_RUN=1 ./deploy_multi_partner.sh"
    assert command in (PROJECT_DIR / "docs" / "operations.md").read_text()
    unset = {"GOOGLE_CLOUD_PROJECT", "POSTBACK_IMAGE", "POSTBACK_INIT_PROJECT", "DJANGO_SETTINGS_MODULE", "K_SERVICE"}
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env.update(
        DRY_RUN="1",
        PYTHON=sys.executable,
        MANIFEST_DIR=str(tmp_path / "manifests"),
        # A configuration database nobody has initialised yet, as on a fresh checkout.
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
        SECRET_KEY="dry-run-" + "k" * 42,
    )
    result = subprocess.run(
        ["bash", "deploy_multi_partner.sh"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"gcloud run jobs replace {tmp_path}/manifests/postback-init.yaml --region asia-southeast1 "
        "--project dry-run-project --quiet",
        "gcloud run jobs execute postback-init --region asia-southeast1 --project dry-run-project --wait --quiet",
    ]
    assert "placeholder project dry-run-project" in result.stderr
    assert "placeholder image" in result.stderr


# --- the pages: length, links, commands, files ------------------------------------------


def test_the_readme_is_short():
    assert len(README.splitlines()) < 300


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def code(text: str) -> str:
    """The fenced code blocks and inline code spans, one per line."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return "\n".join([*blocks, *spans])


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings (lower case, punctuation dropped, spaces to -)."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, number = slug, 0
        while candidate in found:
            number += 1
            candidate = f"{slug}-{number}"
        found.add(candidate)
    return found


def test_every_relative_link_points_to_a_file_and_heading_that_exist():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # http(s)://, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(PROJECT_DIR)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(PROJECT_DIR)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_command_the_pages_name_exists():
    commands = set(get_commands())
    targets = set(re.findall(r"^([\w-]+):", (PROJECT_DIR / "Makefile").read_text(), re.M))
    unknown = []
    for page in PAGES:
        text = code(page.read_text())
        unknown += [
            f"{page.relative_to(PROJECT_DIR)}: manage.py {name}"
            for name in sorted(set(re.findall(r"manage\.py ([a-z_]+)", text)) - commands)
        ]
        unknown += [
            f"{page.relative_to(PROJECT_DIR)}: make {name}"
            for name in sorted(set(re.findall(r"(?<![\w-])make ([a-z][\w-]*)", text)) - targets)
        ]
    assert not unknown, "commands that do not exist: " + ", ".join(unknown)


def test_every_project_file_the_pages_name_exists():
    # Paths under the project's own folders (apps, infra, the shell, tests, benchmarks, docs),
    # written from the project's top: `conversions/ingest/store.py`, `bench/urls.py`, ...
    folders = {
        entry.name
        for entry in PROJECT_DIR.iterdir()
        if entry.is_dir() and ((entry / "__init__.py").exists() or entry.name in {"bench", "docs", "templates"})
    }
    missing = []
    for page in PAGES:
        for path in sorted(set(re.findall(r"`([a-z_]+/[\w./-]+\.(?:py|sh|md|json|lock|txt|html))`", page.read_text()))):
            if path.split("/", 1)[0] in folders and not (PROJECT_DIR / path).exists():
                missing.append(f"{page.relative_to(PROJECT_DIR)}: {path}")
    assert not missing, "files named by the pages that do not exist: " + ", ".join(missing)
