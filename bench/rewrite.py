"""Page rewriting speed: find_images and rewrite_page on each page in ../shared/pages (and the fixtures).

Prints milliseconds per page (median of --repeat runs) for find_images and for rewrite_page with every
image marked, and for the page proxy's path (one `Page` from the fetched bytes: images, then render),
plus the parse-only baseline (lexbor parse + serialise) and the nesting check alone (which also takes
the tag census), so that the cost of our own work is visible. The last column is the proxy path's CPU
time (the machine may be shared: CPU time is the steadier figure). Usage:
python bench/rewrite.py [--repeat N] [DIR ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selectolax.lexbor import LexborDocumentOptions, LexborHTMLParser  # noqa: E402

from proxy import sanitize  # noqa: E402
from proxy.nesting import estimate_nesting  # noqa: E402
from proxy.rewrite import Mark, Page, find_images, rewrite_page  # noqa: E402

DEFAULT_DIRS = [ROOT.parent / "shared" / "pages", ROOT / "tests" / "fixtures" / "pages"]
# Any absolute URL of the right site does: it is where relative URLs resolve.
PAGE_URLS = {"arwiki": "https://ar.wikipedia.org/wiki/", "cswiki": "https://cs.wikipedia.org/wiki/",
             "zhwiki": "https://zh.wikipedia.org/wiki/"}  # fmt: skip


def median_ms(run: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeat):
        started = clock()
        run()
        times.append(clock() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=Path, default=DEFAULT_DIRS)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    pages = sorted(path for folder in args.dirs if folder.is_dir() for path in folder.glob("*.html"))
    if not pages:
        sys.exit("no pages found")
    columns = ("parse+ser", "nesting", "find", "rewrite", "page", "page CPU")
    print(f"{'page':44} {'KB':>6} {'images':>6} " + " ".join(f"{name:>9}" for name in columns) + "  (ms)")
    for path in pages:
        html = path.read_text(encoding="utf-8")
        data = html.encode()
        url = next(
            (u for prefix, u in PAGE_URLS.items() if path.name.startswith(prefix)), "https://en.wikipedia.org/wiki/"
        )
        images = find_images(html, url)
        marks = {image.url: Mark(invert=n % 2 == 0, p_invert=0.5, model="bench") for n, image in enumerate(images)}

        def parse_and_serialise(data: bytes = data) -> object:
            return LexborHTMLParser(data, options=LexborDocumentOptions.WO_EVENTS).html

        baseline = median_ms(parse_and_serialise, args.repeat)
        nesting = median_ms(lambda data=data: estimate_nesting(data, names=sanitize.CENSUS_TAGS), args.repeat)  # type: ignore[misc]
        find = median_ms(lambda html=html, url=url: find_images(html, url), args.repeat)  # type: ignore[misc]
        rewrite = median_ms(lambda html=html, url=url, marks=marks: rewrite_page(html, url, marks), args.repeat)  # type: ignore[misc]

        def proxy_path(data: bytes = data, url: str = url, marks: dict[str, Mark] = marks) -> bytes:
            page = Page(data, url)
            page.images()
            return page.render(marks)

        both = median_ms(proxy_path, args.repeat)
        cpu = median_ms(proxy_path, args.repeat, time.process_time)
        timings = " ".join(f"{ms:9.1f}" for ms in (baseline, nesting, find, rewrite, both, cpu))
        print(f"{path.name[:44]:44} {len(data) / 1024:6.0f} {len(images):6d} {timings}")


if __name__ == "__main__":
    main()
