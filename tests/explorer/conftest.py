"""Fixtures of the browser tests that drive the app on the tiny workspace (test_browser_ui.py,
test_browser_compare.py): one app subprocess and one Chromium per test module. test_browser.py has its own."""

from __future__ import annotations

import pytest

from tests.explorer.test_browser import launch_browser, serve


@pytest.fixture(scope="module")
def url(tiny_ws, tmp_path_factory):
    """The app serving the tiny workspace, as a URL."""
    try:
        with serve(tiny_ws.path, tmp_path_factory.mktemp("app") / "app.log") as (u, _):
            yield u
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()
