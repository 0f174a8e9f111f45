"""The page proxy (GET /api/v1/page) on loopback: a large page with every verdict cached, and cold pages.

Starts `invertornot serve` (default model, in-memory database) in a subprocess on 127.0.0.1 and a local
upstream in another. The upstream serves a copy of the ~900 KB Parsoid "Dog" page from ../shared/pages
(55 images) with its `//upload.wikimedia.org/` image URLs pointed at the upstream itself, and real dataset
images at those paths, so nothing outside this machine is contacted (checked before the run). Prints:

1. the references: fetching the page straight from the upstream (the proxy's own upstream fetch costs
   this much), parse + list images + rewrite + encode of the page in-process (bench/rewrite.py), and
   classifying dataset images in-process (what a cold page's images cost before any HTTP);
2. the Dog page through the proxy with every verdict cached: p50 / p99 over --requests requests, and the
   server process's CPU time per request (the machine may be shared: CPU time is the steadier figure), once
   with the page's bytes changing every request (so it is parsed, its images listed and looked up, and
   rewritten each time) and once unchanged (the kept rendering is reused after the verdicts check);
3. cold pages with N = 10 / 25 / 50 never-seen images (every image fetched, decoded and classified by
   the model): total latency per page (median of --cold-runs pages) and per image.

Requests are sequential, one at a time, so each figure is one request's latency. Usage, from the
repository root:

    .venv/bin/python bench/page.py [--requests 60] [--cold-runs 3] [--classifier model|heuristic]
        [--server-arg=--page-concurrency=16 ...] [--server-env NAME=VALUE ...]

The server's "page faults/request" line tells how often the kernel had to hand memory back to the server
process: glibc returns freed megabyte blocks (a parsed page's tree, its text) to the kernel, and on a VM
each page of them costs microseconds to fault in again on the next request. ``--server-env
MALLOC_TRIM_THRESHOLD_=67108864 --server-env MALLOC_MMAP_THRESHOLD_=33554432`` shows what keeping them costs
and saves.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script, not a package

import aiohttp  # noqa: E402

from bench.serve import free_port, percentile, stop_processes, wait_until_up  # noqa: E402

IMAGES = ROOT / "classifier" / "dataset" / "images"
DOG = ROOT.parent / "shared" / "pages" / "enwiki-Dog.parsoid-page-html.html"
IMAGE_HOST = "upload.wikimedia.org"
COLD_SIZES = (10, 25, 50)


def local_dog_page(port: int) -> str:
    """The Dog page with its image host replaced by the local upstream (protocol-relative URLs resolve
    against the http: page URL)."""
    return DOG.read_text(encoding="utf-8").replace(f"//{IMAGE_HOST}/", f"//127.0.0.1:{port}/")


# -- the upstream (runs in its own process: `page.py --upstream PORT`) ----------------------------------------


def run_upstream(port: int) -> None:
    from aiohttp import web

    files = sorted(path for path in IMAGES.iterdir() if path.suffix in (".png", ".jpg"))
    blobs = [path.read_bytes() for path in files]
    dog = local_dog_page(port).encode()

    async def page(request: web.Request) -> web.Response:
        # ?v=N: the same page with a comment added, so its bytes (and the proxy's kept rendering) differ.
        version = request.query.get("v")
        body = dog if version is None else dog + f"<!-- {version} -->".encode()
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    async def cold(request: web.Request) -> web.Response:
        # N images never seen before: the run id makes every URL new.
        run, n = request.match_info["run"], int(request.match_info["n"])
        images = "".join(f'<figure><img src="/new/{run}/{k}.png" width="220"></figure>' for k in range(n))
        return web.Response(
            text=f"<!doctype html><title>{n}</title><p>Cold page.</p>{images}", content_type="text/html"
        )

    async def image(request: web.Request) -> web.Response:
        path = request.path
        index = int(hashlib.sha256(path.encode()).hexdigest()[:8], 16) % len(files)
        # Trailing bytes after the image end are ignored by decoders but give every URL its own SHA-256.
        body = blobs[index] + path.encode()
        return web.Response(body=body, content_type="image/jpeg" if files[index].suffix == ".jpg" else "image/png")

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_get("/dog", page)
    app.router.add_get("/cold/{run}/{n}", cold)
    app.router.add_get("/{tail:.*}", image)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def run_heuristic_server(port: int) -> None:
    """The service with the saturation heuristic instead of a model (`--classifier heuristic`)."""
    from aiohttp import web

    from classifier.heuristic import SaturationHeuristic
    from proxy.app import create_app
    from proxy.settings import Settings

    settings = Settings(port=port, allow_private_networks=True, rate_limit_per_minute=0, database_url="sqlite://")
    app = create_app(settings, classifier=SaturationHeuristic())
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- measurements --------------------------------------------------------------------------------------------


def check_only_local_images(upstream_port: int) -> int:
    """Every image of the local Dog page is on the upstream: the proxy will contact nothing else."""
    from proxy.rewrite import find_images

    page_url = f"http://127.0.0.1:{upstream_port}/dog"
    images = find_images(DOG.read_text(encoding="utf-8"), page_url)
    hosts = {image.url.split("/")[2] for image in images}
    if hosts != {IMAGE_HOST}:
        raise SystemExit(f"the Dog page has images on {sorted(hosts)}; only {IMAGE_HOST} can be redirected locally")
    local = find_images(local_dog_page(upstream_port), page_url)
    assert {image.url.split("/")[2] for image in local} == {f"127.0.0.1:{upstream_port}"}
    return len(local)


def in_process_ms(port: int, repeat: int = 20) -> tuple[float, float]:
    """Median wall and CPU milliseconds to parse, list images, mark them and render the page, from the
    bytes the upstream sends (as the proxy does)."""
    from proxy.rewrite import Mark, Page

    body = local_dog_page(port).encode()
    url = f"http://127.0.0.1:{port}/dog"
    wall, cpu = [], []
    for _ in range(repeat + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        page = Page(body, url)
        marks = {ref.url: Mark(invert=True, p_invert=0.9, model="m") for ref in page.images(max_images=200)}
        page.render(marks)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
    return statistics.median(wall[1:]), statistics.median(cpu[1:])


def classify_ms(classifier: str, n: int = 50, batch: int = 8) -> float:
    """In-process `classify_bytes` per image on dataset images like the cold pages' (batches of `batch`,
    as `--page-concurrency` 8 feeds the batcher): what classification alone costs."""
    import random

    from classifier.heuristic import SaturationHeuristic
    from classifier.model import InvertModel
    from classifier.verdict import ImageClassifier

    model: ImageClassifier = InvertModel.load() if classifier == "model" else SaturationHeuristic()
    files = sorted(path for path in IMAGES.iterdir() if path.suffix in (".png", ".jpg"))
    blobs = [path.read_bytes() for path in random.Random(1).sample(files, n)]
    model.classify_bytes(blobs[:batch])  # warm-up
    started = time.perf_counter()
    for start in range(0, n, batch):
        model.classify_bytes(blobs[start : start + batch])
    return (time.perf_counter() - started) / n * 1000


async def timed_get(
    session: aiohttp.ClientSession, url: str, params: dict[str, str] | None = None
) -> tuple[float, int, dict[str, str]]:
    started = time.perf_counter()
    async with session.get(url, params=params) as response:
        await response.read()
        status, headers = response.status, dict(response.headers)
    return (time.perf_counter() - started) * 1000, status, headers


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; 0 where there is none)."""
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def page_faults(pid: int) -> int:
    """Minor page faults of a process so far (Linux /proc; 0 where there is none)."""
    fields = _proc_stat(pid)
    return int(fields[7]) if fields else 0


