#!/usr/bin/env bash
# Installs the real model server the llama e2e tests run (llama-cpp-python's OpenAI-compatible
# server) and the Python packages its tests use (gguf to write the test model, the official
# openai client to drive it). Idempotent; runs as root on a clean Debian machine with CPython 3.
#
# llama-cpp-python is an sdist on PyPI: building it compiles llama.cpp, which costs minutes on
# 2 cores. The built wheel (and every dependency's wheel) is kept in a folder outside the
# clone, like the cargo target folder, so later runs on this machine install in seconds from
# it without touching the network. See docs/llama.md for the measured costs.
set -euo pipefail

WHEELS="${CUTOVER_WHEELS:-/var/tmp/cutover-wheels}"
PY="${PYTHON:-python3}"

# What the tests pin. The wheel cache holds exactly these (and their dependencies, pinned by
# what the first build resolved).
REQS=(
  "llama-cpp-python[server]==0.3.36"
  "gguf==0.19.0"
  "numpy==2.4.6"
  "openai==3.57.0"
)

# CPU only and nothing fetched at build time: no GPU backends, no BLAS, no curl/OpenSSL (model
# downloads), no llama.cpp server/UI/tools/tests (the Python server is what we run; the
# prebuilt web UI would be downloaded), no multimodal library. Portable code (no
# -march=native) so a cached wheel never meets a CPU it was not built for. No OpenMP: its
# worker threads spin while waiting, which steals the shared cores from the proxy under test.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF \
-DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF -DGGML_OPENCL=OFF -DGGML_RPC=OFF \
-DGGML_OPENMP=OFF -DGGML_CCACHE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAVA_BUILD=OFF"

installed() {
  "$PY" - <<'PY' 2>/dev/null
import importlib.metadata as m
want = {"llama_cpp_python": "0.3.36", "gguf": "0.19.0", "numpy": "2.4.6", "openai": "3.57.0"}
for name, version in want.items():
    if m.version(name) != version:
        raise SystemExit(1)
import llama_cpp, llama_cpp.server.app, gguf, openai  # noqa: E401,F401  the native library loads
PY
}

if installed; then
  echo "llama-setup: already installed"
  exit 0
fi

mkdir -p "$WHEELS"
# A wheel built with other CMake arguments is not the one this script asks for.
stamp="$WHEELS/llama-cmake-args"
if [ "$(cat "$stamp" 2>/dev/null)" != "$LLAMA_CMAKE_ARGS" ]; then
  rm -f "$WHEELS"/llama_cpp_python-*.whl
fi

pip_() { "$PY" -m pip --disable-pip-version-check "$@"; }
# Debian's own python3 refuses pip installs outside a venv (PEP 668); this is a throwaway CI
# or test machine, so install into it anyway, as the rest of .ci/run does with pyenv's Python.
if "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
  export PIP_BREAK_SYSTEM_PACKAGES=1
fi

start=$(date +%s)
if pip_ install -q --no-index --find-links "$WHEELS" "${REQS[@]}" 2>/dev/null; then
  echo "llama-setup: installed from the wheel cache in $(( $(date +%s) - start )) s"
else
  # --find-links: wheels already cached (llama-cpp-python's above all) are reused; only what
  # is missing is downloaded or built.
  echo "llama-setup: filling the wheel cache (building llama-cpp-python, if not cached, compiles llama.cpp: about 7 minutes on 2 cores)"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=2 FORCE_CMAKE=1 \
    pip_ wheel -q --wheel-dir "$WHEELS" --find-links "$WHEELS" "${REQS[@]}"
  echo "$LLAMA_CMAKE_ARGS" > "$stamp"
  pip_ install -q --no-index --find-links "$WHEELS" "${REQS[@]}"
  echo "llama-setup: cached and installed in $(( $(date +%s) - start )) s"
fi

# pyenv puts new console scripts on PATH only through its shims.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
installed || { echo "llama-setup: installed, but llama_cpp does not import" >&2; exit 1; }
