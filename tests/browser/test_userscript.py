"""The userscript in real Chromium, with a userscript manager's GM APIs provided by a shim, against a test
page and the real service (shipped model) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aiohttp
import pytest
from playwright.async_api import Dialog, Page

from tests.browser.conftest import (
    CACHE_KEY,
    DIAGRAM,
    DIM_FILTER,
    EXPECTED,
    INVERT_FILTER,
    LAZY_DIAGRAM,
    PAINTING,
    PHOTO,
    PLOT,
    SETTINGS_KEY,
    GmShim,
    OpenUserscriptPage,
    Site,
    free_port,
    image_state,
    wait_for_marks,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="package")]

CLASSIFIED = list(EXPECTED)
MENU_CLEAR = "InvertOrNot: clear cache"
MENU_SERVER = "InvertOrNot: set server URL…"


def menu_toggle(host: str) -> str:
    return f"InvertOrNot: turn on/off on {host}"


async def model_version(http: aiohttp.ClientSession, service: str) -> str:
    async with http.get(f"{service}/healthz") as response:
        version: str = (await response.json())["model"]
    return version


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def settled_inactive(page: Page, shim: GmShim) -> None:
    """Wait until the script has started (it reads its cache first) and had time to act, had it wanted to."""
    await eventually(lambda: CACHE_KEY in shim.reads)
    await page.wait_for_timeout(300)


async def marked_count(page: Page) -> int:
    """Images carrying a mark, apart from the one the page proxy marked before the script came."""
    count: int = await page.evaluate("document.querySelectorAll('[data-invertornot]:not(#proxied)').length")
    return count


async def is_active(page: Page) -> bool:
    active: bool = await page.evaluate("document.documentElement.classList.contains('invertornot-active')")
    return active


async def add_image(page: Page, element_id: str, src: str) -> None:
    await page.evaluate(
        """([id, src]) => {
            const img = document.createElement('img');
            img.id = id;
            img.src = src;
            document.body.appendChild(img);
        }""",
        [element_id, src],
    )


async def assert_verdicts_shown(page: Page, model: str) -> None:
    for element_id, invert in EXPECTED.items():
        state = await image_state(page, element_id)
        expected = "invert" if invert else "invert-not"
        assert state["mark"] == expected and state["classes"] == expected, (element_id, state)
        assert state["filter"] == (INVERT_FILTER if invert else DIM_FILTER), (element_id, state)
        assert state["model"] == model
        assert (float(state["p"]) >= 0.5) is invert


async def assert_left_alone(page: Page) -> None:
    """Images with manual markup, no http(s) URL, spacer size, or the page proxy's mark are not touched."""
    assert await image_state(page, "manual-not") == {
        "classes": "invert-not",
        "mark": None,
        "p": None,
        "model": None,
        "filter": "none",
    }
    assert await image_state(page, "manual-ancestor") == {
        "classes": "",
        "mark": None,
        "p": None,
        "model": None,
        "filter": "none",
    }
    inline = await image_state(page, "inline")  # a data: URL the server could not fetch
    assert inline["mark"] is None and inline["filter"] == "none"
    tiny = await image_state(page, "tiny")  # spacer-sized: not worth a request
    assert tiny["mark"] is None and tiny["filter"] == "none"
    # Already marked by the page proxy: not asked again, and the script's CSS shows the mark.
    proxied = await image_state(page, "proxied")
    assert proxied["classes"] == "invert" and proxied["mark"] == "invert" and proxied["filter"] == INVERT_FILTER


