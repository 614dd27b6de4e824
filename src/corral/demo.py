"""``make run``: Corral on its embedded defaults, a simulator, and a small demo fleet.

Starts ``corral sim`` (with realistic latency) and ``corral serve`` pointed at
it in this process, creates two demo teams with keys, drives a bounded fleet
of clients through the OpenAI Chat, OpenAI Responses and Anthropic Messages
protocols, prints the URLs and a usage table, runs three sandboxed agent runs
where the host can (and otherwise says what to install), and keeps serving
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table

from corral.app import CorralApp, create_app
from corral.errors import Conflict, CorralError
from corral.identity.keys import KEY_PREFIX
from corral.identity.service import IdentityService
from corral.runs import sample
from corral.settings import load_settings
from corral.sim import SimConfig, SimServer
from corral.traces.query import Visibility
from corral.traces.usage import usage

TEAMS = {"payments": ["ada", "grace"], "search": ["linus"]}
ROUNDS = 4  # requests per agent per protocol: bounded, the demo is not a load test
PROMPTS = [
    "Summarise the failing test in payments/ledger_test.py.",
    "Propose a fix for the flaky retry in the search indexer.",
    "Write a changelog entry for the new refund endpoint.",
    "Explain what the capacity contract with the provider covers.",
]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m corral.demo", description=__doc__)
    parser.add_argument(
        "--bwrap",
        default="bwrap",
        metavar="PATH",
        help="The bubblewrap the demo checks for before its runs (default: bwrap, on PATH, "
        "where the server looks for it).",
    )
    args = parser.parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)
    admin_key = os.environ.get("CORRAL_ADMIN_KEY") or f"{KEY_PREFIX}admin-" + secrets.token_urlsafe(
        24
    )
    port = int(os.environ.get("CORRAL_PORT", "4100"))
    sim_port = int(os.environ.get("CORRAL_SIM_PORT", "4200"))
    for p in (port, sim_port):
        if not _port_free(p):
            sys.exit(
                f"port {p} is in use: stop what runs there, or set CORRAL_PORT / CORRAL_SIM_PORT"
            )
    try:
        asyncio.run(_run(console, admin_key, port, sim_port, args.bwrap))
    except KeyboardInterrupt:
        console.print("stopped")
    except CorralError as exc:
        sys.exit(f"corral demo: {exc.message}")


async def _run(console: Console, admin_key: str, port: int, sim_port: int, bwrap: str) -> None:
    sim_sock = _bind(sim_port)
    sim = SimServer(SimConfig(ttft_ms=120, tokens_per_second=150, script=sample.SCRIPT))
    await sim.start(sim_sock)
    settings = load_settings(port=port, admin_key=admin_key, sim_url=f"http://127.0.0.1:{sim_port}")
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="on",
            http="httptools",
            log_level="warning",
            access_log=False,
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving  # raises the start-up error
            return
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    keys = await asyncio.to_thread(_demo_keys, app)
    await asyncio.to_thread(_demo_limits, app)
    await app.quotas.reload()
    console.print(f"[bold]Corral[/] {base}  status page {base}/  admin API {base}/api/v1/docs")
    console.print(f"simulator http://127.0.0.1:{sim_port}  store {app.store.describe()}")
    console.print(f"admin key (this run): {admin_key}")
    console.print(f"demo fleet: {sum(len(u) for u in TEAMS.values())} agents, three protocols …")
    console.print(
        "budgets: payments USD 5.00/day (degrades past 80 %), search 2M tokens/day, "
        "linus 120 requests/min; see `corral budgets show`"
    )
    traces = await _fleet(base, keys)
    await app.recorder.flush()
    _usage_table(console, app)
    console.print(
        f"\nAn agent's turn, from its own spans down to the gateway's attempt and raw bodies:\n"
        f"  CORRAL_URL={base} CORRAL_ADMIN_KEY={admin_key} corral trace {traces[0]}"
    )
    missing = missing_for_runs(bwrap, os.geteuid())
    if missing:
        console.print(runs_advice(missing))
    else:
        await _demo_runs(console, app, base, keys, admin_key)
    console.print(f"\nDashboard (status page): {base}/   — Ctrl-C to stop.")
    try:
        await serving
    finally:
        await sim.stop()


def missing_for_runs(bwrap: str, euid: int) -> list[tuple[str, str]]:
    """What this host lacks for the demo runs, each with how to get it: bubblewrap, and
    root (a run drops to an unprivileged uid of its own and gets cgroup limits)."""
    missing = []
    if shutil.which(bwrap) is None:
        missing.append(
            (
                f"bubblewrap ({bwrap}) is not installed",
                "apt-get install bubblewrap   # Debian, Ubuntu; Fedora: dnf install bubblewrap",
            )
        )
    if euid != 0:
        missing.append(
            (
                "the demo does not run as root",
                "sudo make run   # root: each run gets a uid of its own and cgroup limits",
            )
        )
    return missing


def runs_advice(missing: list[tuple[str, str]]) -> str:
    """How to get the full demo: what is missing and the commands that bring it."""
    steps = "\n".join(f"  {how}" for _, how in missing)
    return (
        f"\n[yellow]No demo runs[/]: agent runs need the sandbox, and "
        f"{'; '.join(what for what, _ in missing)}. For the full demo:\n{steps}\n"
        "then `make run` also runs the reference agent three times in the sandbox, on a "
        "sample repository (docs/runs.md)."
    )


async def _demo_runs(
    console: Console, app: CorralApp, base: str, keys: dict[str, str], admin_key: str
) -> None:
    """Three runs of the reference agent on the sample repository, in the sandbox: a fix,
    and a plan handed to an implementation."""
    if app.executor.refusal:  # the host has bubblewrap and root, yet the probe refused
        console.print(
            f"\n[yellow]No demo runs[/]: {app.executor.refusal}. The demo's runs are always "
            "sandboxed: once that is fixed, `make run` runs them."
        )
        return
    repo = app.settings.home.resolve() / "demo-repo"
    if not repo.exists():
        await asyncio.to_thread(sample.make_repo, repo)
    console.print(f"\ndemo runs: the reference agent on {repo} (a failing test), sandboxed …")
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def submit(who: str, task: str, **extra: Any) -> dict[str, Any]:
            body = {"agent": "corral", "repo": str(repo), "task": task, **extra}
            auth = {"authorization": f"Bearer {keys[who]}"}
            r = await client.post(
                "/api/v1/runs", json={"model": "sim-standard", **body}, headers=auth
            )
            if r.status_code != 201:
                raise CorralError(f"the demo run was refused: {r.text}")
            return await _finished(client, r.json()["id"], auth)

        fix, plan = await asyncio.gather(
            submit("payments/ada", "Fix the failing test in test_calc.py"),
            submit("search/linus", "Plan: add mean() to calc.py"),
        )
        done = [fix, plan]
        if plan["state"] == "awaiting_review":
            done.append(
                await submit(
                    "search/linus", "Implement the plan handed over", handoff_from=plan["id"]
                )
            )
    table = Table(title="Runs")
    for column in ("run", "owner", "state", "why", "calls"):
        table.add_column(column)
    for run in done:
        table.add_row(
            run["id"], run["owner"], run["state"], run["reason"] or "", str(run["llm_calls"])
        )
    console.print(table)
    env = f"CORRAL_URL={base} CORRAL_ADMIN_KEY={admin_key}"
    console.print(
        f"See a run, its change and its trajectory:\n  {env} corral runs show {fix['id']}\n"
        f"  {env} corral runs artifacts {fix['id']} diff.patch\n"
        f"  {env} corral trace {fix['trace_id']}\n"
        f"Its review (the gate, the evidence check of its report), then approve and deliver:\n"
        f"  {env} corral review show {fix['id']}\n"
        f"  {env} corral review approve {fix['id']}\n"
        f"  {env} corral runs deliver {fix['id']} --patch -"
    )


async def _finished(
    client: httpx.AsyncClient, run_id: str, auth: dict[str, str], limit: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        run: dict[str, Any] = (await client.get(f"/api/v1/runs/{run_id}", headers=auth)).json()
        if run["state"] not in ("queued", "admitted", "running") or time.monotonic() > deadline:
            return run
        await asyncio.sleep(0.25)


def _demo_keys(app: CorralApp) -> dict[str, str]:
    service = IdentityService(app.store, app.clock)
    keys: dict[str, str] = {}
    for team, users in TEAMS.items():
        with contextlib.suppress(Conflict):
            service.create_team(team)
        for user in users:
            with contextlib.suppress(Conflict):
                service.create_user(user, team)
            _, raw = service.create_key(team, user, name=f"demo-{user}")
            keys[f"{team}/{user}"] = raw
    return keys


def _demo_limits(app: CorralApp) -> None:
    """Budgets and limits on the demo teams, so `corral budgets show` has something to show."""
    rules = app.quotas.rules
    rules.set_budget(rules.level("team", "payments"), "usd", "day", 5 * 10**9, soft_fraction=0.8)
    rules.set_budget(rules.level("team", "search"), "tokens", "day", 2_000_000)
    rules.set_limits(rules.level("user", "linus", team="search"), {"rpm": 120})


async def _fleet(base: str, keys: dict[str, str]) -> list[str]:
    """Drive the fleet; return the trace ids of the turns the agents reported over OTLP."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        return list(await asyncio.gather(*(_agent(client, who, key) for who, key in keys.items())))


