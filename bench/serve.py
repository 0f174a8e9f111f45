"""The classification service under load, on loopback: cached lookups, new images, both at once, peak RSS.

Starts `invertornot serve` (default model) in a subprocess on 127.0.0.1 and a local upstream in another,
serving dataset images with a unique trailer per URL (every URL is a new image, decoded and classified
for real). Then prints:

1. the reference: `classify_bytes` in-process, batches of 32, on the same images (bench/classify.py's
   "1 caller" figure), and a trivial aiohttp handler's req/s as the ceiling for cached lookups;
2. cached `GET /api/v1/classify` lookups: req/s, p50, p99;
3. new images through `POST /api/v1/classify` (10 URLs per request) from N clients: images/s;
4. cached lookups while (3) saturates classification: req/s, p50, p99, and the images/s meanwhile;
5. the server's peak RSS.

Cached lookups use wrk when it is installed (`apt-get install wrk`), else an aiohttp client (which costs
the server CPU on a small machine, so its numbers are lower). Usage from the repository root:

    .venv/bin/python bench/serve.py [--seconds 8] [--clients 16] [--server-arg=--executor-threads=2 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script, not a package

IMAGES = ROOT / "classifier" / "dataset" / "images"
URLS_PER_REQUEST = 10


# -- the upstream (runs in its own process: `serve.py --upstream PORT`) --------------------------------------


def run_upstream(port: int, images: Path = IMAGES) -> None:
    from aiohttp import web

    files = sorted(path for path in images.iterdir() if path.suffix in (".png", ".jpg"))
    blobs = [path.read_bytes() for path in files]

    async def image(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        name = files[n % len(files)].name
        # Trailing bytes after the image end are ignored by decoders but give every URL its own SHA-256.
        body = blobs[n % len(files)] + f"#{n}".encode()
        return web.Response(body=body, content_type="image/jpeg" if name.endswith(".jpg") else "image/png")

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/i/{n}", image)
    app.router.add_get("/ping", ping)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- helpers ---------------------------------------------------------------------------------------------------


def stop_processes(*processes: subprocess.Popen[Any]) -> None:
    """SIGINT every process (a clean aiohttp shutdown), then wait for each; kill what hangs."""
    for process in processes:
        process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up in {timeout} s")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def reference_throughput(seconds: float, images: Path = IMAGES, model_dir: Path | None = None) -> float:
    """bench/classify.py's "1 caller, ORT on all cores" figure: in-process batches of 32, same images."""
    from classifier.model import InvertModel

    model = InvertModel.load(model_dir)
    blobs = [path.read_bytes() for path in sorted(images.iterdir()) if path.suffix in (".png", ".jpg")]
    model.classify_bytes(blobs[:32])
    done, started = 0, time.perf_counter()
    for start in itertools.cycle(range(0, len(blobs) - 32, 32)):
        model.classify_bytes(blobs[start : start + 32])
        done += 32
        if time.perf_counter() - started >= seconds:
            break
    return done / (time.perf_counter() - started)


# -- load generators -----------------------------------------------------------------------------------------


def wrk_lookups(url: str, seconds: float, connections: int) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) from wrk."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def latency(label: str) -> float:
        value, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  (wrk saw {errors.group(1)} non-2xx answers)")
    return rate, latency("50"), latency("99")


async def client_lookups(url: str, seconds: float, connections: int) -> tuple[float, float, float]:
    import aiohttp

    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, percentile(latencies, 0.5), percentile(latencies, 0.99)


def lookups(url: str, seconds: float, connections: int, use_wrk: bool) -> tuple[float, float, float]:
    if use_wrk:
        return wrk_lookups(url, seconds, connections)
    return asyncio.run(client_lookups(url, seconds, connections))


async def new_images(api: str, upstream: str, seconds: float, clients: int, first: int) -> tuple[int, float]:
    """(images classified, seconds): `clients` loops each POSTing 10 never-seen URLs at a time."""
    import aiohttp

    counter = itertools.count(first)
    done = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                urls = [f"{upstream}/i/{next(counter)}" for _ in range(URLS_PER_REQUEST)]
                async with session.post(f"{api}/api/v1/classify", json={"urls": urls}) as response:
                    results = (await response.json())["results"]
                failed = [item for item in results if "error" in item]
                if failed:
                    raise SystemExit(f"classification failed: {failed[0]}")
                done += len(results)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done, time.perf_counter() - started


