"""Self-contained HTML pages: one file, its styles and scripts inline, nothing fetched.

Every page carries a Content-Security-Policy that allows inline code and ``data:`` images and nothing else, so
even a mistake in a template cannot make the browser reach the network (an image origin can be allowed on
purpose, for optional map tiles). All text goes through :func:`esc`; data for scripts goes through
:func:`json_for_script`, which escapes ``<``, ``>`` and ``&`` so that no value can close the script element.
"""

from __future__ import annotations

import html
from typing import Any

import orjson

BASE_STYLE = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6475; --line: #d5d9e0; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); background: #fff; }
header, main, footer { padding: 12px 20px; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.note, footer { color: var(--muted); font-size: 12px; }
"""


def esc(text: Any) -> str:
    """Text for HTML content or a quoted attribute value."""
    return html.escape(str(text), quote=True)


def json_for_script(obj: Any) -> str:
    """JSON to embed in a ``<script type="application/json">`` element."""
    raw = orjson.dumps(obj).decode()
    return raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_csp(img_origins: tuple[str, ...] = ()) -> str:
    """The Content-Security-Policy of every page: inline code and ``data:`` images (and ``img_origins``'), nothing
    else; a server sending a page sends it as a header too."""
    img = " ".join(("data:", *img_origins))
    return (f"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src {img}; "
            "base-uri 'none'; form-action 'none'")


def page(title: str, body: str, *, style: str = "", script: str = "", img_origins: tuple[str, ...] = ()) -> str:
    """A whole HTML document. ``body``, ``style`` and ``script`` are markup built by the caller (text already
    escaped); ``img_origins`` lists origins images may come from besides ``data:`` (map tiles)."""
    csp = page_csp(img_origins)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{BASE_STYLE}{style}</style>\n</head>\n<body>\n{body}\n"
            + (f"<script>{script}</script>\n" if script else "") + "</body>\n</html>\n")
