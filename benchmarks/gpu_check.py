"""C-Poly, Poly and LoRA training speed on SuperNI-shaped batches, FLAN-T5-Large and Llama-1B shapes.

Run through `bash benchmarks/gpu_check.sh` (which makes the bundle's wheels importable first); see
docs/gpu_check.md. For each architecture and method, one real `train.py` run (its own process, bf16,
`logger=none`, a short evaluation at the end only) on the bundle's SuperNI subsample with the bundle's
tokenizer and a randomly initialised backbone of the paper's shape; the figures are read from the run's
`results.json["throughput"]`. FLOPs are counted separately (`count_flops`) on the same model and the
run's own first batches. Prints one markdown table.

Environment knobs (defaults: GPU / tiny): TINY=1 (tiny shapes; forced without CUDA, with fp32),
STEPS (150 / 3), BATCH (8 / 2), LOG_EVERY (25 / 1), TASKS (100 / 10), TRAIN_PER_TASK (100 / 8),
SOURCE_LEN (1024 / 128), TARGET_LEN (128 / 32), FLOP_BATCHES (3 / 2), METHODS (cpoly,poly,shared_lora),
ARCHS (t5,llama), PEAK_TFLOPS (790: the H200's measured bf16 peak), BENCH_DIR (logs/gpu_check/<time>),
TRAIN_ARGS (extra train.py overrides, space-separated).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # cpoly from this checkout, installed or not
    sys.path.insert(0, str(ROOT))
ARCHS = {"t5": "flan_t5_large_random", "llama": "llama_1b_random"}
BASELINE = "shared_lora"
# Tiny shapes (TINY=1 or no CUDA): the same architectures and tokenizer, a few thousand times smaller.
TINY_SHAPES = {
    "t5": dict(d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2, num_decoder_layers=2, vocab_size=30522),
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=30522),
}  # fmt: skip
FLOP_CONVENTION = (
    "FLOPs: torch.utils.flop_counter.FlopCounterMode on the run's model and its first {n} training batches: "
    "forward + loss + backward as executed (2 FLOPs per multiply-add of matmuls, attention and convolutions; "
    "the frozen backbone gets no weight gradients; padding positions count; elementwise ops, norms and the "
    "optimizer step are not counted), divided by the batches' trained tokens as the loop counts them "
    "(input tokens + target tokens). TFLOP/s = that x tokens/s; MFU = TFLOP/s / {peak:g} TFLOP/s."
)


@dataclass
class Settings:
    cuda: bool
    tiny: bool
    steps: int
    batch: int
    log_every: int
    tasks: int
    train_per_task: int
    source_len: int
    target_len: int
    flop_batches: int
    peak_tflops: float
    methods: list[str]
    archs: list[str]
    extra: list[str]

    @classmethod
    def from_env(cls, cuda: bool) -> Settings:
        tiny = os.environ.get("TINY", "0") not in ("", "0") or not cuda
        env = lambda name, gpu, small: type(gpu)(os.environ.get(name) or (small if tiny else gpu))  # noqa: E731
        settings = cls(
            cuda=cuda,
            tiny=tiny,
            steps=env("STEPS", 150, 3),
            batch=env("BATCH", 8, 2),
            log_every=env("LOG_EVERY", 25, 1),
            tasks=env("TASKS", 100, 10),
            train_per_task=env("TRAIN_PER_TASK", 100, 8),
            source_len=env("SOURCE_LEN", 1024, 128),
            target_len=env("TARGET_LEN", 128, 32),
            flop_batches=env("FLOP_BATCHES", 3, 2),
            peak_tflops=float(os.environ.get("PEAK_TFLOPS") or 790),
            methods=os.environ.get("METHODS", "cpoly,poly,shared_lora").split(","),
            archs=os.environ.get("ARCHS", "t5,llama").split(","),
            extra=shlex.split(os.environ.get("TRAIN_ARGS", "")),
        )
        unknown = [a for a in settings.archs if a not in ARCHS]
        if unknown:
            raise SystemExit(f"ARCHS: unknown {unknown}; known: {sorted(ARCHS)}")
        return settings


def check_bundle(bundle: Path) -> None:
    """The bundle's data and tokenizer (`make gpu-bundle`); a missing piece is named."""
    needed = [bundle / "tokenizer" / "tokenizer.json", bundle / "data" / "superni" / "splits" / "default"]
    missing = [str(p) for p in needed if not p.exists()]
    if not list((bundle / "data" / "superni").glob("superni_*.jsonl.gz")):
        missing.append(str(bundle / "data" / "superni" / "superni_*.jsonl.gz"))
    if missing:
        raise SystemExit(
            f"gpu_check: the bundle is incomplete, missing {', '.join(missing)}: build it with `make gpu-bundle` "
            f"(benchmarks/gpu_bundle.py) and carry {bundle.name}/ to the GPU machine"
        )


