"""The README's read-API examples return what they claim for the README's own seed postbacks."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def section(title: str) -> str:
    """The README's text under `title`, up to the next heading (not a `# comment` in a code block)."""
    if f"\n{title}\n" not in README:
        return ""
    return re.split(r"\n#{2,4} ", README.split(f"\n{title}\n", 1)[1], maxsplit=1)[0]


def bash_urls(text: str, path_pattern: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [url for block in blocks for url in re.findall(rf'"http://localhost:8000({path_pattern}[^"]*)"', block)]


SEED_POSTBACKS = bash_urls(section("### Postback examples (from the original design)"), r"/partner/involve/event\?")
API_EXAMPLES = bash_urls(section("## Reading conversions and stats (API)"), r"/partner/involve/event/")


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
