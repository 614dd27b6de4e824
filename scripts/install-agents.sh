#!/usr/bin/env bash
# Install the real agent CLIs the agent_cli tests drive into .cache/npm (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=.cache/npm
if [ -x "$prefix/bin/claude" ] && [ -x "$prefix/bin/codex" ]; then
  exit 0
fi
mkdir -p "$prefix"
npm install --silent --no-fund --no-audit --prefix "$prefix" -g \
  "@anthropic-ai/claude-code@2" "@openai/codex@0" >/dev/null
"$prefix/bin/claude" --version
"$prefix/bin/codex" --version