def overrides(s: Settings, arch: str, method: str, bundle: Path, bench_dir: Path) -> list[str]:
    """train.py's overrides for one run, except the run folder."""
    args = [
        f"backbone={ARCHS[arch]}",
        f"backbone.tokenizer_id={bundle.resolve() / 'tokenizer'}",
        f"backbone.max_source_length={s.source_len}",
        f"backbone.max_target_length={s.target_len}",
        "backbone.max_new_tokens=8",  # evaluation only has to run: keep generation short
        f"method={method}",
        "benchmark=superni",
        f"benchmark.n_tasks={s.tasks}",
        f"benchmark.n_train_per_task={s.train_per_task}",
        "benchmark.n_eval_per_task=1",
        "benchmark.n_dev_per_task=1",  # the dev split (held out of the training draw) only has to exist
        f"trainer.max_steps={s.steps}",
        f"trainer.batch_size={s.batch}",
        f"trainer.eval_every={s.steps}",  # evaluation at the end only
        f"trainer.log_every={s.log_every}",
        "trainer.max_eval_per_task=1",
        f"trainer.eval_batch_size={s.batch}",  # so evaluation does not set the peak memory
        f"trainer.precision={'bf16' if s.cuda else 'no'}",
        "trainer.progress_bar=false",
        "logger=none",
        f"paths.data_dir={bundle.resolve() / 'data'}",
        f"paths.cache_dir={bench_dir / 'cache'}",  # empty at first: tokenisation is part of the bill
    ]
    if s.tiny:
        args += [f"backbone.model_overrides.{k}={v}" for k, v in TINY_SHAPES[arch].items()]
    return args + s.extra


