"""MkDocs hook for the documentation site (``mkdocs.yml``): the docstrings use Sphinx roles (``:class:`X```), which
Markdown renders as a literal ``:class:`` before the code; the reference shows the name as code alone."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|mod|func|meth|data|attr|exc|obj):(<code>)")


def on_page_content(html: str, **_: Any) -> str:
    """Drop the role in front of each rendered name."""
    return _ROLE.sub(r"\1", html)
