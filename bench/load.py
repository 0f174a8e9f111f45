"""Load and faults: many clients mixing every kind of request, then kill -9 during a stream of corrections.

Starts `invertornot serve` (default model) on 127.0.0.1 in a subprocess, and a local upstream in another
(dataset images, a new image per URL, small pages with images, failing and misbehaving URLs). Then:

1. load: N concurrent aiohttp clients (default 200) for S seconds (default 60), each request drawn from
   cached lookups, new images, page requests and bad requests (missing/invalid URLs, refused addresses,
   upstream 500s and resets). Prints p50/p99 per kind, status counts per kind, and the server's peak RSS.
   Any 5xx other than the documented upstream errors (502, 504) is a failure;
2. durability: clients stream trusted corrections (`Authorization: Bearer TOKEN`), the server is killed
   with SIGKILL mid-stream, restarted on the same database, and every correction acknowledged with 202
   before the kill must be listed by `GET /api/v1/corrections?status=all` afterwards.

Exit status 0 when both hold, 1 otherwise. Usage from the repository root:

    .venv/bin/python bench/load.py [--clients 200] [--seconds 60] [--kill-after 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "classifier" / "dataset" / "images"
TOKEN = "loadbench:" + secrets.token_hex(16)
# Upstream failures the API documents (502 upstream_error, 504 upstream_timeout): not the server's fault.
DOCUMENTED_5XX = {502, 504}
KINDS = {"cached": 45, "new": 20, "page": 15, "bad": 20}  # weights of the request mix
WARM_URLS = 20


# -- the upstream (its own process, so the load generator's CPU is not shared with it) ----------------


def run_upstream(port: int) -> None:
    pngs = sorted(IMAGES.glob("*.png"), key=lambda p: p.stat().st_size)[:50]
    blobs = [path.read_bytes() for path in pngs]

    async def image(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        return web.Response(body=blobs[n % len(blobs)], content_type="image/png")

    async def new(request: web.Request) -> web.Response:
        # Decoders ignore trailing bytes: a new SHA-256 for every n, so every URL is classified for real.
        n = int(request.match_info["n"])
        return web.Response(body=blobs[n % len(blobs)] + f"new-{n}".encode(), content_type="image/png")

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        images = "".join(f'<p>figure {i}</p><img src="/img/{(n + i) % 40}.png" width=200>' for i in range(8))
        return web.Response(
            text=f"<!doctype html><title>p{n}</title><h1>Page {n}</h1>{images}", content_type="text/html"
        )

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500, text="upstream bug")

    async def reset(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png", "Content-Length": "100000"})
        await response.prepare(request)
        await response.write(blobs[0][:256])
        if request.transport is not None:
            request.transport.abort()
        return response

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/img/{n}.png", image)
    app.router.add_get("/new/{n}.png", new)
    app.router.add_get("/page/{n}.html", page)
    app.router.add_get("/fail.png", failing)
    app.router.add_get("/reset.png", reset)
    app.router.add_get("/ping", ping)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- processes ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} not up after {timeout:.0f} s")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(port: int, database: Path, extra: Sequence[str]) -> subprocess.Popen[bytes]:
    command = [
        str(Path(sys.executable).parent / "invertornot"),
        "serve",
        "--host=127.0.0.1",
        f"--port={port}",
        "--no-allow-private-networks",
        "--allowed-networks=127.0.0.1/32",  # the local upstream only: other inward addresses stay refused
        "--rate-limit-per-minute=0",
        f"--database-url=sqlite:///{database}",
        f"--api-token={TOKEN}",
        *extra,
    ]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)


# -- load -----------------------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[str] = field(default_factory=list)


def bad_request(upstream: str, rng: random.Random) -> tuple[str, dict[str, str]]:
    """(path, query) of a request the server must refuse or answer with a documented upstream error."""
    return rng.choice(
        [
            ("/api/v1/classify", {}),
            ("/api/v1/classify", {"url": "not a url"}),
            ("/api/v1/classify", {"url": "file:///etc/passwd"}),
            ("/api/v1/classify", {"url": "http://169.254.169.254/latest/meta-data/"}),
            ("/api/v1/classify", {"url": "http://[::ffff:7f00:2]/x.png"}),
            ("/api/v1/classify", {"url": "http://0x7f.2/x.png"}),
            ("/api/v1/classify", {"url": f"{upstream}/fail.png"}),
            ("/api/v1/classify", {"url": f"{upstream}/reset.png"}),
            ("/api/v1/classify", {"url": f"{upstream}/page/1.html"}),
            ("/api/v1/page", {"url": "http://10.0.0.1/"}),
            ("/api/v1/page", {"url": f"{upstream}/img/1.png"}),
            ("/api/v1/verdicts/nothex", {}),
        ]
    )


async def client_loop(
    session: aiohttp.ClientSession,
    api: str,
    upstream: str,
    until: float,
    seed: int,
    counter: itertools.count[int],
    tally: Tally,
) -> None:
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    while time.monotonic() < until:
        kind = rng.choices(kinds, weights)[0]
        if kind == "cached":
            path, query = "/api/v1/classify", {"url": f"{upstream}/img/{rng.randrange(WARM_URLS)}.png"}
        elif kind == "new":
            path, query = "/api/v1/classify", {"url": f"{upstream}/new/{next(counter)}.png"}
        elif kind == "page":
            path, query = "/api/v1/page", {"url": f"{upstream}/page/{rng.randrange(50)}.html", "deadline_ms": "500"}
        else:
            path, query = bad_request(upstream, rng)
        started = time.perf_counter()
        try:
            async with session.get(api + path, params=query) as response:
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as error:
            tally.failures.append(f"{kind} {path} {query}: {type(error).__name__}: {error}")
            status = 0
        tally.latencies[kind].append(time.perf_counter() - started)
        tally.statuses[kind][status] += 1


async def run_load(api: str, upstream: str, clients: int, seconds: float) -> Tally:
    tally = Tally()
    counter = itertools.count()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        for n in range(WARM_URLS):  # the cached kind looks these up: classify them once first
            async with session.get(f"{api}/api/v1/classify", params={"url": f"{upstream}/img/{n}.png"}) as response:
                await response.read()
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(client_loop(session, api, upstream, until, seed, counter, tally) for seed in range(clients))
        )
    return tally


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# -- kill -9 during corrections -------------------------------------------------------------------------


async def stream_corrections(api: str, clients: int, stop: asyncio.Event) -> dict[int, tuple[str, bool]]:
    """Send trusted corrections until the server dies; the ones acknowledged (202): id -> (sha256, invert)."""
    acknowledged: dict[int, tuple[str, bool]] = {}
    headers = {"Authorization": f"Bearer {TOKEN.split(':', 1)[1]}"}

    async def one_client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            sha256, invert = secrets.token_hex(32), secrets.randbelow(2) == 1
            try:
                async with session.post(
                    f"{api}/api/v1/corrections", json={"sha256": sha256, "invert": invert}, headers=headers
                ) as response:
                    body = await response.json()
                    if response.status == 202:
                        acknowledged[int(body["id"])] = (sha256, invert)
            except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
                # The kill: a request in flight is not acknowledged, so it need not be kept.
                await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        await asyncio.gather(*(one_client(session) for _ in range(clients)))
    return acknowledged


async def listed_corrections(api: str) -> dict[int, tuple[str, bool]]:
    found: dict[int, tuple[str, bool]] = {}
    headers = {"Authorization": f"Bearer {TOKEN.split(':', 1)[1]}"}
    after = 0
    async with aiohttp.ClientSession() as session:
        while True:
            query = {"status": "all", "after": str(after), "limit": "500"}
            async with session.get(f"{api}/api/v1/corrections", params=query, headers=headers) as response:
                response.raise_for_status()
                body = await response.json()
            for item in body["corrections"]:
                found[int(item["id"])] = (item["sha256"], bool(item["invert"]))
            if body["next_after"] is None:
                return found
            after = int(body["next_after"])


async def kill_during_corrections(
    server: subprocess.Popen[bytes], api: str, clients: int, kill_after: float
) -> dict[int, tuple[str, bool]]:
    stop = asyncio.Event()
    streaming = asyncio.create_task(stream_corrections(api, clients, stop))
    await asyncio.sleep(kill_after)
    server.kill()  # SIGKILL: no shutdown handler runs, nothing gets flushed on the way out
    server.wait()
    await asyncio.sleep(0.3)  # let in-flight requests fail
    stop.set()
    return await streaming


# -- main -----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (default 200)")
    parser.add_argument("--seconds", type=float, default=60, help="length of the load phase (default 60)")
    parser.add_argument("--kill-after", type=float, default=3, help="seconds of corrections before kill -9")
    parser.add_argument("--correction-clients", type=int, default=16, help="clients sending corrections")
    parser.add_argument("--json", action="store_true", help="also print one JSON object with every number")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `invertornot serve` argument")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # internal: run the upstream only
    args = parser.parse_args(argv)
    if args.upstream:
        run_upstream(args.upstream)
        return 0

    upstream_port, api_port = free_port(), free_port()
    upstream, api = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{api_port}"
    processes: list[subprocess.Popen[bytes]] = []
    ok = True
    report: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="invertornot-load-") as scratch:
        database = Path(scratch) / "corrections.db"
        try:
            up = subprocess.Popen([sys.executable, __file__, "--upstream", str(upstream_port)])
            processes.append(up)
            server = start_server(api_port, database, args.server_arg)
            processes.append(server)
            wait_until_up(f"{upstream}/ping", up)
            wait_until_up(f"{api}/healthz", server)
            idle_rss = peak_rss_mib(server.pid)

            started = time.monotonic()
            tally = asyncio.run(run_load(api, upstream, args.clients, args.seconds))
            elapsed = time.monotonic() - started
            peak = peak_rss_mib(server.pid)
            total = sum(len(values) for values in tally.latencies.values())
            print(f"load: {args.clients} clients, {elapsed:.1f} s, {total:,} requests ({total / elapsed:,.0f} req/s)")
            report["kinds"] = {}
            for kind in KINDS:
                values = tally.latencies.get(kind, [])
                statuses = dict(sorted(tally.statuses[kind].items()))
                p50, p99 = percentile(values, 50) * 1000, percentile(values, 99) * 1000
                print(f"  {kind:7s} n={len(values):7,}  p50 {p50:8.1f} ms  p99 {p99:8.1f} ms  statuses {statuses}")
                report["kinds"][kind] = {"n": len(values), "p50_ms": p50, "p99_ms": p99, "statuses": statuses}
                unexpected = {s: c for s, c in statuses.items() if s >= 500 and s not in DOCUMENTED_5XX}
                if unexpected or (kind != "bad" and any(s >= 500 for s in statuses)):
                    print(f"  FAIL: {kind} got server errors {unexpected or statuses}")
                    ok = False
            if tally.failures:
                print(f"  FAIL: {len(tally.failures)} transport failures, e.g. {tally.failures[:3]}")
                ok = False
            print(f"server RSS: {idle_rss:.0f} MiB at start, peak {peak:.0f} MiB")
            report.update(idle_rss_mib=idle_rss, peak_rss_mib=peak, transport_failures=len(tally.failures))

            acknowledged = asyncio.run(kill_during_corrections(server, api, args.correction_clients, args.kill_after))
            processes.remove(server)
            server = start_server(api_port, database, args.server_arg)
            processes.append(server)
            wait_until_up(f"{api}/healthz", server)
            listed = asyncio.run(listed_corrections(api))
            lost = {cid: value for cid, value in acknowledged.items() if listed.get(cid) != value}
            print(
                f"kill -9 after {args.kill_after:.1f} s of corrections: {len(acknowledged):,} acknowledged, "
                f"{len(listed):,} listed after restart, {len(lost)} lost"
            )
            report.update(acknowledged=len(acknowledged), listed=len(listed), lost=len(lost))
            if lost or not acknowledged:
                print(
                    f"  FAIL: lost corrections, e.g. {list(lost.items())[:3]}" if lost else "  FAIL: none acknowledged"
                )
                ok = False
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
    report["ok"] = ok
    if args.json:
        print(json.dumps(report))
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
