"""``corral serve`` as a real child process, for tests that kill or multiply gateways."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ADMIN_KEY


def start_server(home: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """Start ``corral serve`` on ``home`` and ``port``; ``env``: extra ``CORRAL_*`` variables."""
    environ = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_ADMIN_KEY": ADMIN_KEY, **env}
    environ.pop("CORRAL_CONFIG", None)
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "serve", "--port", str(port)],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.head(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.TransportError:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"corral serve did not start:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
