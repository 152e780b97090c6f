#!/usr/bin/env bash
# Regenerates test/fixtures/gguf/tiny-{llama,qwen2}-*.gguf with llama.cpp's own converter and llama-quantize (see
# make_llamacpp_fixtures.py). Needs a Python with torch, transformers, sentencepiece, safetensors and numpy
# (PYTHON, default python3); llama.cpp's source and tools come from node-llama-cpp's bundle.
# Usage: scripts/gguf/make_llamacpp_fixtures.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git clone -q "$root/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$tmp/llama.cpp" 2>/dev/null
"$root/scripts/gguf/build-llama-tools.sh" "$tmp/tools" >/dev/null
"$py" "$root/scripts/gguf/make_llamacpp_fixtures.py" "$tmp/llama.cpp" "$tmp/tools" "$root/test/fixtures/gguf"
