#!/usr/bin/env bash
# Builds a self-contained folder for running the compute bench on a GPU machine that has no Node or npm:
#   <out>/gpu-bench.mjs                one ESM bundle of bench/gpu-entry.ts (esbuild; `*.node` kept external)
#   <out>/*.wasm                       the wasm backend's binaries (tfjs loads them from beside the bundle)
#   <out>/dist/linux-x64/dawn.node.xz  Dawn for Node (the `webgpu` package looks for dist/<platform>-<arch>/dawn.node next to itself)
#   <out>/node.xz                      this machine's node binary
#   <out>/debs/*.deb                   the Vulkan loader and GL dispatch libraries (apt-get download; skipped with --no-debs)
#   <out>/torch_meta_step.py           the PyTorch twin of the meta-step (same shapes)
#   <out>/run.sh                       unpacks all that and runs the bench: ./run.sh [gpu-bench options]
# Usage: scripts/gpu-bundle.sh [--out DIR] [--no-debs] [--no-node]     (default DIR: .gpu-bundle, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."

out=.gpu-bundle
debs=1
with_node=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --no-debs) debs=0; shift ;;
    --no-node) with_node=0; shift ;;
    *) echo "gpu-bundle: unknown option $1 (options: --out DIR, --no-debs, --no-node)" >&2; exit 2 ;;
  esac
done

dawn=node_modules/webgpu/dist/linux-x64/dawn.node
wasm_dir=node_modules/@tensorflow/tfjs-backend-wasm/dist
for need in node_modules/.bin/esbuild "$dawn" "$wasm_dir"; do
  [ -e "$need" ] || { echo "gpu-bundle: $need is missing (run npm ci first)" >&2; exit 1; }
done

# Build into a temporary folder, then swap it in: a failed build never leaves a half-written bundle.
tmp="$(mktemp -d "${out%/}.tmp-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/dist/linux-x64"

# The banner gives the ESM bundle what CommonJS code inside it expects: require (for the external dawn.node
# and tfjs's optional requires), __filename and __dirname (tfjs-backend-wasm finds its .wasm files with it).
node_modules/.bin/esbuild bench/gpu-entry.ts \
  --bundle --platform=node --format=esm --target=node20 \
  --external:'*.node' --ignore-annotations \
  --outfile="$tmp/gpu-bench.mjs" \
  --log-level=warning \
  --banner:js="import { createRequire as __wfCreateRequire } from 'node:module'; import { fileURLToPath as __wfFileURLToPath } from 'node:url'; import { dirname as __wfDirname } from 'node:path'; const require = __wfCreateRequire(import.meta.url); const __filename = __wfFileURLToPath(import.meta.url); const __dirname = __wfDirname(__filename);"

cp "$wasm_dir"/*.wasm "$tmp/"
xz -T0 -c "$dawn" > "$tmp/dist/linux-x64/dawn.node.xz"
cp bench/torch_meta_step.py "$tmp/"
if [ "$with_node" = 1 ]; then xz -T0 -c "$(command -v node)" > "$tmp/node.xz"; fi
if [ "$debs" = 1 ]; then
  mkdir -p "$tmp/debs"
  (cd "$tmp/debs" && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2) \
    || { echo "gpu-bundle: apt-get download failed (run apt-get update first, or pass --no-debs)" >&2; exit 1; }
fi

cat > "$tmp/run.sh" <<'RUN'
#!/usr/bin/env bash
# Unpacks the bundle (once) and runs the compute bench; options go to gpu-bench.mjs
# (--backends webgpu,wasm,cpu --reps N --teachers T --batch B). Prints one JSON line on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
[ -e dist/linux-x64/dawn.node ] || xz -dk dist/linux-x64/dawn.node.xz
node_bin="$(command -v node || true)"
if [ -e node.xz ]; then
  [ -x ./node ] || { xz -dk node.xz && chmod +x node; }
  node_bin=./node
fi
[ -n "$node_bin" ] || { echo "no node binary: rebuild the bundle without --no-node" >&2; exit 1; }
if [ -d debs ] && [ ! -d sysroot ]; then
  mkdir -p sysroot
  for d in debs/*.deb; do dpkg-deb -x "$d" sysroot; done
fi
if [ -d sysroot ]; then
  # The driver's own ICD (e.g. nvidia_icd.json) comes from the host; only the loader is carried.
  export LD_LIBRARY_PATH="$here/sysroot/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
exec "$node_bin" gpu-bench.mjs "$@"
RUN
chmod +x "$tmp/run.sh"

rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
du -sh "$out" | awk '{print "gpu-bundle: " $2 " (" $1 ")"}'
