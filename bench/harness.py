"""What every benchmark shares: options, the report section, pinned processes, CPU accounting.

A benchmark module exposes ``NAME``, ``TITLE`` and ``run(options) -> Section``;
``bench/run.py`` prints the section and writes it into ``docs/benchmarks.md``.
Processes started here run in their own session (so one ``killpg`` on their
pid reaches them and their children, and nothing else) and are stopped when
the :class:`Processes` context exits, on success, error or Ctrl-C alike.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
VENV_BIN = REPO / ".venv" / "bin"

GATEWAY_CORE = 0
"""The process under test runs alone on this core."""
LOAD_CORE = 1
"""Upstream simulators and load generators share this core."""


class BenchError(Exception):
    """A benchmark could not run as designed; the message says why."""


@dataclass(frozen=True, slots=True)
class Options:
    """How long to measure; ``quick`` is a smoke run whose figures are not published."""

    quick: bool = False
    baseline: str | None = None
    """A git ref: the gateway overhead benchmark also measures Corral built from it."""
    litellm: bool = True
    """Whether the gateway overhead benchmark measures LiteLLM too."""
    rounds: int = 2
    """With a baseline: how many runs of each Corral per cell."""

    @property
    def cell_seconds(self) -> int:
        return 2 if self.quick else 8

    @property
    def warmup_seconds(self) -> int:
        return 1 if self.quick else 2


@dataclass(frozen=True, slots=True)
class Section:
    """One benchmark's report: a console summary and a markdown section for the docs."""

    name: str
    title: str
    console: str
    markdown: str


# --- processes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Service:
    """A started process, its log file and the core it is pinned to."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with {code}:\n{self.log_tail()}")


class Processes:
    """Starts pinned processes and stops every one of them on exit, newest first."""

    def __init__(self, logdir: Path) -> None:
        self._logdir = logdir
        self._services: list[Service] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        core: int | None,
        env: Mapping[str, str] | None = None,
    ) -> Service:
        """``core``: pin the process to it; None: let it use every core."""
        log = self._logdir / f"{name}.log"
        pin = ["taskset", "-c", str(core)] if core is not None else []
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*pin, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=self._logdir,
                start_new_session=True,
            )
        service = Service(name, proc, log)
        self._services.append(service)
        return service

    def stop_all(self) -> None:
        while self._services:
            _stop(self._services.pop())


def _stop(service: Service, grace: float = 10.0) -> None:
    """SIGTERM the service's process group, then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, sig)
        try:
            service.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no child of it outlived it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGKILL)
        return


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    problem: Callable[[], str | None], *, service: Service, timeout: float, what: str
) -> None:
    """Poll ``problem`` until it returns None (ready); fail early if the service dies."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        service.check_alive()
        found = problem()
        if found is None:
            return
        last = found
        time.sleep(0.2)
    raise BenchError(f"{what} not ready after {timeout:.0f} s ({last}):\n{service.log_tail()}")


def raise_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so context managers clean up as they do on Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# --- CPU accounting -------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgids: Sequence[int]) -> float:
    """User plus system CPU time of every live process in the given process groups."""
    wanted, total = set(pgids), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) in wanted:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (wrk runs, once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def core_jiffies() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies of each core since boot, from ``/proc/stat``."""
    cores = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *numbers = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(v) for v in numbers]
            idle = values[3] + values[4]
            cores[int(name[3:])] = (sum(values) - idle, sum(values))
    return cores


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU counters at one instant: ours on each of the two cores, and each core's jiffies."""

    at: float
    gateway: float
    load: float
    cores: dict[int, tuple[int, int]]

    @classmethod
    def take(cls, gateway: Sequence[int], load: Sequence[int]) -> CpuSample:
        """``gateway`` and ``load``: the process groups we run on each core (wrk is added)."""
        return cls(
            time.monotonic(),
            group_cpu_seconds(gateway),
            group_cpu_seconds(load) + children_cpu_seconds(),
            core_jiffies(),
        )


@dataclass(frozen=True, slots=True)
class CpuUsage:
    """Over an interval, in percent of one core: the gateway's use, and what others used."""

    gateway: float
    load: float
    """The simulator's and wrk's use (both on the load core)."""
    other_gateway_core: float
    """Use of the gateway core by anything but the measured gateway."""
    other_load_core: float
    """Use of the load core by anything but the simulator and wrk."""

    @classmethod
    def between(cls, start: CpuSample, end: CpuSample) -> CpuUsage:
        elapsed = max(end.at - start.at, 1e-9)

        def busy(core: int) -> float:
            (b0, t0), (b1, t1) = start.cores[core], end.cores[core]
            return 100.0 * (b1 - b0) / max(t1 - t0, 1)

        gateway = 100.0 * (end.gateway - start.gateway) / elapsed
        load = 100.0 * (end.load - start.load) / elapsed
        return cls(
            gateway=gateway,
            load=load,
            other_gateway_core=max(0.0, busy(GATEWAY_CORE) - gateway),
            other_load_core=max(0.0, busy(LOAD_CORE) - load),
        )


def wait_idle(pgids: Sequence[int], *, below: float = 5.0, timeout: float = 20.0) -> None:
    """Wait (at most ``timeout``) until the groups use under ``below`` % of a core.

    A gateway keeps working on requests wrk abandoned when a run ended; the
    next cell should not pay for them.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before, start = group_cpu_seconds(pgids), time.monotonic()
        time.sleep(0.3)
        used = group_cpu_seconds(pgids) - before
        if 100.0 * used / (time.monotonic() - start) < below:
            return


# --- the machine ----------------------------------------------------------------------------


def _proc_field(path: str, key: str) -> str:
    for line in Path(path).read_text().splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return "unknown"


def command_output(argv: Sequence[str]) -> str:
    """First line of a command's output, or why it could not be had."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine_facts() -> dict[str, str]:
    """The facts a reader needs to compare figures across machines."""
    mem_kib = int(_proc_field("/proc/meminfo", "MemTotal").split()[0])
    return {
        "CPU": f"{_proc_field('/proc/cpuinfo', 'model name')}, "
        f"{_proc_field('/proc/cpuinfo', 'cpu MHz')} MHz",
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024**2:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "wrk": command_output(["wrk", "-v"]).split(" [", 1)[0],
        "load average at start (1/5/15 min)": " ".join(
            Path("/proc/loadavg").read_text().split()[:3]
        ),
    }


# --- rendering ------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table padded so that it also reads well on a terminal."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])
