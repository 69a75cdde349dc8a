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
    import, a page outside the site: each is a warning, and any warning fails the build (and this test). The
    reference documents every public module, and links every name of ``dispatcher.__all__`` to its entry."""
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                        "--site-dir", str(site)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log
    assert not re.search(r"^(WARNING|ERROR)\b", log, re.MULTILINE), log
    reference = "".join(f.read_text() for f in sorted((site / "api").rglob("index.html")))
    # generated from the docstrings, not left empty
    for anchor in ("dispatcher.index.camera_index.CameraIndex.resolve", "dispatcher.workflow.pipeline.Pipeline.run"):
        assert f'id="{anchor}"' in reference
    # every public module of every subpackage (tools/docs_hooks.py adds those a page does not name)
    modules = sorted(".".join(f.relative_to(ROOT).with_suffix("").parts) for f in (ROOT / "dispatcher").rglob("*.py")
                     if not f.name.startswith("_") and "cli" not in f.parts)
    assert len(modules) > 50
    missing = [m for m in modules if f'id="{m}"' not in reference]
    assert not missing, f"modules not in the reference: {missing}"
    # every public name, linked to the entry of the module that defines it
    front = (site / "api" / "index.html").read_text()
    unlinked = [n for n in dispatcher.__all__ if not re.search(rf'href="[^"]*#dispatcher\.[\w.]*\.{n}"', front)]
    assert not unlinked, f"public names without a link on the reference's front page: {unlinked}"
    # the Sphinx roles of the docstrings do not show as text (tools/docs_hooks.py)
    assert ":class:" not in reference and ":mod:" not in reference and "<code>~dispatcher" not in reference
    # the benchmark artifacts are part of the site
    for page in ("bench-10m", "loadtest-10m"):
        assert (site / page / "index.html").is_file()


def test_quickstart_example_prints_what_its_comments_say(capsys: pytest.CaptureFixture[str]) -> None:
    """The quickstart's first library example runs as written, and each ``print(...)  # value`` line prints its
    comment: the page cannot drift from the code."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text, re.DOTALL)[0]
    expected = [m.group(1) for m in re.finditer(r"^print\(.*\)\s+# (.+)$", example, re.MULTILINE)]
    assert len(expected) >= 5, "the example lost its printed results"
    exec(compile(example, "docs/quickstart.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == expected