def run_train(args: list[str], run_dir: Path, log_path: Path) -> float:
    """One `train.py` process; returns its wall time. A failure names the log and shows its end."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    command = [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    with log_path.open("w") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise SystemExit(f"{tail}\ngpu_check: train.py exited with {code}; its output: {log_path}")
    return time.perf_counter() - start


def read_run(run_dir: Path) -> dict:
    """results.json's throughput, and the step time after the first log window from metrics.jsonl (wall
    time between the first and the last logged training step: warm-up excluded, waiting for batches
    included)."""
    results = json.loads((run_dir / "results.json").read_text())
    t = results["throughput"]
    logged = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            logged.append((record["step"], record["time"]))
    steady = None
    if len(logged) >= 2 and logged[-1][0] > logged[0][0]:
        steady = (logged[-1][1] - logged[0][1]) / (logged[-1][0] - logged[0][0])
    tokens_per_step = (t["tokens_per_second"] or 0) * (t["seconds_per_step"] or 0)
    return {
        "steps": results["steps"],
        "seconds_per_step": t["seconds_per_step"],
        "tokens_per_second": t["tokens_per_second"],
        "steady_tokens_per_second": tokens_per_step / steady if steady else None,
        "peak_memory_gib": t["peak_memory_mib"] / 1024,
        "outside_share": t.get("outside_share"),
        "device": t.get("device"),
        "precision": t.get("precision"),
    }


def count_flops(s: Settings, arch: str, bundle: Path, bench_dir: Path) -> dict[str, float]:
    """FLOPs per trained token of one optimizer step of each method (see FLOP_CONVENTION), on the
    composed config of the runs, the same randomly initialised backbone and the runs' first batches."""
    import torch
    from hydra import compose, initialize_config_dir
    from torch.utils.flop_counter import FlopCounterMode

    from cpoly.backbones import BackboneConfig, load_backbone
    from cpoly.config import register_configs, to_object
    from cpoly.data import load_benchmark
    from cpoly.data.collate import make_collator
    from cpoly.data.sampling import MultiTaskBatchSampler
    from cpoly.data.tokenize import tokenize_examples
    from cpoly.skills import add_skills, use_tasks

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfgs = {
            m: compose("train", overrides=[*overrides(s, arch, m, bundle, bench_dir), "paths.output_dir=unused"])
            for m in s.methods
        }
    cfg = cfgs[s.methods[0]]
    device = torch.device("cuda" if s.cuda else "cpu")
    bf16 = s.cuda and torch.cuda.is_bf16_supported()
    backbone_cfg = BackboneConfig.from_any(cfg.backbone).validate()
    data = load_benchmark(cfg.benchmark, cfg.paths.data_dir)
    backbone = load_backbone(backbone_cfg, cache_dir=Path(cfg.paths.cache_dir), device_supports_bf16=bf16)
    split = tokenize_examples(
        data.train,
        tokenizer=backbone.tokenizer,
        kind=backbone.kind,
        max_source_length=backbone_cfg.max_source_length,
        max_target_length=backbone_cfg.max_target_length,
        task_to_id=data.task_names,
        cache_dir=Path(cfg.paths.cache_dir) / "tokenized",
    ).dataset
    trainer = to_object(cfg.trainer)
    sampler = MultiTaskBatchSampler(
        tasks=split.data.column("task_id").to_numpy(),
        lengths=split.data.column("length").to_numpy(),
        batch_size=trainer.global_batch_size(1),
        strategy=trainer.task_sampling,
        temperature=trainer.sampling_temperature,
        seed=cfg.seed,
        group_by_length=trainer.group_by_length,
        min_task_mix=trainer.min_task_mix,
    )
    collate = make_collator(backbone.tokenizer, backbone.kind)
    batches = [
        {k: v.to(device) for k, v in collate(split[[int(r) for r in rows]]).items()}
        for rows in itertools.islice(sampler.global_batches(), s.flop_batches)
    ]

    per_token = {}
    for method, method_cfg in cfgs.items():
        skills = to_object(method_cfg.method).skill_config(data.task_names, backbone_cfg.target_modules)
        model = add_skills(copy.deepcopy(backbone.model), skills).to(device).train()
        flops = tokens = 0
        for batch in batches:
            with FlopCounterMode(display=False) as counter:
                flops_of_step(model, batch, backbone.kind, bf16, use_tasks)
            flops += counter.get_total_flops()
            tokens += int(batch["attention_mask"].sum())
            if backbone.kind == "seq2seq":  # the decoder's tokens, as the training loop counts them
                tokens += int((batch["labels"] != -100).sum())
        per_token[method] = flops / tokens
        del model
        if s.cuda:
            torch.cuda.empty_cache()
    return per_token


def flops_of_step(model, batch, kind: str, bf16: bool, use_tasks) -> None:
    """The training loop's forward, summed token loss and backward for one batch (cpoly/train/loop.py)."""
    import torch

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    labels = batch["labels"]
    if kind == "seq2seq":
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    with use_tasks(model, batch["task_ids"]):
        with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**inputs).logits
        if kind == "causal":
            labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        loss.backward()
    model.zero_grad(set_to_none=True)


