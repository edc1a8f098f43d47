#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, the CUDA tests and then bench/gpu_check.py (bf16 LM step with and
# without CUDA graphs at the small, medium and large shapes; 1, 4 and 16 streams batched; the daemon's trigger ->
# first sound), which writes its section of BENCHMARKS.md. Sized to fit 8 minutes. CI never runs it.
#
#   bash bench/gpu_check.sh                  # where `make setup` made .venv with a CUDA torch: uses it as it is
#   bash bench/gpu_check.sh --fetch-wheels   # on a machine with the package registry: the wheels the GPU
#                                            # machine lacks, into .whl/ (git ignores it), ~3 MB
#
# On a GPU machine that cannot reach the registry but has a CUDA torch, transformers and numpy in `python3` (the
# device tool's): carry `.whl` along; this script installs those wheels and segue into /tmp/site. With $OUT set,
# the run's log, BENCHMARKS.md and bench/last_run.json are copied there.
set -euo pipefail
cd "$(dirname "$0")/.."

# What segue imports beyond the GPU image's python3 (torch, transformers, numpy, huggingface_hub, safetensors,
# sentencepiece, tqdm, pyyaml are there), at the versions of constraints.txt.
WHEELS="cffi pycparser soundfile soxr pyzmq python-osc mido sounddevice"

if [ "${1:-}" = "--fetch-wheels" ]; then
    specs=()
    for w in $WHEELS; do
        specs+=("$(grep -i "^${w}==" constraints.txt || echo "$w")")
    done
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${specs[@]}"
    ls .whl
    exit 0
fi

if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    PY=.venv/bin/python
else
    PY=python3
    "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null || {
        echo "gpu_check: no CUDA device for $PY here; run this where a GPU is lent" >&2
        exit 2
    }
    if [ -d .whl ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . \
        || { echo "gpu_check: could not install segue into /tmp/site (needs setuptools in $PY)" >&2; exit 2; }
    rm -rf build ./*.egg-info
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp}/gpu_check.log
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    # The CUDA tests first: a failure there is reported, and the measurements still run.
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/models/lm/test_cuda.py || echo "gpu_check: CUDA tests FAILED"
    timeout 400 "$PY" bench/gpu_check.py
} 2>&1 | tee "$LOG"
if [ -n "${OUT:-}" ]; then
    cp BENCHMARKS.md bench/last_run.json "$OUT"/
fi
