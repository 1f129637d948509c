#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine with Python >= 3.11:
#   * Debian's clang (tinygrad's CPU backend compiles its kernels with it) and python3-venv if missing,
#   * .venv with worldpilot installed editable plus its train + dev extras.
# CPU torch is pinned to 2.13.0 (a local wheel on our CI machines). A GPU user installs a CUDA build
# into .venv first (see README: "GPU machines"); this script then keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need_apt=()
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
"$PY" -c "import ensurepip, venv" >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.worldpilot-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing worldpilot[train,dev] into .venv (the first run takes a few minutes)"
  log=.venv/setup.log
  pipi() { .venv/bin/python -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1 \
             || { tail -n 40 "$log" >&2; echo "[setup] pip install $* failed (log: $log)" >&2; exit 1; }; }
  pipi --upgrade pip
  .venv/bin/python -c "import torch" >/dev/null 2>&1 || pipi "torch==2.13.0"
  pipi -e ".[train,dev]"
  .venv/bin/python -c "import torch, onnxruntime, tinygrad, capnp, zmq, cv2, av, diffusers, ray" \
    || { echo "[setup] install incomplete" >&2; exit 1; }
  touch "$stamp"
fi