def fmt(value, spec: str) -> str:
    """`spec` "%": a share as a percentage with 3 significant digits (tiny CPU runs have MFUs of 1e-6 %)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * value:.3g}%" if spec == "%" else format(value, spec)


def ratio(run: dict, base: dict, key: str) -> float | None:
    return run[key] / base[key] if run.get(key) and base.get(key) else None


def table(s: Settings, runs: dict[tuple[str, str], dict]) -> str:
    head = ["arch", "method", "steps", "s/step", "tokens/s", "tokens/s after warm-up", "TFLOP/s", "MFU",
            "peak GiB", "step time / LoRA", "tokens/s / LoRA", "outside share"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (arch, method), r in runs.items():
        base = runs.get((arch, BASELINE), {})
        tflops = r["flops_per_token"] * r["tokens_per_second"] / 1e12 if r.get("flops_per_token") else None
        cells = [
            arch,
            method,
            str(r["steps"]),
            fmt(r["seconds_per_step"], ".4f"),
            fmt(r["tokens_per_second"], ",.0f"),
            fmt(r["steady_tokens_per_second"], ",.0f"),
            fmt(tflops, ".3g"),
            fmt(tflops / s.peak_tflops if tflops is not None else None, "%"),
            fmt(r["peak_memory_gib"], ".2f"),
            fmt(ratio(r, base, "seconds_per_step"), ".3f"),
            fmt(ratio(r, base, "tokens_per_second"), ".3f"),
            fmt(r["outside_share"], "%"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "gpu_bundle")
    bundle = parser.parse_args(argv).bundle.resolve()
    check_bundle(bundle)
    import torch

    s = Settings.from_env(cuda=torch.cuda.is_available())
    bench_dir = Path(os.environ.get("BENCH_DIR") or ROOT / "logs" / "gpu_check" / time.strftime("%Y%m%d-%H%M%S"))
    bench_dir = bench_dir.resolve()
    (bench_dir / "logs").mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if s.cuda else "CPU (no CUDA): tiny shapes, fp32"
    print(f"gpu_check on {device}; {'tiny shapes' if s.tiny else 'FLAN-T5-Large / Llama-3.2-1B shapes'}; "
          f"{s.steps} steps of {s.batch}, {s.tasks} SuperNI tasks, source <= {s.source_len}, target <= "
          f"{s.target_len} tokens; runs in {bench_dir}", flush=True)  # fmt: skip
    start = time.perf_counter()
    runs: dict[tuple[str, str], dict] = {}
    total = len(s.archs) * len(s.methods)
    for arch in s.archs:
        for method in s.methods:
            name = f"{arch}-{method}"
            seconds = run_train(overrides(s, arch, method, bundle, bench_dir), bench_dir / name,
                                bench_dir / "logs" / f"{name}.log")  # fmt: skip
            runs[arch, method] = read_run(bench_dir / name)
            print(f"[{len(runs)}/{total}] {name}: {seconds:.1f} s (process wall time)", flush=True)
    for arch in s.archs:
        t0 = time.perf_counter()
        for method, value in count_flops(s, arch, bundle, bench_dir).items():
            runs[arch, method]["flops_per_token"] = value
        print(f"FLOP count {arch}: {time.perf_counter() - t0:.1f} s", flush=True)

    text = "\n".join([
        "",
        table(s, runs),
        "",
        FLOP_CONVENTION.format(n=s.flop_batches, peak=s.peak_tflops),
        "s/step, tokens/s (input + target tokens), peak memory: results.json['throughput'] (the optimizer steps' "
        "wall time, waiting for their batches and warm-up included). tokens/s after warm-up: mean tokens per step "
        f"/ wall time per step between the first logged step ({s.log_every}) and the last. outside share: of the "
        "step wall time, what is spent outside forward/backward/optimizer (n/a: not in results.json). Ratios "
        "against shared_lora (plain LoRA).",
        f"total {time.perf_counter() - start:.0f} s",
    ])  # fmt: skip
    print(text, flush=True)
    summary = {"settings": asdict(s), "runs": {f"{a}-{m}": r for (a, m), r in runs.items()}}
    (bench_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (bench_dir / "table.md").write_text(text + "\n")
    out = os.environ.get("OUT")  # the device machine's return folder, when there is one
    if out and Path(out).is_dir():
        for name in ("summary.json", "table.md"):
            (Path(out) / name).write_text((bench_dir / name).read_text())


if __name__ == "__main__":
    main()
