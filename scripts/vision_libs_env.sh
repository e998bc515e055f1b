#!/usr/bin/env bash
# Build a separate virtual environment with torchvision and timm beside the CPU torch, for the opt-in
# `vision_libs` test tier (features.py with image_encoder.library=timm|torchvision).
#
#   scripts/vision_libs_env.sh [VENV_DIR]        # default: .venv-vision in the repository root
#
# Then run the tier with:
#   VENV_DIR/bin/python -m pytest -m vision_libs tests/prepare
#
# Why a separate venv: torchvision 0.28.0, the release for torch 2.13, exists on PyPI only as a CUDA
# build; its C++ library needs libtorch_cuda.so, so against the CPU torch (torch==2.13.0+cpu)
# `import torchvision` fails with "RuntimeError: operator torchvision::nms does not exist", and timm
# imports torchvision. Installed into the dev venv, that broken torchvision also breaks transformers'
# image processors (their fast variants import it). Here the start-up hook
# scripts/_mllmrec_torchvision_cpu_ops.py defines the two op schemas first (as in .venv-vllm). With a
# CUDA torch from PyPI (`pip install torch==2.13.0` on a machine without a local CPU wheel) or a
# CPU torchvision build, `pip install -e ".[vision]"` is enough and no hook is needed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-vision}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.28.0}"
TIMM_SPEC="${TIMM_SPEC:-timm>=1.0,<2}"

start=$(date +%s)
echo "[vision_libs_env] repo=$REPO venv=$VENV python=$($PYTHON -V 2>&1)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --quiet)
# 1. torch first (the CPU build where one is offered), then the project and the test runner
"${PIP[@]}" "$TORCH_SPEC"
"${PIP[@]}" -e "$REPO" "pytest>=8" "pytest-timeout>=2.3"
# 2. torchvision without its dependencies (it pins torch==2.13.0, already there), timm (its other
#    dependencies: pyyaml, huggingface_hub, safetensors, already there through transformers)
"${PIP[@]}" --no-deps "$TORCHVISION_SPEC" "$TIMM_SPEC"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
    echo "[vision_libs_env] torchvision does not import against this torch: installing the op-schema hook"
    cp "$REPO/scripts/_mllmrec_torchvision_cpu_ops.py" "$SITE/"
    echo "import _mllmrec_torchvision_cpu_ops" > "$SITE/_mllmrec_torchvision_cpu_ops.pth"
fi
# 3. Smoke check
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import timm
import torchvision
print("[vision_libs_env] torch", md.version("torch"), "torchvision", torchvision.__version__, "timm", timm.__version__)
PY
end=$(date +%s)
echo "[vision_libs_env] done in $((end - start)) s; venv size: $(du -sh "$VENV" | cut -f1)"
