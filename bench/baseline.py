"""A baseline Corral: the same gateway built from an earlier commit, measured in the same run.

``checkout`` puts the commit in a detached git worktree for the length of the
run, so its ``src`` can be served beside the working tree's. Both Corrals are
measured several times per cell, alternating (change, baseline, baseline,
change, ...), so that drift during a cell's runs hits both alike. The spread
of a server's own runs is the run's noise; a difference between the two
servers is only called a regression when it is larger than three standard
deviations of that noise (and than a small floor).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import REPO, VENV_BIN, BenchError, markdown_table


def run_name(target: str, round_: int) -> str:
    """A target's name in its ``round_``-th run of a cell (the first run keeps the name)."""
    return target if round_ == 1 else f"{target} (run {round_})"


@dataclass(frozen=True, slots=True)
class Checkout:
    """A commit checked out in a worktree of its own."""

    path: Path
    commit: str
    """The abbreviated commit id."""
    subject: str

    @property
    def source(self) -> Path:
        return self.path / "src"


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(ref: str, parent: Path) -> Iterator[Checkout]:
    """``ref`` in a detached worktree under ``parent``, removed (and pruned) on exit."""
    commit = _git("rev-parse", "--short", f"{ref}^{{commit}}")
    path = parent / f"baseline-{commit}"
    _git("worktree", "add", "--detach", str(path), commit)
    try:
        found = Checkout(path, commit, _git("log", "-1", "--format=%s", commit))
        _check_imported(found.source)
        yield found
    finally:
        # A worktree removal that fails still leaves the folder to the caller's temporary
        # directory; prune then drops git's record of it.
        with contextlib.suppress(BenchError):
            _git("worktree", "remove", "--force", str(path))
        with contextlib.suppress(BenchError):
            _git("worktree", "prune")


def _check_imported(source: Path) -> None:
    """Fail unless the venv's python, given ``source`` on PYTHONPATH, imports corral from it.

    An editable install that won over PYTHONPATH would measure the change twice.
    """
    done = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import corral; print(corral.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(source)},
    )
    imported = Path(done.stdout.strip() or "/")
    if done.returncode != 0 or not imported.is_relative_to(source):
        raise BenchError(f"with PYTHONPATH={source}, corral imports from {imported} {done.stderr}")


def working_tree() -> str:
    """What the installed Corral is built from: the HEAD commit, and whether it has changes."""
    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return f"working tree at {head}" + (" with uncommitted changes" if dirty else "")


# --- comparing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One run of one server in one cell: a figure, and what its noise is relative to."""

    value: float
    scale: float
    """CPU: the value itself; an overhead: the server's latency percentile it was taken from."""


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    digits: int


CPU = Quantity("CPU µs/req", 0)
OVER_P50 = Quantity("+P50 ms", 2)
OVER_P99 = Quantity("+P99 ms", 2)
QUANTITIES = (CPU, OVER_P50, OVER_P99)
SIGMAS = 3.0
"""A difference beyond this many standard deviations of the run's noise is a regression."""
FLOOR = 0.02
MAX_TOLERANCE = 0.10
"""A mean tolerance wider than this share of the baseline decides nothing: the run was too noisy."""
"""Differences below this share of the baseline are never called regressions."""


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One quantity of one cell: the change's runs against the baseline's runs."""

    mode: str
    connections: int
    quantity: Quantity
    change: tuple[Sample, ...]
    base: tuple[Sample, ...]

    @property
    def change_mean(self) -> float:
        return _mean([s.value for s in self.change])

    @property
    def base_mean(self) -> float:
        return _mean([s.value for s in self.base])

    @property
    def base_scale(self) -> float:
        return _mean([s.scale for s in self.base])

    @property
    def difference(self) -> float:
        """The change minus the baseline (positive: the change is slower or costlier)."""
        return self.change_mean - self.base_mean

    @property
    def relative(self) -> float:
        """The difference as a share of the baseline's scale."""
        return self.difference / self.base_scale if self.base_scale > 0 else 0.0

    @property
    def ratio(self) -> float | None:
        return self.change_mean / self.base_mean if self.base_mean > 0 else None

    @property
    def spread_factor(self) -> float:
        """The standard deviation of ``relative``, in units of one run's sigma."""
        return math.sqrt(1 / len(self.change) + 1 / len(self.base))

    def variances(self) -> list[tuple[float, int]]:
        """Each server's sample variance over its own runs, as a share of its scale squared,
        with its degrees of freedom."""
        found = []
        for runs in (self.change, self.base):
            scale = _mean([s.scale for s in runs])
            if len(runs) > 1 and scale > 0:
                found.append((statistics.variance([s.value / scale for s in runs]), len(runs) - 1))
        return found


def compare(
    mode: str,
    connections: int,
    change: Sequence[Sequence[Sample]],
    base: Sequence[Sequence[Sample]],
) -> list[Comparison]:
    """One comparison per quantity; each run gives one sample per quantity, in their order."""
    return [
        Comparison(mode, connections, q, tuple(r[i] for r in change), tuple(r[i] for r in base))
        for i, q in enumerate(QUANTITIES)
    ]


