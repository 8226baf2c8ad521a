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
# Compiled files whose TypeScript source is gone (renamed or deleted) would still be found by mocha's glob.
if [ -d dist ]; then
  find dist -name '*.js' -not -path 'dist/node_modules/*' | while read -r compiled; do
    source_file="${compiled#dist/}"; source_file="${source_file%.js}.ts"
    [ -f "$source_file" ] || rm -f "$compiled" "$compiled.map"
  done
fi
node_modules/.bin/tsc -p . >&2
