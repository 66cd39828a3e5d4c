"""Training batches built by DataLoader workers: the same batches as on the training thread, in any worker
count, from any start step, and the same trained adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.compose import compose_train
from safetensors.torch import load_file
from transformers import ByT5Tokenizer

from cpoly.data.collate import make_collator
from cpoly.data.sampling import MultiTaskBatchSampler, split_global_batch
from cpoly.data.synthetic import load_synthetic
from cpoly.data.tokenize import tokenize_examples
from cpoly.run import train
from cpoly.skills.router import example_noise_keys
from cpoly.train.batches import StepBatches, step_loader


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> StepBatches:
    data = load_synthetic({"n_tasks": 4, "n_train_per_task": 30, "n_eval_per_task": 2})
    split = tokenize_examples(
        data.train,
        ByT5Tokenizer(),
        kind="seq2seq",
        max_source_length=32,
        max_target_length=32,
        task_to_id=data.task_names,
        cache_dir=tmp_path_factory.mktemp("tok"),
    )
    dataset = split.dataset
    sampler = MultiTaskBatchSampler(
        tasks=dataset.data.column("task_id").to_numpy(),
        lengths=dataset.data.column("length").to_numpy(),
        batch_size=8,
        seed=5,
        mega_batch_factor=4,
    )
    collator = make_collator(ByT5Tokenizer(), "seq2seq")
    return StepBatches(dataset=dataset, collator=collator, sampler=sampler, seed=5, grad_accum=2, num_processes=2)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_a_step_is_the_sampler_stream_split_collated_and_keyed(steps):
    """Item s: this process's micro-batches of the stream's global batch s, with positions and noise keys."""
    stream = steps.sampler.global_batches()
    lengths = steps.sampler.lengths
    for step in range(10):
        global_batch = next(stream)
        item = steps[step]
        parts = split_global_batch(global_batch, 2, 2, 0)
        assert len(item["micro_batches"]) == 2
        for (positions, rows), batch in zip(parts, item["micro_batches"], strict=True):
            expected = steps.collator(steps.dataset[rows.tolist()])
            assert same({k: batch[k] for k in expected}, expected)
            assert batch["positions"].tolist() == positions.tolist()
            assert torch.equal(batch["noise_keys"], example_noise_keys(5, step, torch.from_numpy(positions)))
        assert item["tasks"] == len(np.unique(steps.sampler.tasks[global_batch]))
        assert item["input_tokens"] == int(lengths[global_batch].sum())


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("start", [0, 7])
def test_workers_and_start_steps_give_the_same_batches(steps, workers, start):
    reference = [steps[s] for s in range(start, 14)]
    loader = step_loader(steps, start, 14, num_workers=workers, prefetch_factor=3, pin_memory=False)
    assert same(list(loader), reference)


def test_overfit_steps_cycle_through_the_first_batches(steps):
    import dataclasses

    overfit = dataclasses.replace(steps, overfit_batches=3)
    for step in range(8):
        a, b = overfit[step], steps[step % 3]
        assert same(a["micro_batches"][0]["input_ids"], b["micro_batches"][0]["input_ids"])
        # the routing noise still belongs to the step trained
        assert torch.equal(a["micro_batches"][0]["noise_keys"], steps[step]["micro_batches"][0]["noise_keys"])


def test_bad_worker_settings_are_refused_before_loading(tmp_path):
    from cpoly.config import ConfigError

    for override, message in [
        ("trainer.num_workers=-1", "trainer.num_workers=-1"),
        ("trainer.prefetch_factor=0", "prefetch_factor=0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            train(compose_train(["debug=smoke", override], output_dir=tmp_path / "x"))


def test_runs_with_and_without_workers_train_the_same_adapters(tmp_path):
    small = ["debug=smoke", "benchmark.n_tasks=4", "benchmark.n_train_per_task=40", "benchmark.n_eval_per_task=4"]
    small += ["trainer.max_steps=12", "trainer.log_every=1", "trainer.eval_every=6", "trainer.grad_accum=2"]
    results = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        results[workers] = train(
            compose_train([*small, f"trainer.num_workers={workers}"], output_dir=out, cache_dir=tmp_path / "cache")
        )
    assert results[0]["test"] == results[2]["test"] and results[0]["dev"] == results[2]["dev"]
    a, b = (load_file(str(tmp_path / f"w{w}" / "last" / "adapter_model.safetensors")) for w in (0, 2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    throughput = results[2]["throughput"]
    assert 0 < throughput["data_share"] <= throughput["outside_share"] < 1
