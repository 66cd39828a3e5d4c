"""Training-step cost of each method against PEFT LoRA, PEFT Poly and the backbone's own step, interleaved
in one process.

A randomly initialised T5 of t5-small size (d_model 512, 6+6 layers), adapters on q and v, batches of
8 x 128 source / 32 target tokens whose examples come from T tasks at random. Each variant runs
forward + backward + AdamW step (torch's fused AdamW, as cpoly's trainer, for every variant); rounds
interleave the variants so machine noise hits all alike, and
the table reports medians and ratios to PEFT LoRA r=8 and to the floor measured in the same process.

The floor (`backbone floor`) is the frozen backbone's own step with no adapter: forward, and backward
through every activation to one trainable scalar that scales the embeddings (encoder and decoder inputs),
plus its AdamW step: what any adapter's step costs before its own work. `x floor` is each step's ratio to
it. C-Poly's exclusive-skill weights W_B are timed dense (`trainable`, the authors' T x T*B matrix),
`block` (trainable within each task's own skills, the paper's Eq. 2) and `fixed`, at T=10, 100 and 1000,
and each one's T=1000 / T=10 ratio is printed. The methods published since C-Poly run at their
defaults (`conf/method/`): MTL-LoRA (T=100 tasks), HydraLoRA and MixLoRA (top-2 of 4, its load-balancing
loss in the step), each against PEFT LoRA r=8 with the issue's targets.

Memory: on CUDA the peak allocated memory of a step; on CPU the bytes a step keeps for backward
(saved activations, counted once per storage) plus trainable parameters, gradients and AdamW state.
As in the trainer, every trainable tensor is stepped every step (`fill_missing_grads`), so the
exclusive skills of all T tasks are part of every AdamW step.

    python benchmarks/skills_speed.py [--rounds 7] [--device cpu|cuda] [--threads 2] [--only REGEX]

`--only` keeps the variants whose name matches REGEX (and always PEFT LoRA and the floor, the baselines).
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import T5Config, T5ForConditionalGeneration

from cpoly import SkillConfig, add_skills, use_tasks
from cpoly.skills import pop_aux_loss, skill_state
from cpoly.train.optim import fill_missing_grads


@dataclass
class Variant:
    name: str
    model: torch.nn.Module
    step: Callable[[], None]
    trainable: int


def t5_small(device: str) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=32128,
        d_model=512,
        d_ff=2048,
        d_kv=64,
        num_heads=8,
        num_layers=6,
        num_decoder_layers=6,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config).to(device)


def make_batch(n_tasks: int, device: str, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    source = torch.randint(2, 32128, (8, 128), generator=generator)
    target = torch.randint(2, 32128, (8, 32), generator=generator)
    task_ids = torch.randint(0, n_tasks, (8,), generator=generator)
    batch = {"input_ids": source, "attention_mask": torch.ones_like(source), "labels": target}
    return {k: v.to(device) for k, v in batch.items()}, task_ids.to(device)


def training_step(model, optimizer, batch, route: Callable[[], object]) -> None:
    with route():
        loss = model(**batch).loss
        aux = pop_aux_loss(model) if hasattr(model, "cpoly_skills") else None
        if aux is not None:  # mixlora's load-balancing loss, as the trainer adds it
            loss = loss + skill_state(model).config.aux_loss_coef * aux
        loss.backward()
    fill_missing_grads(optimizer)  # as the trainer: every trainable tensor is stepped
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


LORA, FLOOR = "peft_lora r=8", "backbone floor"


def backbone_floor(base: torch.nn.Module) -> torch.nn.Module:
    """The frozen backbone with one trainable scalar multiplying its embeddings' output (the encoder's and
    the decoder's inputs): its backward runs through every activation, and computes no weight gradient."""
    model = copy.deepcopy(base).requires_grad_(False)
    model.floor_scale = torch.nn.Parameter(torch.ones((), device=model.device))
    embedding = model.get_input_embeddings().weight
    for module in model.modules():  # the encoder's and decoder's token embeddings (tied, maybe separate modules)
        if isinstance(module, torch.nn.Embedding) and module.weight is embedding:
            module.register_forward_hook(lambda module, args, out: out * model.floor_scale)
    return model


