"""Drive ``wrk`` (Debian's ``/usr/bin/wrk``) with a POST body and read its percentiles as JSON.

The Lua script takes the body, the ``Authorization`` header and any other
headers (``name: value`` lines) from the environment and, when the run ends,
prints one line ``BENCH_RESULT {...}`` with counts and latency percentiles in
microseconds, so nothing is parsed from wrk's human-oriented output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness import LOAD_CORE, BenchError

LUA = """\
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
local extra = os.getenv("BENCH_HEADERS")
if extra then
  for name, value in extra:gmatch("([^:\\n]+):%s*([^\\n]*)") do
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %.1f, "p99_us": %.1f, '
    .. '"max_us": %.1f, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

_MARK = "BENCH_RESULT "


@dataclass(frozen=True, slots=True)
class Load:
    """What to send: where, which body, with which credentials and other headers."""

    url: str
    body: bytes
    authorization: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run: completed responses, latency percentiles (ms) and failures."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    non_2xx: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failures(self) -> int:
        return self.socket_errors + self.non_2xx

    @classmethod
    def parse(cls, stdout: str) -> WrkResult:
        line = next((ln for ln in stdout.splitlines() if ln.startswith(_MARK)), None)
        if line is None:
            raise BenchError(f"wrk printed no result:\n{stdout[-2000:]}")
        data = json.loads(line.removeprefix(_MARK))
        return cls(
            requests=data["requests"],
            seconds=data["duration_us"] / 1e6,
            p50_ms=data["p50_us"] / 1e3,
            p99_ms=data["p99_us"] / 1e3,
            max_ms=data["max_us"] / 1e3,
            socket_errors=sum(data[k] for k in ("connect", "read", "write", "timeout")),
            non_2xx=data["status"],
        )


class Wrk:
    """Runs wrk pinned to the load core, one thread, a fixed number of connections.

    ``completed`` counts the responses completed per URL, warm-ups included.
    """

    def __init__(self, workdir: Path) -> None:
        for tool in ("wrk", "taskset"):
            if shutil.which(tool) is None:
                raise BenchError(f"{tool} is not installed (apt-get install wrk util-linux)")
        self._script = workdir / "post.lua"
        self._script.write_text(LUA)
        self.completed: Counter[str] = Counter()

    def run(self, load: Load, *, connections: int, seconds: int) -> WrkResult:
        argv = [
            "taskset", "-c", str(LOAD_CORE),
            "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
            "-s", str(self._script), load.url,
        ]  # fmt: skip
        env = {
            "BENCH_BODY": load.body.decode(),
            "BENCH_AUTH": load.authorization,
            "BENCH_HEADERS": "\n".join(f"{name}: {value}" for name, value in load.headers),
        }
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
            env={"PATH": "/usr/bin:/bin", **env},
        )
        if done.returncode != 0:
            raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
        result = WrkResult.parse(done.stdout)
        self.completed[load.url] += result.requests
        return result
