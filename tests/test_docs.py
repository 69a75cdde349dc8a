"""The documentation site (``mkdocs.yml``, ``docs/``) builds with warnings as errors, and its API reference covers
the public API."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import dispatcher

ROOT = Path(__file__).resolve().parents[1]


def test_site_builds_strict_with_the_api_reference(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a broken link or anchor, a docstring griffe cannot parse, a module that does not
    import, a page outside the site: each is a warning, and any warning fails the build (and this test)."""
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                        "--site-dir", str(site)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log
    assert not re.search(r"^(WARNING|ERROR)\b", log, re.MULTILINE), log
    # the reference was generated from the docstrings, not left empty
    index = (site / "api" / "index-package" / "index.html").read_text()
    assert 'id="dispatcher.index.camera_index.CameraIndex.resolve"' in index
    pipeline = (site / "api" / "workflow" / "index.html").read_text()
    assert 'id="dispatcher.workflow.pipeline.Pipeline.run"' in pipeline
    # the Sphinx roles of the docstrings do not show as text (tools/docs_hooks.py)
    for page in (index, pipeline):
        assert ":class:" not in page and ":mod:" not in page and "<code>~dispatcher" not in page
    # the benchmark artifacts are part of the site
    for page in ("bench-10m", "loadtest-10m"):
        assert (site / page / "index.html").is_file()


def test_reference_page_names_every_public_name() -> None:
    """``docs/api/index.md`` links each name of ``dispatcher.__all__`` to its entry; the strict build checks that
    every link resolves, this test that none is missing."""
    text = (ROOT / "docs" / "api" / "index.md").read_text()
    linked = set(re.findall(r"\[`([A-Za-z_][A-Za-z0-9_]*)`\]\[dispatcher\.[A-Za-z0-9_.]+\]", text))
    missing = sorted(set(dispatcher.__all__) - linked)
    assert not missing, f"not in docs/api/index.md: {missing}"


def test_quickstart_example_prints_what_its_comments_say(capsys: pytest.CaptureFixture[str]) -> None:
    """The quickstart's first library example runs as written, and each ``print(...)  # value`` line prints its
    comment: the page cannot drift from the code."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text, re.DOTALL)[0]
    expected = [m.group(1) for m in re.finditer(r"^print\(.*\)\s+# (.+)$", example, re.MULTILINE)]
    assert len(expected) >= 5, "the example lost its printed results"
    exec(compile(example, "docs/quickstart.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == expected