def build_variants(base, device: str, generator: torch.Generator, only: str | None = None) -> list[Variant]:
    import peft

    variants: list[Variant] = []
    keep = lambda name: only is None or name in (LORA, FLOOR) or re.search(only, name)  # noqa: E731

    def add(name, model, n_tasks, route_factory):
        if not keep(name):
            return
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)  # as cpoly's trainer, for every variant
        batch, task_ids = make_batch(n_tasks, device, generator)
        route = lambda: route_factory(model, task_ids)  # noqa: E731
        step = lambda: training_step(model, optimizer, batch, route)  # noqa: E731
        variants.append(Variant(name, model, step, sum(p.numel() for p in params)))

    class _PeftPolyRoute:  # PEFT Poly takes task_ids as a forward argument
        def __init__(self, model, task_ids):
            self.model, self.task_ids, self.forward = model, task_ids, model.forward

        def __enter__(self):
            self.model.forward = lambda **kw: self.forward(**kw, task_ids=self.task_ids)

        def __exit__(self, *exc):
            del self.model.forward

    no_routing = lambda model, ids: torch.enable_grad()  # noqa: E731
    ours = lambda model, ids: use_tasks(model, ids)  # noqa: E731
    add(FLOOR, backbone_floor(base), 100, no_routing)
    lora = peft.LoraConfig(r=8, lora_alpha=8, target_modules=["q", "v"], lora_dropout=0.0)
    add(LORA, peft.get_peft_model(copy.deepcopy(base), lora), 100, no_routing)
    for label, n_splits in (("poly K=4 r=2", 1), ("mhr K=4 S=4 r=2", 4)):
        if not keep(f"peft_{label}"):
            continue
        poly = peft.PolyConfig(
            task_type="SEQ_2_SEQ_LM", r=2, n_tasks=100, n_skills=4, n_splits=n_splits, target_modules=["q", "v"]
        )
        add(f"peft_{label}", peft.get_peft_model(copy.deepcopy(base), poly), 100, _PeftPolyRoute)
    tasks = lambda n: [f"task_{i}" for i in range(n)]  # noqa: E731
    settings = [
        ("shared_lora r=8", dict(method="shared_lora"), 100),
        ("task_lora r=2 T=100", dict(method="task_lora"), 100),
        ("moe_lora E=4 r=2", dict(method="moe_lora"), 100),
        ("poly K=4 r=2", dict(method="poly"), 100),
        ("mhr K=4 S=4 r=2", dict(method="mhr", n_splits=4), 100),
        ("cpoly A=3 B=1 r=2 T=10", dict(method="cpoly"), 10),
        ("cpoly A=3 B=1 r=2 T=100", dict(method="cpoly"), 100),
        ("cpoly A=3 B=1 r=2 T=1000", dict(method="cpoly"), 1000),
        ("cpoly block-W_B T=10", dict(method="cpoly", task_weights="block"), 10),
        ("cpoly block-W_B T=100", dict(method="cpoly", task_weights="block"), 100),
        ("cpoly block-W_B T=1000", dict(method="cpoly", task_weights="block"), 1000),
        ("cpoly fixed-W_B T=10", dict(method="cpoly", task_weights="fixed"), 10),
        ("cpoly fixed-W_B T=1000", dict(method="cpoly", task_weights="fixed"), 1000),
        ("mtl_lora n=3 r=4 T=100", dict(method="mtl_lora"), 100),
        ("hydralora N=3 r=4", dict(method="hydralora"), 100),
        ("mixlora E=4 top-2 r=2", dict(method="mixlora"), 100),
    ]
    for label, kwargs, n_tasks in settings:
        if not keep(label):
            continue
        config = SkillConfig(task_names=tasks(n_tasks), target_modules=["q", "v"], **kwargs)
        add(label, add_skills(copy.deepcopy(base), config), n_tasks, ours)
    return variants