async def test_dark_mode_batches_marks_filters_watches_the_dom_and_caches(
    open_userscript_page: OpenUserscriptPage, site: Site, service: str, http: aiohttp.ClientSession
) -> None:
    model = await model_version(http, service)
    opened = await open_userscript_page()
    page, shim = opened.page, opened.shim
    await page.goto(site.url("/page.html"))
    await wait_for_marks(page, CLASSIFIED)

    # One request for the whole page, with exactly the images without manual markup, in page order.
    assert shim.classified_urls() == [[site.url(f"/img/{name}") for name in (DIAGRAM, PLOT, PHOTO, PAINTING)]]
    assert await is_active(page)
    await assert_verdicts_shown(page, model)
    await assert_left_alone(page)

    # Hover shows the original; moving away restores the filter.
    await page.hover("#diagram")
    assert (await image_state(page, "diagram"))["filter"] == "none"
    await page.mouse.move(0, 0)
    assert (await image_state(page, "diagram"))["filter"] == INVERT_FILTER

    # A popup / lazily added image: noticed by the MutationObserver and sent in a batch of its own.
    await add_image(page, "lazy", f"/img/{LAZY_DIAGRAM}")
    await wait_for_marks(page, ["lazy"])
    assert (await image_state(page, "lazy"))["filter"] == INVERT_FILTER
    assert shim.classified_urls()[1:] == [[site.url(f"/img/{LAZY_DIAGRAM}")]]

    # A lazy image known only by its srcset has no URL until it scrolls into view and loads. (A URL new to
    # the browser: one in its memory cache would load at once.)
    await page.evaluate(
        """(srcset) => {
            const spacer = document.createElement('div');
            spacer.style.height = '20000px';
            const img = document.createElement('img');
            img.id = 'srcset-only';
            img.loading = 'lazy';
            img.srcset = srcset;
            document.body.append(spacer, img);
        }""",
        f"/img/{PAINTING}?lazy 1x",
    )
    await page.wait_for_timeout(100)
    assert (await image_state(page, "srcset-only"))["mark"] is None
    await page.locator("#srcset-only").scroll_into_view_if_needed()
    await wait_for_marks(page, ["srcset-only"])
    assert (await image_state(page, "srcset-only"))["filter"] == DIM_FILTER
    assert shim.classified_urls()[2:] == [[site.url(f"/img/{PAINTING}?lazy")]]

    # A lazy loader swapping the real src in: re-judged (a cached answer: no request).
    await page.evaluate("(src) => { document.getElementById('photo').src = src; }", f"/img/{PLOT}")
    await page.wait_for_function("document.getElementById('photo').getAttribute('data-invertornot') === 'invert'")
    assert len(shim.requests) == 3

    # The answers are in GM storage under the model's version.
    cache = shim.cache()
    assert cache is not None and cache["model"] == model
    expected_urls = {site.url(f"/img/{name}") for name in (DIAGRAM, PLOT, PHOTO, PAINTING, LAZY_DIAGRAM)}
    expected_urls.add(site.url(f"/img/{PAINTING}?lazy"))
    assert set(cache["entries"]) == expected_urls
    assert cache["entries"][site.url(f"/img/{PHOTO}")][0] == 0

    # A second visit costs zero requests and shows the same.
    await page.reload()
    await wait_for_marks(page, CLASSIFIED)
    assert len(shim.requests) == 3
    await assert_verdicts_shown(page, model)
    await assert_left_alone(page)
    assert opened.complaints() == []


async def test_light_mode_does_nothing_until_the_os_turns_dark_and_back(
    open_userscript_page: OpenUserscriptPage, site: Site, service: str, http: aiohttp.ClientSession
) -> None:
    opened = await open_userscript_page(color_scheme="light")
    page, shim = opened.page, opened.shim
    await page.goto(site.url("/page.html"))
    await settled_inactive(page, shim)
    assert shim.requests == []
    assert await marked_count(page) == 0 and not await is_active(page)
    assert (await image_state(page, "diagram"))["filter"] == "none"

    await page.emulate_media(color_scheme="dark")  # the OS switches: re-evaluated at once
    await wait_for_marks(page, CLASSIFIED)
    await assert_verdicts_shown(page, await model_version(http, service))

    await page.emulate_media(color_scheme="light")
    await page.wait_for_function("!document.documentElement.classList.contains('invertornot-active')")
    for element_id in CLASSIFIED:
        assert (await image_state(page, element_id))["filter"] == "none"
    assert len(shim.requests) == 1
    assert opened.complaints() == []


async def test_wikipedia_theme_classes_decide_over_the_os_preference(
    open_userscript_page: OpenUserscriptPage, site: Site
) -> None:
    opened = await open_userscript_page(color_scheme="light")
    page = opened.page
    # Night theme on a light OS: active.
    await page.goto(site.url("/page.html?theme=night"))
    await wait_for_marks(page, CLASSIFIED)
    assert (await image_state(page, "diagram"))["filter"] == INVERT_FILTER

    async def set_theme(theme: str) -> None:
        await page.evaluate("(cls) => { document.documentElement.className = cls; }", f"skin-theme-clientpref-{theme}")

    await set_theme("os")  # "automatic" follows the (light) OS
    await page.wait_for_function("!document.documentElement.classList.contains('invertornot-active')")
    assert (await image_state(page, "diagram"))["filter"] == "none"
    await page.emulate_media(color_scheme="dark")
    await page.wait_for_function("document.documentElement.classList.contains('invertornot-active')")
    assert (await image_state(page, "diagram"))["filter"] == INVERT_FILTER
    await set_theme("day")  # the reader chose light on a dark OS
    await page.wait_for_function("!document.documentElement.classList.contains('invertornot-active')")
    assert (await image_state(page, "photo"))["filter"] == "none"
    assert len(opened.shim.requests) == 1


