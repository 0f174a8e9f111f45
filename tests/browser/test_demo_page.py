"""The demo page at `/` in real Chromium against the real service: upload, URL, report, screenshots."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import DIM_FILTER, INVERT_FILTER, PHOTO, UPLOAD_DIAGRAM, Site
from tests.proxy.service_support import IMAGES

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="package")]


async def computed_filter(page: Page, selector: str) -> str:
    value: str = await page.eval_on_selector(selector, "(element) => getComputedStyle(element).filter")
    return value


async def shown(page: Page, selector: str) -> bool:
    """The image has decoded and has a size: the user sees it."""
    loaded: bool = await page.eval_on_selector(selector, "(img) => img.complete && img.naturalWidth > 0")
    return loaded


async def report_wrong_verdict(page: Page, service: str, sent: dict[str, object]) -> None:
    """Click the report button: the page sends `sent` and shows what the API answered, success or error
    (the corrections endpoint may be missing on a server, or may not hold an uploaded image)."""
    async with page.expect_response(lambda response: response.url == f"{service}/api/v1/corrections") as info:
        await page.click("#report-button")
    answer = await info.value
    assert answer.request.method == "POST" and answer.request.post_data_json == sent
    body = await answer.json()
    report_status = page.locator("#report-status")
    if answer.status == 202:
        await expect(report_status).to_have_text(f"Thank you: report {body['id']} is {body['status']}.")
        await expect(page.locator("#report-error")).to_be_hidden()
    else:
        error = body["error"]
        shown_error = f"Not reported: HTTP {answer.status} {error['code']}: {error['message']}"
        await expect(report_status).to_have_text(shown_error)
        await expect(page.locator("#report-error")).to_be_visible()
        await expect(page.locator("#report-error")).to_contain_text(f'"code": "{error["code"]}"')


async def test_demo_page_shows_verdicts_for_an_upload_and_a_url_and_reports_a_wrong_one(
    browser: Browser, service: str, site: Site, http: aiohttp.ClientSession, artifacts: Path
) -> None:
    async with http.get(f"{service}/healthz") as response:
        model = (await response.json())["model"]
    context = await browser.new_context(color_scheme="dark", viewport={"width": 1200, "height": 900})
    try:
        page = await context.new_page()
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))

        await page.goto(f"{service}/")
        await expect(page.locator("#model-version")).to_have_text(model)

        # Upload a diagram from the dataset.
        upload = IMAGES / UPLOAD_DIAGRAM
        await page.set_input_files("#file", upload)
        await expect(page.locator("#verdict-text")).to_have_text("Invert")
        await expect(page.locator("#verdict-model")).to_have_text(model)
        await expect(page.locator("#sha256")).to_have_text(hashlib.sha256(upload.read_bytes()).hexdigest())
        confidence = await page.locator("#confidence").text_content()
        assert confidence is not None and 50 <= float(confidence.rstrip(" %")) <= 100
        await expect(page.locator("#panel-inverted")).to_have_class("chosen")
        await expect(page.locator("#panel-dimmed")).not_to_have_class("chosen")
        for selector in ("#img-original", "#img-inverted", "#img-dimmed"):
            await page.wait_for_function("(s) => document.querySelector(s).naturalWidth > 0", arg=selector)
        assert await computed_filter(page, "#img-original") == "none"
        assert await computed_filter(page, "#img-inverted") == INVERT_FILTER
        assert await computed_filter(page, "#img-dimmed") == DIM_FILTER
        assert await page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(18, 18, 18)"
        await page.screenshot(path=artifacts / "demo-page.png", full_page=True)

        # Report the verdict as wrong: an upload is named by its hash.
        sha256 = hashlib.sha256(upload.read_bytes()).hexdigest()
        await report_wrong_verdict(page, service, {"sha256": sha256, "invert": False})
        await page.screenshot(path=artifacts / "demo-page-report.png", full_page=True)

        # Paste the URL of a photo.
        await page.fill("#url", site.url(f"/img/{PHOTO}"))
        await page.click("#url-form button[type=submit]")
        await expect(page.locator("#verdict-text")).to_have_text("Don't invert (dim)")
        await expect(page.locator("#panel-dimmed")).to_have_class("chosen")
        await page.wait_for_function("document.querySelector('#img-dimmed').naturalWidth > 0")
        assert await shown(page, "#img-original")
        # A pasted URL is reported by URL, so the server can fetch and keep the image.
        await report_wrong_verdict(page, service, {"url": site.url(f"/img/{PHOTO}"), "invert": True})

        # An image URL that does not exist: the API's error, word for word.
        await page.fill("#url", site.url("/img/missing.png"))
        await page.click("#url-form button[type=submit]")
        await expect(page.locator("#status")).to_contain_text("HTTP 404 not_found")
        await expect(page.locator("#error")).to_contain_text('"code": "not_found"')

        # Nothing came from anywhere but the service, the image's site, and the user's own file.
        assert all(url.startswith((service, site.base, "blob:", "data:")) for url in requested), requested
        # The browser itself reports the API's 4xx answers ("Failed to load resource"); the page adds nothing.
        noise = [line for line in console if line.startswith(("pageerror", "warning", "error"))]
        assert [line for line in noise if "Failed to load resource" not in line] == []
    finally:
        await context.close()