def training_memory(variant: Variant, device: str) -> float:
    """MiB of one step's training memory beyond the frozen backbone (see the module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        variant.step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        variant.step()
    frozen = {id(p) for p in variant.model.parameters() if not p.requires_grad}
    frozen_ptrs = {p.untyped_storage().data_ptr() for p in variant.model.parameters() if id(p) in frozen}
    activations = sum(n for ptr, n in storages.items() if ptr not in frozen_ptrs)
    state = variant.trainable * 4 * 4  # parameter, gradient, AdamW exp_avg and exp_avg_sq in fp32
    return (activations + state) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=None, help="regex: time only these variants (and the baselines)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    variants = build_variants(t5_small(args.device), args.device, generator, args.only)
    timings: dict[str, list[float]] = {v.name: [] for v in variants}
    for round_index in range(args.warmup + args.rounds):
        for variant in variants:
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            variant.step()
            if args.device == "cuda":
                torch.cuda.synchronize()
            if round_index >= args.warmup:
                timings[variant.name].append(time.perf_counter() - start)
    memory = {v.name: training_memory(v, args.device) for v in variants}
    median = {name: statistics.median(t) for name, t in timings.items()}
    lora, floor = median[LORA], median[FLOOR]
    print(f"device={args.device} threads={torch.get_num_threads()} rounds={args.rounds} (medians; ratios in-process)")
    print(
        f"{'variant':28s} {'trainable':>10s} {'ms/step':>9s} {'x LoRA':>7s} {'x floor':>7s} {'min-max ms':>15s} "
        f"{'MiB':>8s}"
    )
    for v in variants:
        t = timings[v.name]
        print(
            f"{v.name:28s} {v.trainable:10,d} {1e3 * median[v.name]:9.1f} {median[v.name] / lora:7.3f} "
            f"{median[v.name] / floor:7.3f} {1e3 * min(t):7.1f}-{1e3 * max(t):<7.1f} {memory[v.name]:8.1f}"
        )
    scaling = [
        ("cpoly W_B trainable (dense)", "cpoly A=3 B=1 r=2 T={}"),
        ("cpoly W_B block", "cpoly block-W_B T={}"),
        ("cpoly W_B fixed", "cpoly fixed-W_B T={}"),
    ]
    print("\nC-Poly step time by task count (ms; x its T=10):")
    print(f"  {'W_B':28s} {'T=10':>8s} {'T=100':>14s} {'T=1000':>14s}")
    for label, pattern in scaling:
        at = {n: median.get(pattern.format(n)) for n in (10, 100, 1000)}
        if at[10] is None:
            continue
        cells = [f"{1e3 * at[10]:8.1f}"] + [
            f"{'-':>14s}" if at[n] is None else f"{1e3 * at[n]:8.1f} {at[n] / at[10]:5.3f}" for n in (100, 1000)
        ]
        print(f"  {label:28s} {' '.join(cells)}")
    targets = [
        ("cpoly T=100 / peft_lora r=8", "cpoly A=3 B=1 r=2 T=100", "peft_lora r=8", 1.05),
        ("cpoly T=100 / backbone floor", "cpoly A=3 B=1 r=2 T=100", FLOOR, 1.05),
        ("cpoly block-W_B T=100 / backbone floor", "cpoly block-W_B T=100", FLOOR, 1.05),
        ("mtl_lora / peft_lora r=8", "mtl_lora n=3 r=4 T=100", LORA, 1.10),
        ("hydralora / peft_lora r=8", "hydralora N=3 r=4", LORA, 1.15),
        ("mixlora / peft_lora r=8", "mixlora E=4 top-2 r=2", LORA, 1.40),
        ("poly / peft_poly", "poly K=4 r=2", "peft_poly K=4 r=2", 1.00),
        ("mhr / peft_mhr", "mhr K=4 S=4 r=2", "peft_mhr K=4 S=4 r=2", 1.00),
        ("cpoly T=1000 / T=10", "cpoly A=3 B=1 r=2 T=1000", "cpoly A=3 B=1 r=2 T=10", 1.10),
        ("cpoly block-W_B T=1000 / T=10", "cpoly block-W_B T=1000", "cpoly block-W_B T=10", 1.10),
        ("cpoly fixed-W_B T=1000 / T=10", "cpoly fixed-W_B T=1000", "cpoly fixed-W_B T=10", 1.10),
    ]
    print("\ntargets:")
    for label, numerator, denominator, target in targets:
        if numerator not in median or denominator not in median:
            continue
        print(f"  {label:40s} = {median[numerator] / median[denominator]:.3f}  (target <= {target:.2f})")


if __name__ == "__main__":
    main()
