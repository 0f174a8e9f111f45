"""Nothing acknowledged is lost: a real `invertornot serve` is killed with SIGKILL right after answering 202,
and the restarted server still knows every correction, applies the trusted one and keeps the images."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.proxy.service_support import DIAGRAM, IMAGES, PHOTO, image_bytes

SECRET = "durable-secret-token-0001"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def image_host() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(IMAGES)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def call(base: str, path: str, body: Any = None, *, token: bool = False) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {SECRET}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            is_json = response.headers.get_content_type() == "application/json"
            return response.status, json.loads(raw) if is_json else raw
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start_server(port: int, database: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        "--port",
        str(port),
        "--database-url",
        f"sqlite:///{database}",
    ]
    command += ["--api-token", f"alice:{SECRET}", "--allow-private-networks", "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the server did not start: {process.communicate()[1]}")


def test_acknowledged_corrections_survive_sigkill_and_restart(tmp_path: Path, image_host: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    database = tmp_path / "corrections.db"
    diagram, photo = hashlib.sha256(image_bytes(DIAGRAM)).hexdigest(), hashlib.sha256(image_bytes(PHOTO)).hexdigest()
    server = start_server(port, database)
    try:
        trusted = call(base, "/api/v1/corrections", {"url": f"{image_host}/{DIAGRAM}", "invert": False}, token=True)
        anonymous = call(base, "/api/v1/corrections", {"url": f"{image_host}/{PHOTO}", "invert": True})
    finally:
        os.kill(server.pid, signal.SIGKILL)  # no shutdown, no flush: only what was committed survives
        server.communicate(timeout=30)
    assert trusted == (202, {"id": 1, "status": "accepted", "sha256": diagram})
    assert anonymous == (202, {"id": 2, "status": "pending", "sha256": photo})

    server = start_server(port, database)
    try:
        status, verdict = call(base, f"/api/v1/verdicts/{diagram}")
        assert status == 200 and (verdict["invert"], verdict["source"]) == (False, "correction")
        status, verdict = call(base, f"/api/v1/classify?url={image_host}/{DIAGRAM}")
        assert (verdict["invert"], verdict["source"]) == (False, "correction")
        status, photo_verdict = call(base, f"/api/v1/classify?url={image_host}/{PHOTO}")
        assert (photo_verdict["invert"], photo_verdict["source"]) == (False, "model")  # pending changes nothing
        status, pending = call(base, "/api/v1/corrections?status=pending", token=True)
        assert [(c["id"], c["sha256"], c["invert"]) for c in pending["corrections"]] == [(2, photo, True)]
        request = urllib.request.Request(
            f"{base}/api/v1/label/images/{photo}", headers={"Authorization": f"Bearer {SECRET}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == image_bytes(PHOTO)
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
