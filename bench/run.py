"""Run Corral's benchmarks and write their figures into ``docs/benchmarks.md``.

``make bench`` runs this file. Each benchmark is a module beside it with
``NAME``, ``TITLE`` and ``run(options) -> Section``; add a module to
``BENCHMARKS`` to add a benchmark. A section replaces the text between its
``<!-- bench:NAME -->`` markers in the docs (or is appended), so each
benchmark can be rerun alone without touching the others' figures.

    .venv/bin/python bench/run.py                      # all, full length, writes the docs
    .venv/bin/python bench/run.py --only gateway_overhead
    .venv/bin/python bench/run.py --quick              # smoke run: short cells, docs untouched
    .venv/bin/python bench/run.py --only gateway_overhead --baseline REF  # against Corral at REF
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import gateway_budgets
import gateway_overhead
import guards
import quota_admission
import routing
import trajectories
from harness import REPO, BenchError, Options, Section, raise_on_sigterm

BENCHMARKS: tuple[ModuleType, ...] = (
    gateway_overhead,
    gateway_budgets,
    routing,
    quota_admission,
    trajectories,
    guards,
)
DOC = REPO / "docs" / "benchmarks.md"
DOC_HEADER = """\
# Benchmarks

Figures from `make bench` (`bench/run.py`), each section written by its
benchmark on the machine it describes. They are measurements of one run on a
shared machine, not guarantees: rerun a section with
`.venv/bin/python bench/run.py --only NAME`.
"""


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [m.NAME for m in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=names, action="append", help="run only this benchmark")
    parser.add_argument("--quick", action="store_true", help="short cells, for a smoke run")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure Corral built from this git ref, side by side (gateway overhead)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        metavar="N",
        help="with --baseline: runs of each Corral per cell, alternating [default: 2]",
    )
    parser.add_argument(
        "--no-litellm",
        dest="litellm",
        action="store_false",
        help="do not measure LiteLLM (gateway overhead)",
    )
    parser.add_argument(
        "--write-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"update {DOC.relative_to(REPO)} [default: yes, except with --quick]",
    )
    return parser.parse_args(argv)


def _selected(only: list[str] | None) -> list[Callable[[Options], Section]]:
    return [m.run for m in BENCHMARKS if not only or m.NAME in only]


def update_doc(doc: Path, section: Section) -> None:
    """Replace the section's marked block in ``doc``, or append it."""
    block = (
        f"<!-- bench:{section.name} -->\n{section.markdown.strip()}\n<!-- /bench:{section.name} -->"
    )
    text = doc.read_text() if doc.exists() else DOC_HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(section.name)} -->.*?<!-- /bench:{re.escape(section.name)} -->",
        re.DOTALL,
    )
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = f"{text.rstrip()}\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.rounds < 2:
        print("--rounds: at least 2 (one server's runs are the noise estimate)", file=sys.stderr)
        return 2
    options = Options(
        quick=args.quick, baseline=args.baseline, litellm=args.litellm, rounds=args.rounds
    )
    write = (not args.quick) if args.write_docs is None else args.write_docs
    raise_on_sigterm()
    for benchmark in _selected(args.only):
        try:
            section = benchmark(options)
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted; every process the benchmark started was stopped", file=sys.stderr)
            return 130
        print(f"\n== {section.title}\n\n{section.console}\n")
        if write:
            update_doc(DOC, section)
            print(f"wrote {DOC.relative_to(REPO)} (section {section.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