@dataclass(frozen=True, slots=True)
class Judgement:
    """One quantity over every cell: the run's noise in it, and whether the change is worse."""

    quantity: Quantity
    comparisons: tuple[Comparison, ...]
    sigma: float
    """One run's standard deviation, as a share of the scale, pooled over every cell."""

    @classmethod
    def of(cls, comparisons: Sequence[Comparison], quantity: Quantity) -> Judgement:
        mine = tuple(c for c in comparisons if c.quantity is quantity)
        pooled = [v for c in mine for v in c.variances()]
        freedom = sum(f for _v, f in pooled)
        variance = sum(v * f for v, f in pooled) / freedom if freedom else 0.0
        return cls(quantity, mine, math.sqrt(variance))

    def cell_tolerance(self, cell: Comparison) -> float:
        """Share of the baseline a cell may be worse by: SIGMAS standard deviations of the
        difference between the two means."""
        return max(FLOOR, SIGMAS * self.sigma * cell.spread_factor)

    @property
    def widest(self) -> float:
        return max((self.cell_tolerance(c) for c in self.comparisons), default=FLOOR)

    @property
    def mean_tolerance(self) -> float:
        """The same for the mean relative difference over the cells."""
        n = max(len(self.comparisons), 1)
        spread = math.sqrt(sum(c.spread_factor**2 for c in self.comparisons)) / n
        return max(FLOOR, SIGMAS * self.sigma * spread)

    @property
    def mean_relative(self) -> float:
        return _mean([c.relative for c in self.comparisons]) if self.comparisons else 0.0

    def worse(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.relative > self.cell_tolerance(c)]

    @property
    def ok(self) -> bool:
        return not self.worse() and self.mean_relative <= self.mean_tolerance

    @property
    def verdict(self) -> str:
        """MISS when worse beyond tolerance; PASS, or INCONCLUSIVE when the noise hid too much."""
        if not self.ok:
            return "MISS"
        return "PASS" if self.mean_tolerance <= MAX_TOLERANCE else "INCONCLUSIVE"

    def line(self) -> str:
        q, n, limit = self.quantity, len(self.comparisons), self.widest
        worse = ", ".join(f"{c.mode} c={c.connections}" for c in self.worse())
        return (
            f"{q.name}: the change minus the baseline averages {self.mean_relative:+.1%} of the "
            f"baseline over {n} cells (tolerance {self.mean_tolerance:.1%}); "
            f"{'cells' if worse else 'no cell'} beyond {limit:.1%} ({SIGMAS:g} sigma of a cell's "
            f"difference; one run's sigma {self.sigma:.1%}){': ' + worse if worse else ''}: "
            f"{self.verdict}."
        )


def judge(comparisons: Sequence[Comparison]) -> list[Judgement]:
    return [Judgement.of(comparisons, q) for q in QUANTITIES]


COMPARISON_HEADERS = (
    "mode", "conc", "figure", "change", "baseline", "change − baseline", "ratio",
    "of baseline", "tolerance", "verdict",
)  # fmt: skip


def _number(value: float, digits: int, sign: bool = False) -> str:
    return f"{value:+,.{digits}f}" if sign else f"{value:,.{digits}f}"


def _runs(samples: tuple[Sample, ...], digits: int) -> str:
    """The mean, and the runs it is the mean of."""
    values = [s.value for s in samples]
    each = " / ".join(_number(v, digits) for v in values)
    return f"{_number(_mean(values), digits)} ({each})"


def comparison_table(judgements: Sequence[Judgement]) -> str:
    """One row per cell and quantity, cells in the order measured."""
    rows = []
    for j in judgements:
        for c in j.comparisons:
            d = c.quantity.digits
            row = [
                c.mode,
                str(c.connections),
                c.quantity.name,
                _runs(c.change, d),
                _runs(c.base, d),
                _number(c.difference, d, sign=True),
                f"{c.ratio:.3f}" if c.ratio is not None else "–",
                f"{c.relative:+.1%}",
                f"{j.cell_tolerance(c):.1%}",
                "ok" if c.relative <= j.cell_tolerance(c) else "WORSE",
            ]
            rows.append((c.mode, c.connections, QUANTITIES.index(c.quantity), row))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return markdown_table(COMPARISON_HEADERS, [r[3] for r in rows])


def verdict_line(judgements: Sequence[Judgement], change: str, base: str) -> str:
    """The check: no figure of the change worse than the baseline's beyond its tolerance."""
    verdicts = [j.verdict for j in judgements]
    overall = next((v for v in ("MISS", "INCONCLUSIVE") if v in verdicts), "PASS")
    names = ", ".join(j.quantity.name for j in judgements if j.verdict == overall)
    return (
        f"**{change} no worse than {base}** (CPU µs/req, +P50, +P99; every cell and their mean): "
        + (f"{overall}." if overall == "PASS" else f"{overall} ({names}).")
    )


def tolerance_text(change: str, base: str, rounds: int) -> str:
    order = ", ".join(f"{change}, {base}" if r % 2 else f"{base}, {change}" for r in range(1, 5))
    return (
        f"{change} and {base} are each measured {rounds} times per cell, alternating ({order} "
        "...; LiteLLM, when measured, after the first pair); the figures compared are the means "
        "of a server's runs (each run in brackets). The run's own noise: the standard deviation "
        "sigma of one run, as a share of the figure (of the latency percentile for an overhead, "
        "since the direct call subtracted is the same for both), pooled over both servers and "
        "every cell. A cell is worse when the change exceeds the baseline by more than "
        f"{SIGMAS:g} standard deviations of a difference of two means (sigma * sqrt(2/{rounds})), "
        f"the mean over the cells when it exceeds {SIGMAS:g} of the mean's (that / sqrt(cells)). "
        f"Differences under {FLOOR:.0%} of the baseline never count; a mean tolerance over "
        f"{MAX_TOLERANCE:.0%} makes the verdict INCONCLUSIVE (too noisy to tell). *of baseline*: "
        "the difference as a share of the baseline's CPU per request, or of its latency "
        "percentile."
    )
