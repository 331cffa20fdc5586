#!/usr/bin/env bash
# The pack inside a real ComfyUI: what `.ci/run` runs after the README's two commands, and what a
# user runs to check their own install.
#
#   COMFYUI_DIR=/path/to/ComfyUI bash tests/host/run.sh [pytest args]
#   (or, from ComfyUI/custom_nodes/ComfyUI-LAFR, without COMFYUI_DIR)
#
# 1. installs ComfyUI's requirements into this python, never torch, torchvision or torchaudio
#    (the host owns torch);
# 2. with LAFR_WEB_CHECK=1, the headless browser for the frontend check: Debian's chromium
#    (apt-get, as root) and playwright-core from npm, in ~/.cache/lafr-web-check;
# 3. runs tests/host: a real ComfyUI server with both example workflows, the SD1.5 and
#    v-prediction refusals, ComfyUI unloading models between our calls, and the frontend.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
comfy="${COMFYUI_DIR:-}"
if [ -z "$comfy" ] && [ "$(basename "$(dirname "$repo")")" = custom_nodes ] && [ -f "$repo/../../main.py" ]; then
  comfy=$(cd "$repo/../.." && pwd)
fi
if [ -z "$comfy" ] || [ ! -f "$comfy/requirements.txt" ]; then
  echo "tests/host/run.sh: no ComfyUI found: set COMFYUI_DIR=/path/to/ComfyUI, or run it from ComfyUI/custom_nodes/<this pack>" >&2
  exit 2
fi
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;].*)?$' "$comfy/requirements.txt" > "$requirements"
python -m pip install -q -r "$requirements"

if [ "${LAFR_WEB_CHECK:-0}" = 1 ]; then
  if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  web="${HOME}/.cache/lafr-web-check"
  if [ ! -d "$web/node_modules/playwright-core" ]; then
    mkdir -p "$web" && npm install --silent --no-audit --no-fund --prefix "$web" playwright-core@1 >/dev/null
  fi
  export PLAYWRIGHT_NODE_MODULES="$web/node_modules"
fi

COMFYUI_DIR="$comfy" python -m pytest tests/host "$@"
