#!/usr/bin/env bash
# Installs Debian's `chromium` for the report's browser test (test/report.test.ts opens an HTML
# report headless and checks its charts are drawn). Only when it is missing and we are root, since it needs
# apt; otherwise it says nothing and the test skips itself, naming why. One installer at a time: npm
# pre-scripts of two commands may race, and apt holds its own lock anyway.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then exit 0; fi
cache="${WEIGHTFORMER_CACHE:-$HOME/.cache/weightformer}"
mkdir -p "$cache"
exec 9>"$cache/chromium.lock"
flock 9
if command -v chromium >/dev/null 2>&1; then exit 0; fi
echo "installing chromium (Debian package) for the report's browser test" >&2
export DEBIAN_FRONTEND=noninteractive
# A failed install (no network, no Debian archive) must not stop the commands ensure.sh runs before: only
# the browser test needs Chromium, and it skips itself saying so.
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } >/dev/null; then
  echo "could not install chromium: the report's browser test will be skipped" >&2
fi
