"""The locks: every runtime and test dependency pinned with hashes, agreeing with the
top-level pins, and installed as locked."""

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT_DIR = Path(__file__).resolve().parents[1]
PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def locked(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """package -> (version, hashes) of a pip-compile lock file."""
    text = (PROJECT_DIR / name).read_text()
    entries: dict[str, tuple[str, frozenset[str]]] = {}
    # An entry is its pin line plus the `--hash` continuation lines under it.
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = PIN_RE.match(block)
        if match:
            hashes = frozenset(re.findall(r"--hash=(sha256:[0-9a-f]{64})", block))
            entries[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return entries


def top_level(name: str) -> dict[str, str]:
    """package -> pinned version of a requirements file, following `-r` includes."""
    pins: dict[str, str] = {}
    for line in (PROJECT_DIR / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins.update(top_level(line[3:].strip()))
        elif line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{name}: {line} is not pinned with =="
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


@pytest.mark.parametrize(
    ("lock", "source"), [("requirements.lock", "requirements.txt"), ("requirements-dev.lock", "requirements-dev.txt")]
)
def test_every_locked_package_has_hashes_and_the_top_level_pins_are_locked(lock, source):
    entries = locked(lock)
    assert len(entries) > 10
    assert [name for name, (_version, hashes) in entries.items() if not hashes] == []
    pins = top_level(source)
    assert {name: entries.get(name, ("missing",))[0] for name in pins} == pins


def test_the_dev_lock_holds_the_runtime_lock_unchanged():
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_the_audit_tool_is_locked_for_the_test_command():
    assert "pip-audit" in locked("requirements-dev.lock")
    assert "pip-audit" in (PROJECT_DIR / "Makefile").read_text()


def test_the_environment_running_the_tests_is_the_dev_lock():
    # A stale virtualenv (`make install-dev` reinstalls it) would test other code than CI's.
    installed = {canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    differing = {
        name: (version, installed.get(name))
        for name, (version, _hashes) in locked("requirements-dev.lock").items()
        if installed.get(name) != version
    }
    assert differing == {}


def test_the_image_starts_from_an_exact_python_release_and_installs_the_runtime_lock():
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base
    assert re.search(r"^RUN pip install --require-hashes -r requirements\.lock$", dockerfile, flags=re.MULTILINE)
    assert "requirements-dev" not in dockerfile


def test_make_installs_the_locks_with_hashes():
    makefile = (PROJECT_DIR / "Makefile").read_text()
    assert "pip install --quiet --require-hashes -r requirements.lock" in makefile
    assert "pip install --quiet --require-hashes -r requirements-dev.lock" in makefile
    assert not re.search(r"pip install [^\n]*-r requirements(-dev)?\.txt", makefile)
