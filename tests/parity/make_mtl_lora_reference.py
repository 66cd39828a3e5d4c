"""Write `mtl_lora_adapters.safetensors`: reference outputs of AdapterHub `adapters`' MTL-LoRA on one linear layer.

Why a committed fixture: `adapters` pins transformers to one minor version (1.3.0, the newest release,
needs transformers ~=4.57.6) and does not import beside this project's transformers 5.x, so
tests/test_skills_equations.py cannot call it live. This script runs in a separate environment and the
test compares cpoly's `mtl_lora` layer against the file it writes.

Regenerate (from the repository root; Python 3.11, about 3 minutes to install):

    python3.11 -m venv /tmp/adapters-venv
    /tmp/adapters-venv/bin/pip install torch==2.13.0 adapters==1.3.0 safetensors numpy
    /tmp/adapters-venv/bin/python tests/parity/make_mtl_lora_reference.py

What it records: one `LoRALinear` (adapters' LoRA wrapper of an nn.Linear, 16 -> 12, with bias) holding one
`MTLLoRAConfig` adapter per task, 3 tasks, lora_A / lora_B shared across them as `share_parameters` does;
r=4, alpha=8, n_up_projection=3, weights_sharpness (tau) 0.5, the singular-values (diagonal) task matrix.
Every weight is set to seeded random values (adapters' own init would make the adapter an identity), scaled
so that outputs stay near 1 (fp32 rounding well under the test's 1e-6).
Dropout is 0, so the training-mode output is deterministic. The layer is run standalone, the way
adapters' model-level forward runs it: `MultiTask(*tasks)` active and per-example `task_ids` in the
`ForwardContext`. Tensors are stored in adapters' layout:

  x (5, 7, 16), task_ids (5,)           the input and each sequence's task
  base.weight (12, 16), base.bias (12,)  the frozen linear layer
  lora_A (r, 16)                         the shared down-projection
  lora_B (n, 12, r)                      the shared up-projections B_1..B_n
  task{t}.values (r,)                    diag(Lambda_t), `task_specific.values`
  task{t}.weights (n,)                   w_t, mixed as exp(w_t / tau) / sum exp(w_t / tau)
  y_train, y_eval (5, 7, 12)             adapters' outputs in training and evaluation mode

Metadata: the adapters, transformers and torch versions and every hyper-parameter.
"""

from __future__ import annotations

import sys
from pathlib import Path

import adapters
import torch
import transformers
from adapters import MTLLoRAConfig
from adapters.composition import MultiTask
from adapters.configuration import ModelAdaptersConfig
from adapters.context import AdapterSetup, ForwardContext
from adapters.methods.lora import LoRALinear
from safetensors.torch import save_file
from torch import nn
from transformers import PretrainedConfig

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("mtl_lora_adapters.safetensors")
D_IN, D_OUT, RANK, N_UP, ALPHA, TAU = 16, 12, 4, 3, 8.0, 0.5
TASKS = ["t0", "t1", "t2"]
TASK_IDS = [2, 0, 1, 2, 0]
SEQ = 7


def build() -> LoRALinear:
    torch.manual_seed(0)
    adapters_config = ModelAdaptersConfig()
    layer = LoRALinear.wrap(nn.Linear(D_IN, D_OUT), "selfattn", PretrainedConfig(), adapters_config, attn_key="q")
    config = MTLLoRAConfig(
        r=RANK, alpha=ALPHA, n_up_projection=N_UP, weights_sharpness=TAU, dropout=0.0, attn_matrices=["q"]
    )
    for task in TASKS:
        adapters_config.add(task, config)
        assert layer.add_adapter(task, layer_idx=0)
    layer.share_parameters(name=",".join(TASKS), adapter_names=TASKS, reference_adapter_name=TASKS[0])
    return layer


def main() -> None:
    layer = build()
    g = torch.Generator().manual_seed(1234)
    first = layer.loras[TASKS[0]]
    with torch.no_grad():
        layer.weight.copy_(torch.randn(D_OUT, D_IN, generator=g) * 0.1)
        layer.bias.copy_(torch.randn(D_OUT, generator=g) * 0.1)
        first.lora_A.copy_(torch.randn(RANK, D_IN, generator=g) * 0.15)
        first.lora_B.copy_(torch.randn(N_UP, D_OUT, RANK, generator=g) * 0.15)
        for task in TASKS:
            lora = layer.loras[task]
            assert lora.lora_A is first.lora_A and lora.lora_B is first.lora_B, "A and B are not shared"
            lora.task_specific.values.copy_(1.0 + 0.5 * torch.randn(RANK, generator=g))
            lora.weights.copy_(torch.randn(N_UP, generator=g))
    x = torch.randn(len(TASK_IDS), SEQ, D_IN, generator=g)
    task_ids = torch.tensor(TASK_IDS)

    tensors = {
        "x": x,
        "task_ids": task_ids,
        "base.weight": layer.weight,
        "base.bias": layer.bias,
        "lora_A": first.lora_A,
        "lora_B": first.lora_B,
    }
    for t, task in enumerate(TASKS):
        tensors[f"task{t}.values"] = layer.loras[task].task_specific.values
        tensors[f"task{t}.weights"] = layer.loras[task].weights
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        with torch.no_grad(), AdapterSetup(MultiTask(*TASKS)), ForwardContext(None, task_ids=task_ids):
            tensors[f"y_{mode}"] = layer(x)
    layer.eval()
    with torch.no_grad():
        plain = nn.functional.linear(x, layer.weight, layer.bias)
    assert (tensors["y_eval"] - plain).abs().max() > 0.1, "the adapter does not change the output"
    assert tensors["y_eval"].abs().max() < 2.0, "outputs this large leave fp32 rounding near 1e-6"

    metadata = {
        "adapters": adapters.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "d_in": D_IN,
        "d_out": D_OUT,
        "r": RANK,
        "alpha": ALPHA,
        "n_up_projection": N_UP,
        "weights_sharpness": TAU,
        "dropout": 0.0,
        "task_specific_matrix_type": "singular_values",
        "tasks": ",".join(TASKS),
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(OUT), metadata={k: str(v) for k, v in metadata.items()})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): adapters {adapters.__version__}, {sorted(tensors)}")


if __name__ == "__main__":
    main()
