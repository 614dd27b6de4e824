"""A browser check, run inside a run's sandbox: start the workspace's app, capture its named
pages with headless Chromium, write the screenshots and a report to the artifacts folder.

The app is the change's own code, so it runs where a run's agent runs: in the sandbox, as
the run's uid, with no network but loopback. So does the browser (Debian's ``chromium``,
driven by Playwright through ``executable_path``; nothing is downloaded), which reaches the
app on ``127.0.0.1:PORT`` inside. The spec comes as one JSON argument::

    python -m corral.review.webshots '{"command": [...], "port": 8000, "pages": [...],
        "wait_s": 60, "width": 1280, "height": 800}'

It writes ``$CORRAL_ARTIFACTS/screenshots/NAME.png`` per page and
``$CORRAL_ARTIFACTS/screenshots/report.json`` (each page's HTTP status or error), prints a
line per page (its report), and exits 0 when every page was captured with a status below
400, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
"""Debian's binary itself first: /usr/bin/chromium is a script that reads /etc/chromium.d,
which the sandbox does not bind."""
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage"]  # fmt: skip
"""The sandbox is the browser's sandbox here (its own needs namespaces bubblewrap took)."""
PAGE_TIMEOUT_MS = 30_000


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec: dict[str, Any] = json.loads(args[0])
    out = Path(os.environ.get("CORRAL_ARTIFACTS", "artifacts")) / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    app = subprocess.Popen(list(spec["command"]), start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        if not _listening(int(spec["port"]), float(spec.get("wait_s", 60)), app):
            print(f"the app did not listen on port {spec['port']} within {spec.get('wait_s')} s")
            _write(out, {"started": False, "pages": []})
            return 1
        pages = _capture(spec, out)
    finally:
        _stop(app)
    _write(out, {"started": True, "pages": pages})
    for page in pages:
        said = f"HTTP {page['status']}" if page.get("status") else page.get("error", "")
        print(f"{page['name']} {page['path']}: {said}")
    return 0 if all(p.get("status") and p["status"] < 400 for p in pages) else 1


def _listening(port: int, wait_s: float, app: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if app.poll() is not None:
            print(f"the app exited with code {app.returncode} before it listened")
            return False
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def _capture(spec: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    from playwright.sync_api import Error, sync_playwright

    browser_path = next((p for p in CHROMIUM if shutil.which(p)), CHROMIUM[0])
    found = []
    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=browser_path, args=ARGS)
        try:
            size = {"width": int(spec.get("width", 1280)), "height": int(spec.get("height", 800))}
            page = browser.new_page(viewport=size)  # type: ignore[arg-type]
            for wanted in spec["pages"]:
                name, path = str(wanted["name"]), str(wanted["path"])
                entry: dict[str, Any] = {"name": name, "path": path}
                try:
                    response = page.goto(f"http://127.0.0.1:{spec['port']}{path}",
                                         timeout=PAGE_TIMEOUT_MS)  # fmt: skip
                    entry["status"] = response.status if response is not None else None
                    page.screenshot(path=str(out / f"{name}.png"), timeout=PAGE_TIMEOUT_MS)
                    entry["screenshot"] = f"screenshots/{name}.png"
                    entry["title"] = page.title()[:200]
                except Error as exc:
                    entry["error"] = str(exc).splitlines()[0][:300]
                found.append(entry)
        finally:
            browser.close()
    return found


def _stop(app: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(app.pid, signal.SIGTERM)
        app.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(app.pid, signal.SIGKILL)


def _write(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
