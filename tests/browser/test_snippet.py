"""The site snippet (`<script src=".../invertornot.js" data-api=...>`) in real Chromium: a page on one origin
calling the real service on another (CORS), caching answers in localStorage."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Request

from tests.browser.conftest import (
    DIM_FILTER,
    EXPECTED,
    INVERT_FILTER,
    Site,
    image_state,
    wait_for_marks,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="package")]

CLASSIFIED = list(EXPECTED)


@pytest_asyncio.fixture(loop_scope="package")
async def dark_page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(color_scheme="dark")
    try:
        yield await context.new_page()
    finally:
        await context.close()


def record_api_calls(page: Page, service: str) -> list[Request]:
    calls: list[Request] = []
    page.on("request", lambda request: calls.append(request) if request.url.startswith(f"{service}/api/") else None)
    return calls


async def assert_marked(page: Page) -> None:
    for element_id, invert in EXPECTED.items():
        state = await image_state(page, element_id)
        expected = "invert" if invert else "invert-not"
        assert state["classes"] == expected and state["mark"] == expected, (element_id, state)
        assert state["filter"] == (INVERT_FILTER if invert else DIM_FILTER), (element_id, state)
    manual = await image_state(page, "manual-not")
    assert manual["classes"] == "invert-not" and manual["mark"] is None and manual["filter"] == "none"
    ancestor = await image_state(page, "manual-ancestor")
    assert ancestor["classes"] == "" and ancestor["mark"] is None and ancestor["filter"] == "none"


async def test_snippet_marks_images_across_origins_and_a_revisit_costs_no_request(
    dark_page: Page, site: Site, service: str
) -> None:
    page = dark_page
    calls = record_api_calls(page, service)
    await page.goto(site.url(f"/page.html?snippet={service}"))
    await wait_for_marks(page, CLASSIFIED)
    await assert_marked(page)
    assert [(call.method, call.url) for call in calls] == [("POST", f"{service}/api/v1/classify")]
    assert await page.evaluate("JSON.parse(localStorage.getItem('invertornot.cache')).model") is not None
    assert await page.evaluate("!!document.getElementById('invertornot-style')")

    # Same site, now with the stylesheet linked instead of injected (data-css="none"): answers come from
    # localStorage, and the shipped CSS file gives the same filters.
    await page.goto(site.url(f"/page.html?snippet={service}&css=link"))
    await wait_for_marks(page, CLASSIFIED)
    await assert_marked(page)
    assert not await page.evaluate("!!document.getElementById('invertornot-style')")
    assert len(calls) == 1


async def test_snippet_in_light_mode_does_nothing(browser: Browser, site: Site, service: str) -> None:
    context = await browser.new_context(color_scheme="light")
    try:
        page = await context.new_page()
        calls = record_api_calls(page, service)
        await page.goto(site.url(f"/page.html?snippet={service}"))
        await page.wait_for_function("window.InvertOrNot && window.InvertOrNot.version === '0.1.0'")
        await page.wait_for_timeout(300)
        assert calls == []
        assert await page.evaluate("document.querySelectorAll('[data-invertornot]:not(#proxied)').length") == 0
        assert (await image_state(page, "diagram"))["filter"] == "none"
    finally:
        await context.close()
