"""The image's first boot, without a Docker engine: its file tree, its command, its user.

The tree is built the way the Dockerfile builds it: the runtime lock installed with
`pip install --require-hashes` into an interpreter of its own, the build context copied
as `COPY . .` copies it (honouring .dockerignore), static files collected. The
Dockerfile's CMD then runs as its unprivileged user, with only `var/` writable, against
an empty PostgreSQL database: before the documented init step (the init job's command)
the service says what is missing, after it a seed postback is stored.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path

import psycopg
import pytest
import yaml
from django.core.management import call_command
from psycopg import sql

from tests.conftest import POSTGRES_SERVER, postgres_drop
from tests.e2e.server import PROJECT_DIR, free_port

pytestmark = pytest.mark.e2e

NOT_INITIALISED = "configuration database not initialised: run `python manage.py init_partners`"
SEED_POSTBACK = "/partner/involve/event?conversion_id=IMG-1&usd_payout=1.50&aff_sub=s1&offer_name=%3DHYPERLINK(1)"


# --- reading the Dockerfile and .dockerignore --------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (PROJECT_DIR / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            instructions.append((instruction.upper(), arguments.strip()))
    return instructions


def only(instruction: str) -> list[str]:
    return [arguments for name, arguments in dockerfile() if name == instruction]


def dockerignore_rules() -> list[tuple[re.Pattern, bool]]:
    """(pattern, excludes) per line of .dockerignore, in order: the last matching rule decides."""
    rules = []
    for line in (PROJECT_DIR / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|/\*\*|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "/**": "(?:/.*)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        rules.append((re.compile(regex), excludes))
    return rules


def ignored(relative: str, rules: list[tuple[re.Pattern, bool]]) -> bool:
    """Whether Docker leaves `relative` (or a folder holding it) out of the build context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern, excludes in rules:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            verdict = excludes
    return verdict


def test_dockerignore_rules_follow_docker_matching():
    rules = dockerignore_rules()
    assert ignored("tests/e2e/test_image.py", rules)
    assert ignored("partners/__pycache__/models.cpython-311.pyc", rules)
    assert ignored(".venv/bin/python", rules) and ignored("var/secret_key", rules)
    assert not ignored("partners/models.py", rules)
    assert not ignored("requirements.lock", rules) and not ignored("manage.py", rules)


# --- building the tree ---------------------------------------------------------------


def copy_build_context(destination: Path) -> None:
    """`COPY . .`: the checkout as it is on disk, less what .dockerignore leaves out."""
    rules = dockerignore_rules()
    for root, folders, files in os.walk(PROJECT_DIR):
        relative_root = Path(root).relative_to(PROJECT_DIR)
        folders[:] = [name for name in folders if not ignored((relative_root / name).as_posix(), rules)]
        (destination / relative_root).mkdir(parents=True, exist_ok=True)
        for name in files:
            if not ignored((relative_root / name).as_posix(), rules):
                shutil.copy2(Path(root) / name, destination / relative_root / name)


def blocked_ancestor(path: Path) -> Path | None:
    """The highest folder above `path` that other users cannot enter (root's home, here)."""
    for ancestor in reversed(path.parents):
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


class Image:
    """The image's file tree under `root`, and how to run commands in it as its user."""

    def __init__(self, root: Path):
        self.root = root
        self.app = root / "app"
        self.python = root / "python"
        self.env: dict[str, str] = {}
        for arguments in only("ENV"):
            self.env.update(item.split("=", 1) for item in shlex.split(arguments))
        (self.workdir,) = only("WORKDIR")
        (user,) = only("USER")
        (self.uid,) = [
            int(match.group(1))
            for arguments in only("RUN")
            for match in [re.search(rf"useradd .*--uid (\d+).* {user}\b", arguments)]
            if match
        ]
        self.command = json.loads(only("CMD")[0])

    def build(self) -> None:
        # RUN pip install --require-hashes -r <runtime lock>, into an interpreter of the image's own.
        (install,) = [arguments for arguments in only("RUN") if arguments.startswith("pip install")]
        lock = re.search(r"-r (\S+)", install).group(1)
        assert "--require-hashes" in install
        subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", self.python], check=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", self.python / "bin" / "python", "install", "--quiet"]
            + shlex.split(install)[2:],
            cwd=PROJECT_DIR,
            check=True,
            timeout=600,
        )
        assert (PROJECT_DIR / lock).exists()
        # COPY . .
        self.app.mkdir()
        copy_build_context(self.app)
        # RUN <collectstatic> && useradd ... && mkdir -p var && chown <user> var (no user is
        # added to this machine: the numeric uid is enough to run as it).
        (build_step,) = [arguments for arguments in only("RUN") if "collectstatic" in arguments]
        collectstatic = build_step.split("&&")[0]
        subprocess.run(["bash", "-c", collectstatic], cwd=self.app, env=self.run_env(), check=True, timeout=120)
        (self.app / "var").mkdir()
        os.chown(self.app / "var", self.uid, self.uid)

    def run_env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{self.python / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.app),
            "LANG": "C.UTF-8",
            **self.env,
            **extra,
        }

    def as_user(self, argv: list[str]) -> list[str]:
        """`argv` run as the image's user: no privileges, no supplementary groups.

        The interpreter here lives under a folder others cannot enter; a private mount
        namespace shows the user that installation alone, as the image's /usr/local would
        be, and leaves the machine as it was.
        """
        drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", *argv]
        prefix = Path(sys.base_prefix)
        blocked = blocked_ancestor(prefix)
        if blocked is None:
            return drop
        stage = self.root / "interpreter"
        stage.mkdir(exist_ok=True)
        script = (
            'mount --bind "$1" "$2" && mount -t tmpfs -o mode=755,size=1m tmpfs "$3" && mkdir -p "$1"'
            ' && mount --bind "$2" "$1" && shift 3 && exec "$@"'
        )
        namespace = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        return [*namespace, str(prefix), str(stage), str(blocked), *drop]

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """(size, mtime) of every file outside var/."""
        files = {}
        for path in self.app.rglob("*"):
            relative = path.relative_to(self.app)
            if path.is_file() and relative.parts[0] != "var":
                stat = path.stat()
                files[relative.as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return files


@pytest.fixture
def image() -> Iterator[Image]:
    # Not pytest's tmp_path: other users cannot enter it. Readable by all, like an image's layers.
    root = Path(tempfile.mkdtemp(prefix="postback-image-"))
    root.chmod(0o755)
    built = Image(root)
    try:
        built.build()
        yield built
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def empty_database(database_pool) -> Iterator[dict[str, str]]:
    prefix = f"test_pb_{database_pool.token}_img_"
    with psycopg.connect(**POSTGRES_SERVER, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"{prefix}default")))
    yield {
        "DATABASE_URL": f"postgres://root@127.0.0.1:5432/{prefix}default",
        "PARTNER_DATABASE_URL": f"postgres://root@127.0.0.1:5432/{prefix}{{name}}",
        "_PREFIX": prefix,
    }
    postgres_drop(prefix)


