"""``python -m corral.agent`` and ``corral agent``: flags, environment, exit codes.

Settings come from the flags, else from the environment: ``OPENAI_BASE_URL``
(the gateway's ``/v1`` base), ``OPENAI_API_KEY`` or ``CORRAL_API_KEY`` (the
key; there is no flag for it, so it never shows in a process list),
``CORRAL_MODEL``, and ``CORRAL_ARTIFACTS`` (the report goes to
``report.md`` there unless ``--report`` says otherwise). The report is always
printed to stdout at the end; progress and errors go to stderr.

Exit codes: 0 completed, 1 stopped by an error (the gateway refused or could
not be reached, or the agent was interrupted), 2 bad usage, 3 turn limit.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from corral.agent.errors import Interrupted, UsageError
from corral.agent.loop import Agent
from corral.agent.model import ModelClient
from corral.agent.report import changes, render, snapshot
from corral.agent.telemetry import AGENT_NAME, Telemetry
from corral.agent.tools import Toolbox

PROG = "python -m corral.agent"


@dataclass(frozen=True, slots=True)
class Flag:
    """One command-line option; ``corral agent`` builds its click options from the same table."""

    name: str
    metavar: str
    help: str
    type: type = str


FLAGS: tuple[Flag, ...] = (
    Flag("--task", "TEXT", "The task, sent as the opening user message."),
    Flag("--task-file", "FILE", "Read the task from FILE instead."),
    Flag("--model", "MODEL", "The model to call (default: $CORRAL_MODEL)."),
    Flag(
        "--base-url",
        "URL",
        "The gateway's OpenAI base URL, ending in /v1 (default: $OPENAI_BASE_URL).",
    ),
    Flag("--max-turns", "N", "Model calls at most before stopping (default: 30).", int),
    Flag("--workdir", "DIR", "The directory the agent works in (default: the current one)."),
    Flag(
        "--report",
        "FILE",
        "Also write the report to FILE (default: $CORRAL_ARTIFACTS/"
        "report.md when CORRAL_ARTIFACTS is set).",
    ),
    Flag(
        "--command-timeout",
        "SECONDS",
        "Default and longest run time of one shell command (default: 120).",
        float,
    ),
)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything one run of the agent needs, resolved and checked."""

    task: str
    model: str
    base_url: str
    api_key: str
    workdir: Path
    report: Path | None
    max_turns: int = 30
    command_timeout: float = 120.0
    images: tuple[Path, ...] = ()


