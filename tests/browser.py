"""Headless Chromium for the page tests: Debian's ``chromium`` (``.ci/run`` installs it) driven by Playwright, which
is pointed at that executable and never downloads a browser of its own.

``visit(html, name)`` opens a page from a file, as a person would open a saved report, and records what a person
would not see: console messages, page errors, dialogs, and every request the page makes (requests to anything
but the file itself are refused and recorded). Screenshots are kept under ``$GEODISPATCH_TEST_ARTIFACTS`` (default
``tests/artifacts/``, ignored by git).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("GEODISPATCH_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))


@dataclass
class Visit:
    page: Any
    url: str
    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        """No page error, no console error or warning, no dialog (an injected alert), no request but the page."""
        assert self.errors == []
        assert [m for m in self.console if m[0] in ("error", "warning")] == []
        assert self.dialogs == []
        assert [u for u in self.requests if u != self.url] == []

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000  # a page with something on it
        return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture
def visit(browser: Any, tmp_path: Path) -> Iterator[Callable[[str, str], Visit]]:
    contexts = []

    def open_page(html: str, name: str) -> Visit:
        path = tmp_path / f"{name}.html"
        path.write_text(html, encoding="utf-8")
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(ctx)
        page = ctx.new_page()
        v = Visit(page, path.as_uri())
        page.on("console", lambda m: v.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: v.errors.append(str(e)))
        page.on("request", lambda r: v.requests.append(r.url))

        def dialog(d: Any) -> None:
            v.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        page.route("**/*", lambda route: route.continue_() if route.request.url == v.url else route.abort())
        page.goto(v.url)
        page.wait_for_load_state("load")
        return v

    yield open_page
    for ctx in contexts:
        ctx.close()