def lookups_during_classification(
    api: str, upstream: str, lookup_url: str, seconds: float, clients: int, connections: int, use_wrk: bool
) -> tuple[tuple[float, float, float], float]:
    async def both() -> tuple[tuple[float, float, float], float]:
        load = asyncio.create_task(new_images(api, upstream, seconds + 2, clients, first=10_000_000))
        await asyncio.sleep(1.0)  # let classification saturate first
        if use_wrk:
            measured = await asyncio.to_thread(wrk_lookups, lookup_url, seconds, connections)
        else:
            measured = await client_lookups(lookup_url, seconds, connections)
        done, elapsed = await load
        return measured, done / elapsed

    return asyncio.run(both())


# -- main ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients sending new images")
    parser.add_argument("--connections", type=int, default=32, help="connections for cached lookups")
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp client even if wrk is installed")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `invertornot serve` flag")
    parser.add_argument(
        "--images",
        type=Path,
        default=IMAGES,
        help="folder of PNG/JPEG images to serve as new images (default: the dataset, which the shipped model "
        "was fit to; its colour screen answers nearly all of them, so use a folder of unseen images to see "
        "the speed on images the model has never seen)",
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model directory for the server and the reference (default: shipped)"
    )
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # internal: run the upstream only
    args = parser.parse_args()
    if args.upstream:
        run_upstream(args.upstream, args.images)
        return
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; lookups by {'wrk' if use_wrk else 'aiohttp'}"
    )

    reference = reference_throughput(args.seconds, args.images, args.model)
    print(f"reference: classify_bytes in-process, batches of 32: {reference:.0f} img/s")

    upstream_port, api_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    api = f"http://127.0.0.1:{api_port}"
    up = subprocess.Popen([sys.executable, __file__, "--upstream", str(upstream_port), "--images", str(args.images)])
    server_cmd = [
        sys.executable, "-m", "proxy.cli", "serve", "--port", str(api_port), "--allow-private-networks",
        "--rate-limit-per-minute", "0", "--log-level", "warning",
        *([] if args.model is None else ["--model", str(args.model)]), *args.server_arg,
    ]  # fmt: skip
    server = subprocess.Popen(server_cmd, cwd=ROOT)
    try:
        wait_until_up(f"{upstream}/ping", up)
        wait_until_up(f"{api}/healthz", server)
        with urllib.request.urlopen(f"{api}/healthz") as response:
            print(f"server: model {json.load(response)['model']}, flags {' '.join(args.server_arg) or '(defaults)'}")

        rate, p50, p99 = lookups(f"{upstream}/ping", args.seconds, args.connections, use_wrk)
        print(f"trivial aiohttp handler (the upstream's /ping): {rate:,.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")

        lookup_url = f"{api}/api/v1/classify?url={upstream}/i/0"
        with urllib.request.urlopen(lookup_url) as response:
            assert json.load(response)["cached"] is False
        rate, p50, p99 = lookups(lookup_url, args.seconds, args.connections, use_wrk)
        print(f"cached GET /api/v1/classify, {args.connections} connections: {rate:,.0f} req/s, "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")  # fmt: skip

        rates = []
        for clients in sorted({10, args.clients, 32}):
            done, elapsed = asyncio.run(new_images(api, upstream, args.seconds, clients, first=1 + 1_000_000 * clients))
            rates.append(done / elapsed)
            print(f"new images, {clients} clients x {URLS_PER_REQUEST} URLs: {done / elapsed:.0f} img/s "
                  f"({done / elapsed / reference:.0%} of the reference)")  # fmt: skip

        (rate, p50, p99), during = lookups_during_classification(
            api, upstream, lookup_url, args.seconds, args.clients, args.connections, use_wrk
        )
        print(f"cached lookups while classifying ({during:.0f} img/s meanwhile): {rate:,.0f} req/s, "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")  # fmt: skip
        with urllib.request.urlopen(f"{api}/metrics") as response:
            metrics = response.read().decode()
        sizes = re.search(
            r"invertornot_classify_batch_size_sum (\S+)\ninvertornot_classify_batch_size_count (\S+)", metrics
        )
        if sizes:
            print(f"mean batch size: {float(sizes.group(1)) / float(sizes.group(2)):.1f} images")
        median_rate = statistics.median(rates)
        print(f"server peak RSS: {peak_rss_mib(server.pid):.0f} MiB; median new-image rate {median_rate:.0f} img/s")
    finally:
        stop_processes(server, up)


if __name__ == "__main__":
    main()
