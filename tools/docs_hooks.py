"""MkDocs hooks for the documentation site (``mkdocs.yml``), so that the API reference follows the code without
hand-kept lists:

- ``<!-- modules of dispatcher.geo -->`` on a reference page becomes a ``::: module`` entry for every public
  module of that package the page does not already name (new modules appear by themselves, after the ones the
  page orders by hand);
- ``<!-- public names -->`` becomes the list of ``dispatcher.__all__``, each name linked to its entry in the module
  that defines it (found by griffe, which mkdocstrings uses too), grouped by subpackage;
- the docstrings use Sphinx roles (``:class:`X```), which Markdown renders as a literal ``:class:`` before the
  code: the rendered page shows the name as code alone, and ``~dispatcher.index.schema`` by its last part, as
  Sphinx does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

_MODULES = re.compile(r"^<!-- modules of ([\w.]+) -->$", re.MULTILINE)
_PUBLIC = "<!-- public names -->"
_ROLE = re.compile(r":(?:class|mod|func|meth|data|attr|exc|obj):<code>(~?)([^<]*)</code>")


def _root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def _more_modules(package: str, markdown: str, root: Path) -> str:
    """``::: package.module`` for each public module of ``package`` not yet on the page."""
    folder = root.joinpath(*package.split("."))
    names = sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))
    named = set(re.findall(r"^::: ([\w.]+)", markdown, re.MULTILINE))
    return "\n\n".join(f"::: {package}.{n}" for n in names if f"{package}.{n}" not in named)


def _public_names(root: Path) -> str:
    """``dispatcher.__all__`` as Markdown: one line per subpackage, each name a cross-reference to its entry."""
    package = griffe.load("dispatcher", search_paths=[str(root)])
    groups: dict[str, list[str]] = {}
    for name in package.exports or ():
        target = package[name]
        path = target.final_target.path if target.is_alias else target.path
        groups.setdefault(path.split(".")[1], []).append(f"[`{name}`][{path}]")
    return "\n\n".join(f"**dispatcher.{group}**: " + ", ".join(links) for group, links in groups.items())


def on_page_markdown(markdown: str, config: Any, **_: Any) -> str:
    """Expand the markers of the reference pages."""
    root = _root(config)
    markdown = _MODULES.sub(lambda m: _more_modules(m.group(1), markdown, root), markdown)
    if _PUBLIC in markdown:
        markdown = markdown.replace(_PUBLIC, _public_names(root))
    return markdown


def _name(m: re.Match[str]) -> str:
    name = m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)
    return f"<code>{name}</code>"


def on_page_content(html: str, **_: Any) -> str:
    """Drop the role in front of each rendered name."""
    return _ROLE.sub(_name, html)
