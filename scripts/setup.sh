#!/usr/bin/env bash
# Create or update .venv in the repo root and install mempack into it.
# CPU machines get torch==2.13.0 (the CPU build) first so nothing pulls CUDA wheels;
# torch is then pinned through a constraints file so later installs cannot replace it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp=$VENV/.mempack-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip setuptools wheel
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    $PIP install --quiet torch
  else
    $PIP install --quiet "torch==${MEMPACK_CPU_TORCH:-2.13.0}"
  fi
fi
torch_version=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==${torch_version}" > "$VENV/constraints.txt"
# A .venv made before the switch to scenedetect-headless holds `scenedetect` (which pulls the GUI
# opencv-python); both write the same module folders, so remove them before installing the headless ones.
stale=""
for dist in scenedetect opencv-python; do
  if $PIP show "$dist" >/dev/null 2>&1; then stale="$stale $dist"; fi
done
if [ -n "$stale" ]; then
  $PIP uninstall --quiet -y $stale
  $PIP uninstall --quiet -y scenedetect-headless opencv-python-headless 2>/dev/null || true
fi
$PIP install --quiet -c "$VENV/constraints.txt" -e ".[dev]"
"$VENV/bin/python" -c "import torch, ray, deepspeed, diffusers, transformers, decord, scenedetect, cv2, mlflow; print('setup: torch', torch.__version__, '| ray', ray.__version__, '| deepspeed', deepspeed.__version__, '| diffusers', diffusers.__version__)"
echo "$want" > "$stamp"
