"""The servers a benchmark talks to: ``corral sim``, ``corral serve``, Redis and LiteLLM.

Each ``start_*`` function starts one pinned process, waits until it answers a
real chat completion and returns a :class:`Target`. LiteLLM is installed on
first use into ``bench/.work/litellm-venv`` and configured with no database,
no callbacks and the local price table, so it never reaches the network.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

from harness import (
    GATEWAY_CORE,
    LOAD_CORE,
    VENV_BIN,
    WORK,
    BenchError,
    Processes,
    Service,
    free_port,
    wait_until,
)
from wrk import Load

CHAT_PATH = "/v1/chat/completions"
MODEL = "sim-economy"
LITELLM_VENV = WORK / "litellm-venv"
LITELLM_INSTALL_LOG = WORK / "litellm-install.log"


def chat_body(*, stream: bool, capped: bool = True) -> bytes:
    """The small request every target gets: one short user message, at most 64 tokens back.

    Uncapped (no ``max_tokens``), the simulator's answer is a little longer (its
    length comes from a hash of the messages) and a gateway enforcing a budget
    has to set a cap itself.
    """
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    }
    if capped:
        body["max_tokens"] = 64
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Target:
    """A server that answers ``POST /v1/chat/completions``."""

    name: str
    base_url: str
    service: Service
    core: int
    authorization: str = ""

    def load(self, *, stream: bool, capped: bool = True) -> Load:
        body = chat_body(stream=stream, capped=capped)
        return Load(self.base_url + CHAT_PATH, body, self.authorization)


@dataclass(frozen=True, slots=True)
class Corral:
    """A running Corral, its admin credentials and a virtual key on the target.

    The key belongs to user ``bench`` of team ``bench``; ``key_id`` is its id.
    """

    target: Target
    key_id: str
    admin_env: dict[str, str] = field(repr=False)

    def cli(self, *args: str) -> str:
        return corral_cli(args, self.admin_env)


# --- probing --------------------------------------------------------------------------------


def post(load: Load, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request with the load's body and key: (status, headers, body)."""
    headers = {"Content-Type": "application/json", **dict(load.headers)}
    if load.authorization:
        headers["Authorization"] = load.authorization
    # Loopback http:// URLs built by this module only, hence the S310 waivers.
    request = urllib.request.Request(load.url, load.body, headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def answer_problem(target: Target) -> str | None:
    """Why the target does not answer a plain and a streamed chat completion, or None."""
    for stream in (False, True):
        try:
            status, _headers, body = post(target.load(stream=stream))
        except (OSError, http.client.HTTPException) as exc:
            return f"stream={stream}: {exc!r}"
        if status != 200 or (stream and b"data:" not in body):
            return f"stream={stream}: HTTP {status} {body[:300]!r}"
    return None


def listen_problem(url: str) -> str | None:
    """None once an HTTP server answers at ``url`` at all (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310
            return None
    except urllib.error.HTTPError:
        return None
    except OSError as exc:
        return repr(exc)


def wait_answering(target: Target, timeout: float) -> Target:
    wait_until(
        lambda: answer_problem(target), service=target.service, timeout=timeout, what=target.name
    )
    return target


# --- the simulator and Corral ---------------------------------------------------------------


def start_sim(procs: Processes, port: int) -> Target:
    """``corral sim`` with its defaults (no latency, no faults), on the load core."""
    argv = [str(VENV_BIN / "corral"), "sim", "--host", "127.0.0.1", "--port", str(port)]
    service = procs.start("sim", argv, core=LOAD_CORE)
    target = Target("sim direct", f"http://127.0.0.1:{port}", service, LOAD_CORE)
    return wait_answering(target, timeout=30)


def corral_cli(args: tuple[str, ...] | list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(VENV_BIN / "corral"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    if done.returncode != 0:
        raise BenchError(f"corral {' '.join(args)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def start_corral(
    procs: Processes,
    port: int,
    sim_url: str,
    home: Path,
    *,
    name: str = "Corral",
    env: Mapping[str, str] | None = None,
    source: Path | None = None,
) -> Corral:
    """One ``corral serve`` process on the gateway core, with a team, a user and a virtual key.

    ``name`` names the target (and, made a slug, its log file); ``env`` is added
    to the server's environment. ``source``: a ``src`` folder whose ``corral``
    package the server runs (``python -m corral`` with it first on
    ``PYTHONPATH``, the venv's dependencies) instead of the installed one. The
    admin calls that set the key up go through the installed CLI either way.
    """
    url = f"http://127.0.0.1:{port}"
    admin_env = {"CORRAL_URL": url, "CORRAL_ADMIN_KEY": "sk-admin-" + secrets.token_urlsafe(24)}
    program = [str(VENV_BIN / "corral")]
    server_env = {**(env or {}), **admin_env, "CORRAL_HOME": str(home)}
    if source is not None:
        program = [str(VENV_BIN / "python"), "-m", "corral"]
        server_env["PYTHONPATH"] = str(source)
    argv = [*program, "serve", "--port", str(port), "--sim-url", sim_url]
    log_name = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    service = procs.start(log_name, argv, core=GATEWAY_CORE, env=server_env)
    wait_until(lambda: listen_problem(url + "/"), service=service, timeout=60, what=name)
    key_id, key = _create_key(admin_env)
    target = Target(name, url, service, GATEWAY_CORE, f"Bearer {key}")
    return Corral(wait_answering(target, timeout=30), key_id, admin_env)


def _create_key(admin_env: dict[str, str]) -> tuple[str, str]:
    """Team ``bench``, its user ``bench`` and a virtual key of theirs: (key id, key)."""
    corral_cli(["teams", "create", "bench"], admin_env)
    corral_cli(["users", "create", "bench", "--team", "bench"], admin_env)
    created = json.loads(
        corral_cli(["keys", "create", "--team", "bench", "--user", "bench", "--json"], admin_env)
    )
    return str(created["id"]), str(created["key"])


# --- Redis ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redis:
    """A ``redis-server`` of the benchmark's own, without persistence."""

    service: Service
    url: str

    def footprint(self) -> tuple[int, str]:
        """How many keys it holds (Corral's quota counters and leases, once used), in how much."""
        client = redis.Redis.from_url(self.url)
        try:
            memory = client.info("memory")["used_memory_human"]
            return int(client.dbsize()), f"{memory}B"
        finally:
            client.close()


def start_redis(procs: Processes, workdir: Path) -> Redis:
    """``redis-server`` on a free loopback port, on the load core."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    service = procs.start("redis", [*argv, "no", "--dir", str(workdir)], core=LOAD_CORE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        service.check_alive()
        try:
            socket.create_connection(("127.0.0.1", port)).close()
        except OSError:
            time.sleep(0.02)
            continue
        return Redis(service, f"redis://127.0.0.1:{port}/0")
    raise BenchError("redis-server did not accept connections within 10 s")


# --- LiteLLM --------------------------------------------------------------------------------

LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {sim_url}/v1
      api_key: anything
litellm_settings:
  callbacks: []
  success_callback: []
  failure_callback: []
  set_verbose: false
"""

LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the bundled price table, no download
    "LITELLM_LOG": "ERROR",  # no access log, as Corral has none by default
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
}


def litellm_python() -> Path:
    return LITELLM_VENV / "bin" / "python"


def ensure_litellm() -> str:
    """Install ``litellm[proxy]`` into its own venv unless present; return its version."""
    if not _litellm_version():
        _install_litellm()
    version = _litellm_version()
    if not version:
        raise BenchError(f"litellm is not importable after install; see {LITELLM_INSTALL_LOG}")
    return version


def _litellm_version() -> str:
    if not litellm_python().exists():
        return ""
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    done = subprocess.run(
        [str(litellm_python()), "-c", code], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _install_litellm() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)],
        [str(litellm_python()), "-m", "pip", "install", "-q", "litellm[proxy]"],
    ]
    print(f"installing litellm[proxy] into {LITELLM_VENV} ...", file=sys.stderr, flush=True)
    with LITELLM_INSTALL_LOG.open("w") as log:
        for argv in steps:
            done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
            if done.returncode != 0:
                tail = LITELLM_INSTALL_LOG.read_text().splitlines()[-5:]
                raise BenchError(f"{' '.join(argv[:4])} failed: " + " / ".join(tail))


def start_litellm(procs: Processes, port: int, sim_url: str, workdir: Path) -> Target:
    """The LiteLLM proxy, one worker on the gateway core, pointed at the simulator."""
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(model=MODEL, sim_url=sim_url))
    argv = [
        str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config),
        "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
    ]  # fmt: skip
    # With no database a master key is the only key it can check, and it refuses to start
    # without one; requests carry it, as Corral's carry a virtual key.
    master_key = "sk-" + secrets.token_hex(32)
    env = {**LITELLM_ENV, "LITELLM_MASTER_KEY": master_key}
    service = procs.start("litellm", argv, core=GATEWAY_CORE, env=env)
    url = f"http://127.0.0.1:{port}"
    target = Target("LiteLLM", url, service, GATEWAY_CORE, f"Bearer {master_key}")
    return wait_answering(target, timeout=120)
