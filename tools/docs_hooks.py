"""MkDocs hook for the documentation site (``mkdocs.yml``): the docstrings use Sphinx roles (``:class:`X```), which
Markdown renders as a literal ``:class:`` before the code; the reference shows the name as code alone, and a
``~dispatcher.index.schema`` as Sphinx would, by its last part (``schema``)."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|mod|func|meth|data|attr|exc|obj):<code>(~?)([^<]*)</code>")


def _name(m: re.Match[str]) -> str:
    name = m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)
    return f"<code>{name}</code>"


def on_page_content(html: str, **_: Any) -> str:
    """Drop the role in front of each rendered name."""
    return _ROLE.sub(_name, html)
