"""The servers a benchmark talks to: ``corral sim``, ``corral serve`` and the LiteLLM proxy.

Each ``start_*`` function starts one pinned process, waits until it answers a
real chat completion and returns a :class:`Target`. LiteLLM is installed on
first use into ``bench/.work/litellm-venv`` and configured with no database,
no callbacks and the local price table, so it never reaches the network.
"""

from __future__ import annotations

import http.client
import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    GATEWAY_CORE,
    LOAD_CORE,
    VENV_BIN,
    WORK,
    BenchError,
    Processes,
    Service,
    wait_until,
)
from wrk import Load

CHAT_PATH = "/v1/chat/completions"
MODEL = "sim-economy"
LITELLM_VENV = WORK / "litellm-venv"
LITELLM_INSTALL_LOG = WORK / "litellm-install.log"


def chat_body(*, stream: bool) -> bytes:
    """The small request every target gets: one short user message, at most 64 tokens back."""
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 64,
    }
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

    def load(self, *, stream: bool) -> Load:
        return Load(self.base_url + CHAT_PATH, chat_body(stream=stream), self.authorization)


@dataclass(frozen=True, slots=True)
class Corral:
    """A running Corral, its admin credentials and a virtual key on the target."""

    target: Target
    admin_env: dict[str, str] = field(repr=False)

    def cli(self, *args: str) -> str:
        return corral_cli(args, self.admin_env)


# --- probing --------------------------------------------------------------------------------


def post(load: Load, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request with the load's body and key: (status, headers, body)."""
    headers = {"Content-Type": "application/json"}
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


def start_corral(procs: Processes, port: int, sim_url: str, home: Path) -> Corral:
    """One ``corral serve`` process on the gateway core, with a team, a user and a virtual key."""
    url = f"http://127.0.0.1:{port}"
    admin_env = {"CORRAL_URL": url, "CORRAL_ADMIN_KEY": "sk-admin-" + secrets.token_urlsafe(24)}
    argv = [str(VENV_BIN / "corral"), "serve", "--port", str(port), "--sim-url", sim_url]
    env = {**admin_env, "CORRAL_HOME": str(home)}
    service = procs.start("corral", argv, core=GATEWAY_CORE, env=env)
    wait_until(lambda: listen_problem(url + "/"), service=service, timeout=60, what="corral serve")
    key = _create_key(admin_env)
    target = Target("Corral", url, service, GATEWAY_CORE, f"Bearer {key}")
    return Corral(wait_answering(target, timeout=30), admin_env)


def _create_key(admin_env: dict[str, str]) -> str:
    corral_cli(["teams", "create", "bench"], admin_env)
    corral_cli(["users", "create", "bench", "--team", "bench"], admin_env)
    created = corral_cli(
        ["keys", "create", "--team", "bench", "--user", "bench", "--json"], admin_env
    )
    key: str = json.loads(created)["key"]
    return key


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
