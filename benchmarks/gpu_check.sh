#!/usr/bin/env bash
# GPU check: bf16 C-Poly training of gemma3_270m on SuperNI; prints tokens per second and peak GPU memory.
#
#   bash benchmarks/gpu_check.sh                 # 300 steps of train.py, then the standalone measurement
#   STEPS=100 FALLBACK_ONLY=1 bash benchmarks/gpu_check.sh
#
# Installs nothing beyond `make install`; runs offline (the Gemma weights come from a pip package and are
# de-quantised once into $CACHE_DIR; SuperNI from $CPOLY_DATA_DIR, else ../shared/data or shared/data).
# Two measurements:
#   1. train.py (the real loop: data, collation, routing, optimiser), figures read from the run's
#      results.json / metrics.jsonl;
#   2. a standalone loop: gemma3_270m via cpoly.backbones + C-Poly skills (100 tasks, A=3, B=1, r=2) on
#      random token batches of SuperNI's shape, N bf16 forward/backward/AdamW steps, no data pipeline.
# Environment knobs: STEPS (300), BATCH (8), SEQ_LEN (1152 = 1024 source + 128 target), FALLBACK_STEPS (50),
# FALLBACK_ONLY (skip train.py), CACHE_DIR (.cache), TRAIN_ARGS (extra Hydra overrides for train.py),
# SKIP_INSTALL (use an existing environment), PY (its python; default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-300}
BATCH=${BATCH:-8}
SEQ_LEN=${SEQ_LEN:-1152}
FALLBACK_STEPS=${FALLBACK_STEPS:-50}
CACHE_DIR=${CACHE_DIR:-.cache}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TRANSFORMERS_NO_ADVISORY_WARNINGS=1
if [ -z "${CPOLY_DATA_DIR:-}" ]; then
    for candidate in ../shared/data shared/data; do
        if [ -d "$candidate" ]; then export CPOLY_DATA_DIR="$(cd "$candidate" && pwd)"; break; fi
    done
fi
echo "CPOLY_DATA_DIR=${CPOLY_DATA_DIR:-<none>}"

if [ -z "${SKIP_INSTALL:-}" ]; then make install; fi
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"

# The one-time GGUF de-quantisation, outside the timed runs.
$PY -m cpoly.backbones gemma3_270m --cache-dir "$CACHE_DIR" --prompt "The capital of France is" --max-new-tokens 12

# --- 1. the training entrypoint ----------------------------------------------------------------------------
if [ -z "${FALLBACK_ONLY:-}" ]; then
    RUN_DIR="logs/gpu_check/$(date +%Y%m%d-%H%M%S)"
    # The paper's SuperNI protocol (100 tasks x 1000), bf16, a short evaluation at the end only.
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of overrides
    if $PY train.py experiment=superni-gemma3_270m-cpoly benchmark.n_tasks=100 benchmark.n_train_per_task=1000 \
        benchmark.n_eval_per_task=100 backbone.max_source_length=1024 backbone.max_target_length=128 \
        trainer.max_steps="$STEPS" trainer.batch_size="$BATCH" trainer.eval_every="$STEPS" trainer.log_every=25 \
        trainer.max_eval_per_task=2 trainer.precision=bf16 logger=none hydra.run.dir="$RUN_DIR" ${TRAIN_ARGS:-}; then
        $PY - "$RUN_DIR" <<'EOF'
import json, sys
from pathlib import Path

results = json.loads((Path(sys.argv[1]) / "results.json").read_text())
t = results["throughput"]
print(f"train.py: {results['steps']} steps, {t['tokens_per_second']:.0f} tokens/s, {t['seconds_per_step']:.3f} s/step, "
      f"peak GPU memory {t['peak_memory_mib']:.0f} MiB ({t['device']}, {t['precision']}); "
      f"final rougeL {results['final']['avg'].get('rougeL', float('nan')):.2f}")
EOF
    else
        echo "train.py failed (see above); the standalone measurement follows"
    fi
else
    echo "skipping train.py (FALLBACK_ONLY set)"
fi

# --- 2. standalone: the backbone and skills alone ----------------------------------------------------------
$PY - "$CACHE_DIR" "$FALLBACK_STEPS" "$BATCH" "$SEQ_LEN" <<'EOF'
import sys, time
from pathlib import Path

import torch

from cpoly import SkillConfig, add_skills, use_tasks
from cpoly.backbones import BackboneConfig, load_backbone

cache_dir, steps, batch, seq_len = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cuda = torch.cuda.is_available()
device = torch.device("cuda" if cuda else "cpu")
if not cuda:  # lets the script itself be checked on a CPU machine, with a small shape
    steps, batch, seq_len = min(steps, 2), min(batch, 1), min(seq_len, 64)
bf16 = cuda and torch.cuda.is_bf16_supported()
cfg = BackboneConfig.from_yaml("conf/backbone/gemma3_270m.yaml")
backbone = load_backbone(cfg, cache_dir=cache_dir, device_supports_bf16=bf16)
tasks = [f"task{i:03d}" for i in range(100)]  # the paper's 100 SuperNI tasks
model = add_skills(backbone.model, SkillConfig(method="cpoly", rank=2, n_skills=3, n_task_skills=1,
                                               task_names=tasks, target_modules=cfg.target_modules))
model.to(device).train()
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=1e-3)
vocab = model.config.vocab_size
generator = torch.Generator(device="cpu").manual_seed(0)

def step():
    ids = torch.randint(3, vocab, (batch, seq_len), generator=generator).to(device)
    task_ids = torch.randint(0, len(tasks), (batch,), generator=generator).to(device)
    with use_tasks(model, task_ids), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

for _ in range(2):  # warm-up: kernels, allocator
    step()
if cuda:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
for _ in range(steps):
    loss = step()
if cuda:
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
tokens = steps * batch * seq_len
n_trainable = sum(p.numel() for p in params)
print(f"standalone gemma3_270m C-Poly ({'bf16' if bf16 else 'fp32'}, {device}): {steps} steps of {batch}x{seq_len} "
      f"tokens, {n_trainable / 1e6:.2f}M trainable parameters, final loss {loss.item():.3f}")
print(f"  tokens_per_second: {tokens / seconds:,.0f}")
print(f"  seconds_per_step: {seconds / steps:.3f}")
if cuda:
    print(f"  peak_gpu_memory_gib: {torch.cuda.max_memory_allocated() / 2**30:.2f}")
EOF
