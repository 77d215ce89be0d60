"""The documentation: README.md is a front page (the two set-up commands first, at most 200
lines), the site builds strictly (`mkdocs build --strict`: no broken link, no unresolved API
reference) with every key of the config schema on its configuration page, and every command
block of README.md, docs/ and what docs/ includes is one a test runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from readme import README, ROOT, blocks

from unet_search.space.reference import SECTIONS

DOCS = ROOT / "docs"
# Each command block, by its file and first command, and what runs it as written.
RUN_BY = {
    ("README.md", "make demo"): ".ci/run (make test), and `make demo` as the demo",
    ("README.md", "source .venv/bin/activate"): "tests/cli/test_readme.py (the tour)",
    ("README.md", "unet-search predict --model"): "tests/cli/test_readme.py (the tour)",
    ("cluster/README.md", "source .venv/bin/activate"): "tests/cli/test_cluster.py",
    ("cluster/README.md", "unet-search resume"): "tests/cli/test_cluster.py",
}


def _pages() -> list[Path]:
    """README.md, the site's pages, and the files they include (``--8<-- "path"``)."""
    pages = [README, *sorted(DOCS.glob("*.md"))]
    included = [
        ROOT / name
        for page in pages
        for name in re.findall(r'^--8<-- "([^"]+)"$', page.read_text(), re.M)
    ]
    return pages + included


def test_every_command_block_is_one_a_test_runs() -> None:
    found = {
        (str(page.relative_to(ROOT)), command.text)
        for page in _pages()
        for block in blocks(page)
        for command in block[:1]
    }
    known = {
        (page, first)
        for page, first in found
        if any(page == p and first.startswith(prefix) for p, prefix in RUN_BY)
    }
    assert found == known, f"blocks no test runs: {sorted(found - known)}"
    assert len(found) == len(RUN_BY)


def test_the_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert [c.text for c in blocks(README)[0]] == ["make demo", "make test"]
    for heading in ("## Your own data", "## Use the best model", "## Read on"):
        assert heading in text
    for linked in re.findall(r"\]\(((?:docs|cluster|bench)/[^)#]+)", text):
        assert (ROOT / linked).is_file(), linked


def test_the_site_builds_strictly_with_every_configuration_key(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    page = (tmp_path / "site" / "configuration" / "index.html").read_text()
    for cls in SECTIONS:
        assert f"<code>{cls.section}</code>" in page, cls.section
        for name in cls.model_fields:
            assert f"<code>{name}</code>" in page, f"{cls.section}.{name}"
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "load_model" in api and "export_package" in api
    cluster = (tmp_path / "site" / "cluster" / "index.html").read_text()
    assert "cluster/local/start.sh" in cluster  # cluster/README.md, included
