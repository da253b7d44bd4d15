"""The system's Chromium through Playwright, for browser tests outside
tests/test_browser.py (which launches it the same way)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, Page, async_playwright

from tests.support.servers import need

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    executable = os.environ.get("NOTIFY_TEST_CHROMIUM") or need("chromium", "chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


def watch(page: Page, errors: list[str]) -> Page:
    """Collect the page's uncaught errors and dialogs (none may happen)."""
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
    return page
