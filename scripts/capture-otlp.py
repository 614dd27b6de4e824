#!/usr/bin/env python3
"""Capture what an OpenTelemetry exporter sends: a tiny OTLP/HTTP sink on loopback.

Every ``POST /v1/traces``, ``/v1/logs`` or ``/v1/metrics`` is saved, byte for
byte as received, to ``OUT/NNN-SIGNAL.EXT`` (``.pb`` for protobuf, ``.json`` for
JSON, ``.gz`` appended when the body was gzip-compressed), and a line describing it
is appended to ``OUT/index.jsonl``. Each request is answered with an empty
``Export*ServiceResponse`` in the request's encoding, as a collector would.

    python scripts/capture-otlp.py OUT [--port 4318]

Point an agent at it with ``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:PORT``.
Stops on Ctrl-C or SIGTERM. Used to record tests/traces/data/otlp/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def make_handler(out: Path, counter: itertools.count[int], lock: threading.Lock) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self._read_body()
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
            signal_name = self.path.rstrip("/").rsplit("/", 1)[-1] or "root"
            ext = "json" if ctype == "application/json" else "pb"
            if encoding == "gzip":
                ext += ".gz"
            with lock:
                name = f"{next(counter):03d}-{signal_name}.{ext}"
                (out / name).write_bytes(body)
                entry: dict[str, Any] = {
                    "file": name,
                    "path": self.path,
                    "content_type": ctype,
                    "content_encoding": encoding or None,
                    "user_agent": self.headers.get("User-Agent"),
                    "bytes": len(body),
                    "time": time.time(),
                }
                with (out / "index.jsonl").open("a") as index:
                    index.write(json.dumps(entry) + "\n")
            answer = b"{}" if ext.startswith("json") else b""
            self.send_response(200)
            self.send_header("Content-Type", ctype or "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def _read_body(self) -> bytes:
            if "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = []  # Node's exporters send chunked bodies without a Content-Length
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"capture-otlp: {self.command} {self.path}\n")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = len(list(args.out.glob("[0-9][0-9][0-9]-*")))
    handler = make_handler(args.out, itertools.count(start), threading.Lock())
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"capturing OTLP on http://127.0.0.1:{server.server_address[1]} into {args.out}")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
