#!/usr/bin/env bash
# Builds llama.cpp's llama-quantize, llama-perplexity and llama-imatrix (for bench:gguf) from the llama.cpp source
# node-llama-cpp ships (node_modules/node-llama-cpp/llama/gitRelease.bundle), linked against the prebuilt llama and
# ggml libraries of the same release that node-llama-cpp ships, so only the three tools' own sources compile (~1 min).
# Usage: scripts/gguf/build-llama-tools.sh OUT_DIR
set -euo pipefail
out=${1:?usage: build-llama-tools.sh OUT_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
libs="$root/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64"
[ -f "$libs/libllama-common.so" ] || { echo "no prebuilt llama.cpp libraries at $libs (linux-x64 only)" >&2; exit 1; }
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git clone -q "$root/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$src/llama.cpp" 2>/dev/null
s="$src/llama.cpp"
mkdir -p "$out"
# the release's versioned library names (libllama.vX.Y.Z.so)
llama=$(basename "$(ls "$libs"/libllama.v*.so | head -1)")
ggml=$(basename "$(ls "$libs"/libggml.v*.so | head -1)")
inc="-I$s/include -I$s/common -I$s/ggml/include -I$s/vendor -I$s/src"
for t in quantize perplexity imatrix; do
  g++ -O2 -std=c++17 $inc "$s"/tools/$t/*.cpp -o "$out/llama-$t.tmp" -L"$libs" -l:"$llama" -l:libllama-common.so \
    -l:"$ggml" -l:libggml-base.so -Wl,-rpath,"$libs" -lpthread
  mv "$out/llama-$t.tmp" "$out/llama-$t"
done
# the CPU backends are loaded at run time from the executable's folder
for f in "$libs"/libggml-cpu-*.so; do ln -sf "$f" "$out/"; done
echo "$out"
