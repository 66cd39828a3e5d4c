"""Training beyond DDP (docs/distributed.md): FSDP2 on CPU processes, the launch checks, DeepSpeed.

Accelerate 1.15 starts FSDP only on accelerator devices; on CPU processes the FSDP run goes through
`tests/helpers/fsdp_on_cpu.py`, which sets Accelerate's state to FSDP after building it, with the
environment that `accelerate launch --config_file conf/accelerate/fsdp.yaml` gives its processes
(computed here by Accelerate's own launcher code). From there Accelerate's and torch's FSDP2 code runs
over gloo: `fully_shard` per T5 block, `no_sync` as `set_requires_gradient_sync`, DTensor clipping.

One 2-process FSDP run of batch 2 x grad_accum 2 stops after its first checkpoint (step 3, gathered
adapters and optimizer state) and is resumed (the checkpoint cut back into shards); it must end with
the adapters of one process of batch 8, the same global batches (float64, dropout off: the step does not
depend on the split, as in test_batch_splits.py), and they load with `load_skills` into a fresh model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from helpers.compose import REPO_ROOT, compose_train, with_test_backbone
from helpers.entrypoint import TORCHRUN
from safetensors.torch import load_file

from cpoly.backbones import BackboneConfig, load_backbone
from cpoly.config import ConfigError
from cpoly.run import train
from cpoly.skills import load_skills
from cpoly.skills.io import adapter_state_dict
from cpoly.train.checkpoint import read_trainer_state

SHIM = REPO_ROOT / "tests" / "helpers" / "fsdp_on_cpu.py"
FSDP_CONFIG = REPO_ROOT / "conf" / "accelerate" / "fsdp.yaml"
COMMON = [
    "debug=smoke",
    "benchmark.n_tasks=4",
    "benchmark.n_train_per_task=40",
    "benchmark.n_eval_per_task=2",
    "trainer.max_steps=6",
    "trainer.eval_every=3",
    "trainer.log_every=1",
    "trainer.cpu=true",
    "backbone.dropout=0",
    "backbone.dtype=float64",
]


def accelerate_launch_env(config_file: Path) -> dict[str, str]:
    """The ACCELERATE_*/FSDP_* variables `accelerate launch --config_file <config_file>` sets, by its own code."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def fsdp_train(out: Path, cache: Path, port: int, **env: str) -> subprocess.CompletedProcess:
    overrides = with_test_backbone([*COMMON, "trainer.batch_size=2", "trainer.grad_accum=2", f"hydra.run.dir={out}"])
    environment = dict(
        os.environ,
        **accelerate_launch_env(FSDP_CONFIG),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled",
        OMP_NUM_THREADS="1",
        CPOLY_CACHE_DIR=str(cache),
        **env,
    )
    command = [*TORCHRUN, "--master_port", str(port), str(SHIM), *overrides]
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)


def test_the_fsdp_config_asks_accelerate_for_fsdp2_by_blocks():
    env = accelerate_launch_env(FSDP_CONFIG)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"


@pytest.mark.slow
def test_fsdp_run_resumed_ends_like_one_process_and_its_adapters_load_unsharded(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "fsdp"
    stopped = fsdp_train(out, cache, 29561, CPOLY_TEST_STOP_AFTER_CHECKPOINT="1")
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0 and "after the checkpoint of step 3" in output, output[-3000:]
    assert "FSDP2 over 2 processes" in output  # not DDP: cpoly.train.launch logs the backend
    assert read_trainer_state(out / "last")["step"] == 3 and not (out / "results.json").exists()

    resumed = fsdp_train(out, cache, 29562, CPOLY_TEST_STOP_AFTER_CHECKPOINT="0")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    single = tmp_path / "single"
    train(compose_train([*COMMON, "trainer.batch_size=8"], single, cache))
    results = {name: json.loads((d / "results.json").read_text()) for name, d in (("fsdp", out), ("single", single))}
    assert [results[n]["world_size"] for n in ("fsdp", "single")] == [2, 1]
    # the same global batches
    assert results["fsdp"]["batches"]["tasks_per_batch"] == results["single"]["batches"]["tasks_per_batch"]
    assert results["fsdp"]["allocation"]["entropy"] == pytest.approx(results["single"]["allocation"]["entropy"])

    # whole tensors in the single-process layout: adapters and the optimizer's moments
    fsdp, one = (load_file(str(d / "last" / "adapter_model.safetensors")) for d in (out, single))
    assert fsdp.keys() == one.keys()
    assert max((fsdp[k] - one[k]).abs().max().item() for k in one) <= 1e-10
    moments = [read_trainer_state(d / "last")["optimizer"]["state"] for d in (out, single)]
    assert moments[0].keys() == moments[1].keys()
    for i, state in moments[1].items():
        assert torch.allclose(moments[0][i]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-10)

    cfg = compose_train([*COMMON])
    fresh = load_backbone(BackboneConfig.from_any(cfg.backbone), cache_dir=cache).model
    loaded = adapter_state_dict(load_skills(fresh, out / "last"))
    assert max((loaded[k].detach() - one[k]).abs().max().item() for k in one) <= 1e-10


def test_a_launch_asking_for_fsdp_on_cpu_processes_fails_naming_it(monkeypatch):
    """Accelerate silently runs DDP (or one process) where FSDP cannot start: the run refuses instead."""
    from accelerate import Accelerator

    from cpoly.train.launch import check_backend

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match=r"asks for FSDP \(ACCELERATE_USE_FSDP=true\) but Accelerate runs NO"):
        check_backend(Accelerator(cpu=True), "seq2seq")


@pytest.mark.parametrize(
    ("env", "running", "fsdp2", "kind", "message"),
    [
        ("ACCELERATE_USE_FSDP", DistributedType.FSDP, False, "seq2seq", r"fsdp_version: 1 \(FSDP_VERSION=1\)"),
        ("ACCELERATE_USE_FSDP", DistributedType.FSDP, True, "encoder", r"backbone.kind=encoder"),
        ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED, False, "seq2seq", "DeepSpeed .* is not supported"),
        ("ACCELERATE_USE_DEEPSPEED", DistributedType.MULTI_CPU, False, "seq2seq", "DeepSpeed .* is not supported"),
    ],
    ids=["fsdp1", "fsdp-encoder", "deepspeed", "deepspeed-on-cpu"],
)
def test_unsupported_launches_fail_naming_the_setting(env, running, fsdp2, kind, message, monkeypatch):
    from cpoly.train.launch import check_backend

    monkeypatch.setenv(env, "true")
    with pytest.raises(ConfigError, match=message):
        check_backend(SimpleNamespace(distributed_type=running, is_fsdp2=fsdp2), kind)


@pytest.mark.gpu
def test_fsdp_through_accelerate_launch_on_gpus(tmp_path):
    """The real launch, where Accelerate starts FSDP: two GPUs or more."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    overrides = with_test_backbone(["debug=smoke", f"hydra.run.dir={tmp_path}", "trainer.precision=bf16"])
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG), "train.py", *overrides],
        cwd=REPO_ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    loaded = load_skills(
        load_backbone(BackboneConfig.from_any(compose_train([]).backbone), cache_dir=tmp_path / "cache").model,
        tmp_path / "last",
    )
    assert all(torch.isfinite(t).all() for t in adapter_state_dict(loaded).values())
