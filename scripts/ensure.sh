#!/usr/bin/env bash
# Pre-script of the README's commands: on a fresh clone it installs npm packages (npm ci) and the pinned
# Python tools (cached venv), then compiles the TypeScript. Each step is skipped when already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "installing npm packages (npm ci)" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
bash scripts/setup-python.sh >/dev/null
node_modules/.bin/tsc -p . >&2
