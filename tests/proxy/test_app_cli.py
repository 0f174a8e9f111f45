"""`invertornot serve` as a user runs it: a real process on the shipped model, stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from classifier.model import DEFAULT_MODEL_DIR, read_manifest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_starts_on_the_default_model_and_stops_cleanly() -> None:
    port = free_port()
    env = {
        **os.environ,
        "INVERTORNOT_PORT": str(port),
        "INVERTORNOT_LOG_LEVEL": "warning",
        "INVERTORNOT_DATABASE_URL": "sqlite://",  # in memory: no ./invertornot.db left behind
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", "--host", "127.0.0.1", "--access-log"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    health = json.load(response)
                    break
            except OSError:
                time.sleep(0.2)
        assert health is not None, "the server exited early" if process.poll() is not None else "no answer in 60 s"
        assert health["model"] == read_manifest(DEFAULT_MODEL_DIR).version
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Running on http://127.0.0.1" in stderr and "GET /healthz" in stderr  # --access-log


def test_serve_refuses_a_bad_environment_value() -> None:
    env = {**os.environ, "INVERTORNOT_MAX_PIXELS": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "INVERTORNOT_MAX_PIXELS" in result.stderr