@pytest.mark.parametrize("failure", ["unreachable", "error-status"])
async def test_failing_api_leaves_images_dimmed_never_inverted_and_quiet(
    open_userscript_page: OpenUserscriptPage, site: Site, failure: str
) -> None:
    # No server on that port; or a server without the API (404 for every request).
    api = f"http://127.0.0.1:{free_port()}" if failure == "unreachable" else site.base
    opened = await open_userscript_page(apiUrl=api)
    page = opened.page
    await page.goto(site.url("/page.html"))
    await wait_for_marks(page, CLASSIFIED, ("error",))
    for element_id in CLASSIFIED:
        state = await image_state(page, element_id)
        assert state["classes"] == "invert-not" and state["filter"] == DIM_FILTER, (element_id, state)
    await assert_left_alone(page)

    # Further images are dimmed at once: no request while the API is backing off.
    await add_image(page, "lazy", f"/img/{LAZY_DIAGRAM}")
    await wait_for_marks(page, ["lazy"], ("error",))
    assert (await image_state(page, "lazy"))["filter"] == DIM_FILTER
    assert len(opened.shim.requests) == 1
    assert opened.shim.cache() is None
    assert opened.complaints() == []


async def test_answers_of_another_model_are_dropped_and_the_cache_stays_capped(
    open_userscript_page: OpenUserscriptPage, site: Site, service: str, http: aiohttp.ClientSession
) -> None:
    now_ms = time.time() * 1000
    shim = GmShim(http)
    shim.settings(apiUrl=service, cacheMaxEntries=3)
    photo, gone = site.url(f"/img/{PHOTO}"), site.url("/img/gone.png")
    stale = {
        "version": 1,
        "model": "an-older-model",
        "modelSeenAt": now_ms - 2 * 86400 * 1000,  # last heard of two days ago: ask again
        "entries": {photo: [1, 0.99, now_ms - 3600 * 1000], gone: [0, 0.01, now_ms]},
    }
    shim.values[CACHE_KEY] = json.dumps(stale)
    opened = await open_userscript_page(shim=shim)
    page = opened.page
    await page.goto(site.url("/page.html"))
    await wait_for_marks(page, CLASSIFIED)

    assert len(shim.classified_urls()) == 1 and photo in shim.classified_urls()[0]
    assert (await image_state(page, "photo"))["filter"] == DIM_FILTER  # the old "invert" was not used
    await eventually(lambda: len((shim.cache() or {}).get("entries", {})) == 3)
    cache = shim.cache()
    assert cache is not None and cache["model"] == await model_version(http, service)
    assert gone not in cache["entries"] and len(cache["entries"]) == 3


async def test_menu_clears_the_cache_sets_the_server_and_turns_the_script_off_per_site(
    open_userscript_page: OpenUserscriptPage, site: Site, service: str
) -> None:
    opened = await open_userscript_page()
    page, shim = opened.page, opened.shim
    await page.goto(site.url("/page.html"))
    await wait_for_marks(page, CLASSIFIED)
    menu = await page.evaluate("Object.keys(window.__gmMenu)")
    assert set(menu) == {MENU_CLEAR, MENU_SERVER, menu_toggle("127.0.0.1")}
    await eventually(lambda: shim.cache() is not None)

    await page.evaluate(f"window.__gmMenu[{MENU_CLEAR!r}]()")
    await eventually(lambda: shim.cache() is None)

    answers: list[str] = []

    async def answer(dialog: Dialog) -> None:
        answers.append(dialog.message)
        await dialog.accept(f"{service}/")

    page.once("dialog", answer)
    await page.evaluate(f"window.__gmMenu[{MENU_SERVER!r}]()")
    await eventually(lambda: answers != [] and json.loads(shim.values[SETTINGS_KEY])["apiUrl"] == service)

    await page.evaluate(f"window.__gmMenu[{menu_toggle('127.0.0.1')!r}]()")  # off: every mark removed
    await page.wait_for_function("document.querySelectorAll('[data-invertornot]:not(#proxied)').length === 0")
    assert not await is_active(page)
    assert (await image_state(page, "diagram")) == {
        "classes": "",
        "mark": None,
        "p": None,
        "model": None,
        "filter": "none",
    }
    assert json.loads(shim.values[SETTINGS_KEY])["disabledHosts"] == ["127.0.0.1"]
    requests = len(shim.requests)
    await page.reload()
    await eventually(lambda: shim.reads.count(SETTINGS_KEY) >= 2)
    await page.wait_for_timeout(300)
    assert await marked_count(page) == 0 and len(shim.requests) == requests

    await page.evaluate(f"window.__gmMenu[{menu_toggle('127.0.0.1')!r}]()")  # on again, without a reload
    await wait_for_marks(page, CLASSIFIED)
    assert opened.complaints() == []
