#!/usr/bin/env bash
# Install the real agent CLIs the agent_cli tests drive (idempotent): Claude Code, Codex and
# Gemini CLI from npm into .cache/npm, aider from PyPI into its own virtualenv, .cache/aider.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=.cache/npm
if ! [ -x "$prefix/bin/claude" ] || ! [ -x "$prefix/bin/codex" ] || ! [ -x "$prefix/bin/gemini" ]; then
  mkdir -p "$prefix"
  npm install --silent --no-fund --no-audit --prefix "$prefix" -g \
    "@anthropic-ai/claude-code@2" "@openai/codex@0" "@google/gemini-cli@0" >/dev/null
  "$prefix/bin/claude" --version
  "$prefix/bin/codex" --version
  "$prefix/bin/gemini" --version
fi

# aider is pinned: tests/agents/data/managed_aider.toml replays the exact shape of its chat.
# Its virtualenv is made with Debian's Python, not the repository's: a run executes it as an
# unprivileged uid in a sandbox that binds /usr, and cannot enter a Python installed under
# /root (the venv's bin/python links to its base interpreter).
aider_version=0.86.2
venv=.cache/aider
if ! "$venv/bin/aider" --version 2>/dev/null | grep -qx "aider $aider_version"; then
  if ! /usr/bin/python3.11 -c "import ensurepip, venv" 2>/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3.11-venv >/dev/null
  fi
  rm -rf "$venv"
  /usr/bin/python3.11 -m venv "$venv"
  log="$venv/pip-install.log"  # pip's output only when it fails: it warns at length here
  if ! "$venv/bin/pip" install --disable-pip-version-check "aider-chat==$aider_version" \
    >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    exit 1
  fi
  "$venv/bin/aider" --version
fi