async def _agent(client: httpx.AsyncClient, who: str, key: str) -> str:
    auth = {"authorization": f"Bearer {key}"}
    model = "sim-economy" if who.startswith("search") else "sim-standard"
    trace_id = await _traced_turn(client, who, auth, model)
    for i in range(ROUNDS):
        prompt = PROMPTS[i % len(PROMPTS)]
        chat: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        await client.post("/v1/chat/completions", json=chat, headers=auth)
        async with client.stream(
            "POST", "/v1/chat/completions", json={**chat, "stream": True}, headers=auth
        ) as r:
            async for _ in r.aiter_bytes():
                pass
        await client.post(
            "/v1/responses", json={"model": "sim-frontier", "input": prompt}, headers=auth
        )
        await client.post(
            "/v1/messages",
            json={
                "model": model,
                "max_tokens": 256,
                "messages": [{"role": "user", "content": prompt}],
            },
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        )
    return trace_id


async def _traced_turn(
    client: httpx.AsyncClient, who: str, auth: dict[str, str], model: str
) -> str:
    """One agent turn reported as OpenTelemetry GenAI spans (OTLP/HTTP JSON): the agent, a
    tool call and a model call whose ``traceparent`` the gateway honours; its trace id."""
    trace_id = os.urandom(16).hex()
    agent_id, tool_id, chat_id = (os.urandom(8).hex() for _ in range(3))
    started = time.time_ns()
    await asyncio.sleep(0.03)  # the tool "runs"
    tool_end = time.time_ns()
    chat = {"model": model, "messages": [{"role": "user", "content": PROMPTS[0]}]}
    headers = {**auth, "traceparent": f"00-{trace_id}-{chat_id}-01"}
    answer = (await client.post("/v1/chat/completions", json=chat, headers=headers)).json()
    usage = answer.get("usage") or {}
    ended = time.time_ns()

    def span(
        span_id: str, parent: str | None, name: str, start: int, end: int, **attrs: Any
    ) -> Any:
        return {
            "traceId": trace_id,
            "spanId": span_id,
            "parentSpanId": parent or "",
            "name": name,
            "kind": 3 if name.startswith("chat") else 1,
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(end),
            "attributes": [{"key": k, "value": _otlp_value(v)} for k, v in attrs.items()],
        }

    spans = [
        span(
            agent_id,
            None,
            "invoke_agent demo",
            started,
            ended,
            **{"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": who},
        ),
        span(
            tool_id,
            agent_id,
            "execute_tool read_file",
            started,
            tool_end,
            **{
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "read_file",
                "gen_ai.tool.call.arguments": '{"path": "payments/ledger_test.py"}',
            },
        ),
        span(
            chat_id,
            agent_id,
            f"chat {model}",
            tool_end,
            ended,
            **{
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model,
                "gen_ai.response.id": answer.get("id", ""),
                "gen_ai.usage.input_tokens": usage.get("prompt_tokens", 0),
                "gen_ai.usage.output_tokens": usage.get("completion_tokens", 0),
            },
        ),
    ]
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "demo-agent"}}]}
    body = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}
    await client.post("/v1/traces", json=body, headers=auth)
    return trace_id


def _otlp_value(value: Any) -> dict[str, Any]:
    if isinstance(value, int):
        return {"intValue": str(value)}
    return {"stringValue": str(value)}


def _usage_table(console: Console, app: CorralApp) -> None:
    rows = usage(app.store, Visibility(), ["team"], 0)
    table = Table(title="Usage by team")
    for column in ("team", "requests", "input", "cached", "output", "cost (USD)"):
        table.add_column(column, justify="left" if column == "team" else "right")
    for r in rows:
        table.add_row(
            r.group[0][1],
            f"{r.requests:,}",
            f"{r.input_tokens:,}",
            f"{r.cached_input_tokens:,}",
            f"{r.output_tokens:,}",
            f"{r.cost_usd:.6f}",
        )
    console.print(table)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


if __name__ == "__main__":
    main()