def _proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: the 3rd (state) comes first."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


async def measure(api: str, upstream: str, requests: int, cold_runs: int, server_pid: int) -> None:
    dog = f"{upstream}/dog"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        direct = [(await timed_get(session, dog))[0] for _ in range(requests)]
        print(f"reference: GET the page straight from the upstream: p50 {percentile(direct, 0.5):.1f} ms")

        params = {"url": dog, "deadline_ms": "60000"}
        elapsed, status, headers = await timed_get(session, f"{api}/api/v1/page", params)
        assert status == 200, status
        print(f"Dog page, first request (every image new): {elapsed:.0f} ms; {headers['X-InvertOrNot-Images']}")
        for label, changing in (("parsed and rewritten each time", True), ("kept rendering reused", False)):
            latencies = []
            cpu_before, faults_before = cpu_seconds(server_pid), page_faults(server_pid)
            for n in range(requests):
                page = {**params, "url": f"{dog}?v={n}"} if changing else params
                elapsed, status, headers = await timed_get(session, f"{api}/api/v1/page", page)
                assert status == 200 and "classified=0" in headers["X-InvertOrNot-Images"], headers
                latencies.append(elapsed)
            cpu = (cpu_seconds(server_pid) - cpu_before) / requests * 1000
            faults = (page_faults(server_pid) - faults_before) / requests
            print(
                f"Dog page, every verdict cached, {label}, {requests} requests: "
                f"p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms, "
                f"min {min(latencies):.1f} ms; server CPU {cpu:.1f} ms/request, page faults {faults:.0f}/request  "
                f"[{headers['X-InvertOrNot-Images']}]"
            )

        for n in COLD_SIZES:
            totals = []
            for run in range(cold_runs):
                cold = {"url": f"{upstream}/cold/{n}-{run}-{time.time_ns()}/{n}", "deadline_ms": "60000"}
                elapsed, status, headers = await timed_get(session, f"{api}/api/v1/page", cold)
                assert status == 200 and f"classified={n}" in headers["X-InvertOrNot-Images"], headers
                totals.append(elapsed)
            total = statistics.median(totals)
            print(f"cold page, N={n:>2} new images: {total:.0f} ms total, {total / n:.1f} ms per image "
                  f"(median of {cold_runs}; runs {', '.join(f'{t:.0f}' for t in totals)} ms)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60, help="requests for the cached page (at least 50)")
    parser.add_argument("--cold-runs", type=int, default=3, help="cold pages per image count")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `invertornot serve` flag")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the server process, e.g. MALLOC_TRIM_THRESHOLD_=67108864",
    )
    parser.add_argument(
        "--classifier",
        choices=("model", "heuristic"),
        default="model",
        help="the shipped model (`invertornot serve`), or the saturation heuristic (when no model loads)",
    )
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # internal: run the upstream only
    parser.add_argument("--heuristic-server", type=int, help=argparse.SUPPRESS)  # internal: run the service
    args = parser.parse_args()
    if args.upstream:
        run_upstream(args.upstream)
        return
    if args.heuristic_server:
        run_heuristic_server(args.heuristic_server)
        return
    if not DOG.exists():
        raise SystemExit(f"{DOG} is missing: this benchmark needs ../shared/pages")
    upstream_port, api_port = free_port(), free_port()
    images = check_only_local_images(upstream_port)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {DOG.name}: "
          f"{DOG.stat().st_size / 1000:.0f} KB, {images} distinct images")  # fmt: skip
    wall, cpu = in_process_ms(upstream_port)
    print(f"reference: parse + images + rewrite + encode in-process: {wall:.1f} ms (median; CPU {cpu:.1f} ms)")
    per_image = classify_ms(args.classifier)
    print(f"reference: classify_bytes in-process ({args.classifier}), batches of 8: {per_image:.1f} ms/image")

    upstream = f"http://127.0.0.1:{upstream_port}"
    api = f"http://127.0.0.1:{api_port}"
    up = subprocess.Popen([sys.executable, __file__, "--upstream", str(upstream_port)])
    server_cmd = [
        sys.executable, "-m", "proxy.cli", "serve", "--port", str(api_port), "--allow-private-networks",
        "--rate-limit-per-minute", "0", "--log-level", "warning", "--database-url", "sqlite://", *args.server_arg,
    ]  # fmt: skip
    if args.classifier == "heuristic":
        server_cmd = [sys.executable, __file__, "--heuristic-server", str(api_port)]
    environment = f"; server environment: {' '.join(args.server_env)}" if args.server_env else ""
    print(f"classifier: {args.classifier}{environment}")
    server_env = {**os.environ, **dict(item.partition("=")[::2] for item in args.server_env)}
    server = subprocess.Popen(server_cmd, cwd=ROOT, env=server_env)
    try:
        wait_until_up(f"{upstream}/ping", up)
        wait_until_up(f"{api}/healthz", server)
        asyncio.run(measure(api, upstream, max(args.requests, 50), args.cold_runs, server.pid))
    finally:
        stop_processes(server, up)


if __name__ == "__main__":
    main()
