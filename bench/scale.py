"""Beyond one process: two service instances sharing Redis, and `invertornot annotate` on the whole dataset.

1. Starts redis-server, the bench upstream (bench/serve.py's, serving dataset images) and two
   `invertornot serve` processes (A and B, default model, each its own SQLite database) on 127.0.0.1.
2. Prints cached `GET /api/v1/classify` lookups/s on A alone, on B alone, and on both at once (combined);
   B's first lookups of URLs A classified (answered from Redis, no fetch, no model); and the cost of one
   lookup that goes to Redis compared with one answered from memory.
3. Generates a static site of every dataset image (HTML pages of 20 images each) and runs `annotate`
   on it cold (every image classified) and warm (labels file present: only hashing), in-process.

Usage from the repository root (needs redis-server; wrk is used when installed):

    .venv/bin/python bench/scale.py [--seconds 5] [--connections 32] [--skip-annotate]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script, not a package

from bench.serve import IMAGES, free_port, lookups, wait_until_up  # noqa: E402

PER_PAGE = 20


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(directory), "--loglevel", "warning"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def start_instance(port: int, redis_url: str, directory: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "proxy.cli", "serve", "--port", str(port), "--allow-private-networks",
        "--rate-limit-per-minute", "0", "--log-level", "warning", "--redis-url", redis_url,
        "--database-url", f"sqlite:///{directory}/corrections-{port}.db",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT)


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return dict(json.load(response))


def post_json(url: str, body: object) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.load(response))


def both_at_once(urls: list[str], seconds: float, connections: int, use_wrk: bool) -> list[float]:
    """req/s on each URL, measured at the same time (one load generator each)."""
    results: list[float] = [0.0] * len(urls)

    def run(index: int) -> None:
        results[index] = lookups(urls[index], seconds, connections // 2, use_wrk)[0]

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(urls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


async def first_lookups(api: str, urls: list[str], concurrency: int = 16) -> float:
    """Lookups/s for URLs this instance has never seen (another instance classified them)."""
    import aiohttp

    queue = list(urls)
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while queue:
                url = queue.pop()
                async with session.get(f"{api}/api/v1/classify", params={"url": url}) as response:
                    body = await response.json()
                    assert response.status == 200 and body["cached"] is True, body

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(urls) / (time.perf_counter() - started)


def median_ms(url: str, repeats: int = 200) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        with urllib.request.urlopen(url) as response:
            response.read()
        timings.append((time.perf_counter() - started) * 1000)
    return sorted(timings)[len(timings) // 2]


def bench_instances(seconds: float, connections: int, use_wrk: bool, directory: Path) -> None:
    redis, redis_url = start_redis(directory)
    upstream_port, a_port, b_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    a, b = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
    processes = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "serve.py"), "--upstream", str(upstream_port)])]
    processes += [start_instance(port, redis_url, directory) for port in (a_port, b_port)]
    try:
        wait_until_up(f"{upstream}/ping", processes[0])
        wait_until_up(f"{a}/healthz", processes[1])
        wait_until_up(f"{b}/healthz", processes[2])
        print(f"instances A and B: model {get_json(f'{a}/healthz')['model']}, Redis {redis_url}")

        image = f"{upstream}/i/0"
        assert get_json(f"{a}/api/v1/classify?url={image}")["cached"] is False
        assert get_json(f"{b}/api/v1/classify?url={image}")["cached"] is True, "B answers from Redis"
        lookup_a, lookup_b = f"{a}/api/v1/classify?url={image}", f"{b}/api/v1/classify?url={image}"
        rate_a = lookups(lookup_a, seconds, connections, use_wrk)[0]
        rate_b = lookups(lookup_b, seconds, connections, use_wrk)[0]
        together = both_at_once([lookup_a, lookup_b], seconds, connections, use_wrk)
        print(f"cached lookups, {connections} connections: A alone {rate_a:,.0f} req/s, B alone {rate_b:,.0f} req/s")
        print(
            f"cached lookups on both at once: A {together[0]:,.0f} + B {together[1]:,.0f} = "
            f"{sum(together):,.0f} req/s combined ({os.cpu_count()} cores for both servers and the load generators)"
        )

        n = 500
        urls = [f"{upstream}/i/{1000 + i}" for i in range(n)]
        started = time.perf_counter()
        for start in range(0, n, 100):
            post_json(f"{a}/api/v1/classify", {"urls": urls[start : start + 100]})
        classified = n / (time.perf_counter() - started)
        shared = asyncio.run(first_lookups(b, urls))
        print(
            f"{n} new images classified on A: {classified:.0f} img/s; B's first lookups of them "
            f"(from Redis, nothing fetched or classified): {shared:,.0f} lookups/s"
        )
        # One lookup at a time: from B's memory (seen before) vs. a URL B must ask Redis about.
        memory = median_ms(lookup_b)
        fresh = [f"{b}/api/v1/classify?url={upstream}/i/{5000 + i}" for i in range(200)]
        for url in fresh:
            get_json(url.replace(b, a))
        timings = []
        for url in fresh:
            begun = time.perf_counter()
            get_json(url)
            timings.append((time.perf_counter() - begun) * 1000)
        print(
            f"one lookup, median: from memory {memory:.2f} ms, from Redis (URL and verdict, 2 round trips) "
            f"{sorted(timings)[len(timings) // 2]:.2f} ms"
        )
        metrics = urllib.request.urlopen(f"{b}/metrics").read().decode()
        hits = [line for line in metrics.splitlines() if line.startswith('invertornot_cache_hits_total{cache="redis')]
        print("B's Redis hits: " + ", ".join(line.split("{")[1].replace("}", "=") for line in hits))
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        redis.terminate()
        for process in [*processes, redis]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def build_site(root: Path) -> int:
    """Every dataset image, 20 to a page, in folders of 200; returns the number of images."""
    files = sorted(IMAGES.iterdir())
    for page_number, start in enumerate(range(0, len(files), PER_PAGE)):
        folder = root / f"part{page_number // 10}"
        (folder / "img").mkdir(parents=True, exist_ok=True)
        tags = []
        for path in files[start : start + PER_PAGE]:
            shutil.copy(path, folder / "img" / path.name)
            tags.append(f'<figure><img src="img/{path.name}" alt=""></figure>')
        (folder / f"page{page_number}.html").write_text(
            "<!DOCTYPE html><html><head><title>p</title></head><body>\n" + "\n".join(tags) + "\n</body></html>\n"
        )
    return len(files)


def bench_annotate(directory: Path) -> None:
    from classifier.model import InvertModel
    from proxy.annotate import AnnotateOptions, Annotator

    site = directory / "site"
    count = build_site(site)
    started = time.perf_counter()
    model = InvertModel.load()
    loaded = time.perf_counter() - started
    options = AnnotateOptions(write=True)
    cold = Annotator(site, options, model=model).run()
    print(f"annotate, cold: {count} images in {cold.total_seconds:.1f} s = {count / cold.total_seconds:.0f} img/s "
          f"(classifying {cold.classified / cold.classify_seconds:.0f} img/s, hashing {cold.hash_seconds:.2f} s, "
          f"{cold.pages_written} pages written; model load {loaded:.1f} s not included)")  # fmt: skip
    warm = Annotator(site, options, model=model).run()
    assert warm.classified == 0 and warm.pages_written == 0
    share = warm.hash_seconds / warm.total_seconds
    print(f"annotate, warm: {count} images in {warm.total_seconds:.2f} s = {count / warm.total_seconds:,.0f} img/s "
          f"(hashing {warm.hash_seconds:.2f} s = {share:.0%} of it; the rest is parsing "
          f"{warm.html_pages} pages twice, for labels and for --write)")  # fmt: skip
    print(warm.table())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each lookup measurement")
    parser.add_argument("--connections", type=int, default=32, help="connections for cached lookups")
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp client even if wrk is installed")
    parser.add_argument("--skip-instances", action="store_true")
    parser.add_argument("--skip-annotate", action="store_true")
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; lookups by {'wrk' if use_wrk else 'aiohttp'}"
    )
    with tempfile.TemporaryDirectory(prefix="invertornot-scale-") as temporary:
        directory = Path(temporary)
        if not args.skip_instances:
            bench_instances(args.seconds, args.connections, use_wrk, directory)
        if not args.skip_annotate:
            bench_annotate(directory)


if __name__ == "__main__":
    main()