IMAGES_MAX = 8
IMAGE_MAX_BYTES = 4 << 20
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def handed_images(environ: Mapping[str, str]) -> tuple[Path, ...]:
    """Screenshots handed over to this run (``$CORRAL_HANDOFF/screenshots``: a review's
    browser check), to show the model with the task: at most ``IMAGES_MAX``, each at most
    ``IMAGE_MAX_BYTES``, regular files only."""
    handoff = environ.get("CORRAL_HANDOFF")
    folder = Path(handoff, "screenshots") if handoff else None
    if folder is None or folder.is_symlink() or not folder.is_dir():
        return ()
    found = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_TYPES or path.is_symlink() or not path.is_file():
            continue
        if path.stat().st_size <= IMAGE_MAX_BYTES:
            found.append(path)
        if len(found) == IMAGES_MAX:
            break
    return tuple(found)


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser, built from ``FLAGS``."""
    result = argparse.ArgumentParser(
        prog=prog,
        description="Corral's reference coding agent: a tool-using loop over the gateway.",
        epilog="The key comes from OPENAI_API_KEY (or CORRAL_API_KEY). Exit codes: 0 completed, "
        "1 stopped by an error, 2 bad usage, 3 turn limit reached.",
    )
    for flag in FLAGS:
        result.add_argument(flag.name, metavar=flag.metavar, help=flag.help, type=flag.type)
    return result


def configure(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """The run's settings from the parsed flags and ``environ``; UsageError names what is
    missing."""
    workdir = Path(args.workdir or os.getcwd()).resolve()
    if not workdir.is_dir():
        raise UsageError(f"--workdir {args.workdir}: not a directory")
    report = args.report or (
        str(Path(environ["CORRAL_ARTIFACTS"], "report.md"))
        if environ.get("CORRAL_ARTIFACTS")
        else None
    )
    config = Config(
        task=read_task(args),
        model=required(
            args.model or environ.get("CORRAL_MODEL"), "model", "pass --model or set CORRAL_MODEL"
        ),
        base_url=required(
            args.base_url or environ.get("OPENAI_BASE_URL"),
            "gateway URL",
            "pass --base-url or set OPENAI_BASE_URL (the gateway's /v1 base)",
        ),
        api_key=required(
            environ.get("OPENAI_API_KEY") or environ.get("CORRAL_API_KEY"),
            "API key",
            "set OPENAI_API_KEY or CORRAL_API_KEY",
        ),
        workdir=workdir,
        report=Path(report) if report else None,
        max_turns=30 if args.max_turns is None else args.max_turns,
        command_timeout=120.0 if args.command_timeout is None else args.command_timeout,
        images=handed_images(environ),
    )
    if config.max_turns < 1:
        raise UsageError("--max-turns must be at least 1")
    if config.command_timeout <= 0:
        raise UsageError("--command-timeout must be positive")
    return config


def read_task(args: argparse.Namespace) -> str:
    if args.task and args.task_file:
        raise UsageError("give --task or --task-file, not both")
    if args.task_file:
        try:
            task = Path(args.task_file).read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise UsageError(f"--task-file {args.task_file}: cannot read it ({exc})") from exc
    else:
        task = args.task or ""
    return required(task.strip(), "task", "pass --task TEXT or --task-file FILE")


def required(value: str | None, what: str, hint: str) -> str:
    if not value:
        raise UsageError(f"no {what}: {hint}")
    return value


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    prog: str = PROG,
) -> int:
    """Run the agent as the command line says; the exit code."""
    environ = os.environ if environ is None else environ
    try:
        config = configure(parser(prog).parse_args(argv), environ)
    except UsageError as exc:
        print(f"{AGENT_NAME}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    with sigterm_interrupts():
        return run(config, environ)


def run(config: Config, environ: Mapping[str, str]) -> int:
    """One agent run: the loop, then the report (stdout, and the report file); the exit code."""
    before = snapshot(config.workdir)
    toolbox = Toolbox(config.workdir, command_timeout=config.command_timeout)
    telemetry = Telemetry.from_environ(environ, config.api_key)
    try:
        with httpx.Client() as http:
            client = ModelClient(config.base_url, config.api_key, http)
            agent = Agent(config.model, client, toolbox, telemetry, config.max_turns, log=progress)
            outcome = agent.run(config.task, images=[image_part(p) for p in config.images])
    finally:
        telemetry.shutdown()
    after = snapshot(config.workdir)
    report = render(
        outcome,
        toolbox,
        changes(before, after),
        model=config.model,
        max_turns=config.max_turns,
        complete=before.complete and after.complete,
    )
    if outcome.error:
        print(f"{AGENT_NAME}: {outcome.error}", file=sys.stderr)
    if config.report is not None:
        write_report(config.report, report)
    print(report, end="", flush=True)
    return outcome.exit_code


def image_part(path: Path) -> dict[str, Any]:
    """An image as a Chat Completions content part (a data URL)."""
    kind = IMAGE_TYPES[path.suffix.lower()]
    data = base64.b64encode(path.read_bytes()[:IMAGE_MAX_BYTES]).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{data}"}}


def write_report(path: Path, report: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report, encoding="utf-8")
    except OSError as exc:  # the report still goes to stdout; the run's outcome stands
        print(f"{AGENT_NAME}: could not write the report to {path}: {exc}", file=sys.stderr)


def progress(line: str) -> None:
    print(f"{AGENT_NAME}: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside, SIGTERM raises Interrupted, so a cancelled run still reports and flushes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted("interrupted by SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