def get(url: str) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


@contextmanager
def serving(image: Image, env: dict[str, str], log: Path) -> Iterator[str]:
    """The image's CMD as its user, on a free port of the loopback; yields the base URL."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen(
            image.as_user(image.command),
            cwd=image.app,
            env={**env, "PORT": str(port), "HOST": "127.0.0.1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the image's command exited ({process.returncode}):\n{log.read_text()}")
            try:
                get(base + "/health")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the image's command did not answer:\n{log.read_text()}") from None
                time.sleep(0.2)
        assert os.stat(f"/proc/{process.pid}").st_uid == image.uid  # gunicorn runs as the image's user
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def init_job_command() -> list[str]:
    """The command of the Cloud Run job that deploy_multi_partner.sh runs before the services."""
    out = StringIO()
    call_command("cloudrun_manifest", "--init-job", "--image", "img", "--project", "p", stdout=out)
    container = yaml.safe_load(out.getvalue())["spec"]["template"]["spec"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container["args"]]


def test_the_image_starts_says_what_is_missing_and_serves_after_the_init_step(image, empty_database, tmp_path):
    assert (image.app / "staticfiles" / "admin").is_dir()  # collected at build time
    for left_out in ("tests", ".venv", ".git", "var/secret_key", "bench"):
        assert not (image.app / left_out).exists(), left_out
    assert image.workdir == "/app" and image.uid != 0
    prefix = empty_database.pop("_PREFIX")
    env = image.run_env(SECRET_KEY="image-test-" + "k" * 50, **empty_database)
    before = image.snapshot()

    with serving(image, env, tmp_path / "before.log") as base:
        status, headers, body = get(base + "/health")
        assert status == 503, body
        assert body["message"] == NOT_INITIALISED
        assert body["databases"] == {"default": NOT_INITIALISED.removeprefix("configuration database ")}
        assert headers["Retry-After"]
        status, _headers, body = get(base + "/info")
        assert status == 503 and body["version"] and body["message"] == NOT_INITIALISED
        status, _headers, body = get(base + SEED_POSTBACK)
        assert status == 503 and body["status"] == "error"

        # The documented init step, run from the same tree as the same user, while the service runs.
        init = subprocess.run(
            image.as_user(init_job_command()), cwd=image.app, env=env, capture_output=True, text=True, timeout=300
        )
        assert init.returncode == 0, init.stdout + init.stderr
        assert "init_partners: done" in init.stdout

        status, _headers, body = get(base + "/health")
        assert (status, body["status"]) == (200, "ok"), body
        assert body["databases"] == {"default": "ok", "involve_asia_db": "ok", "rector_db": "ok"}
        status, _headers, body = get(base + "/info")
        assert status == 200 and [partner["code"] for partner in body["partners"]] == ["involve_asia", "rector"]
        status, _headers, body = get(base + SEED_POSTBACK)
        assert (status, body["status"]) == (200, "success"), body

    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": f"{prefix}involve_asia_db"}) as conn:
        stored = conn.execute(
            "SELECT conversion_id, sub_id, usd_earning::text, offer_name, is_duplicate FROM partner_conversions"
        ).fetchall()
    assert stored == [("IMG-1", "s1", "1.50", "=HYPERLINK(1)", False)]
    assert image.snapshot() == before  # nothing written outside var/
    assert "Internal Server Error" not in (tmp_path / "before.log").read_text()  # never a 500
