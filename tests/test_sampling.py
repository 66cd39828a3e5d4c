"""Multi-task batch sampling: task distributions, determinism, resume, sharding, length grouping."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from cpoly.data.sampling import (
    MultiTaskBatchSampler,
    distinct_tasks,
    eval_batches,
    expected_distinct_tasks,
    padding_fraction,
    split_global_batch,
    task_probabilities,
)

# Three tasks of 800, 200 and 50 examples with task-dependent lengths.
SIZES = {"big": 800, "mid": 200, "small": 50}
TASKS = [task for task, n in SIZES.items() for _ in range(n)]
_rng = np.random.default_rng(0)
LENGTHS = [int(_rng.integers(5, 200)) for _ in TASKS]


def sampler(**overrides) -> MultiTaskBatchSampler:
    settings = dict(tasks=TASKS, lengths=LENGTHS, batch_size=16, seed=3, mega_batch_factor=10)
    settings.update(overrides)
    return MultiTaskBatchSampler(**settings)


def take(batches, n):
    return list(itertools.islice(batches, n))


def task_frequencies(s: MultiTaskBatchSampler, n_batches: int) -> dict[str, float]:
    counts = Counter(TASKS[i] for batch in take(iter(s), n_batches) for i in batch)
    total = sum(counts.values())
    return {task: counts[task] / total for task in SIZES}


def test_task_probabilities():
    sizes = [800, 200, 50]
    assert task_probabilities(sizes, "proportional") == pytest.approx([800 / 1050, 200 / 1050, 50 / 1050])
    assert task_probabilities(sizes, "uniform") == pytest.approx([1 / 3] * 3)
    weights = np.array(sizes) ** 0.5
    assert task_probabilities(sizes, "temperature", 2.0) == pytest.approx(weights / weights.sum())
    assert task_probabilities(sizes, "temperature", 1.0) == pytest.approx(task_probabilities(sizes, "proportional"))
    with pytest.raises(ValueError, match="strategy"):
        task_probabilities(sizes, "greedy")
    with pytest.raises(ValueError, match="temperature"):
        task_probabilities(sizes, "temperature", 0.0)


@pytest.mark.parametrize(("strategy", "temperature"), [("proportional", 1.0), ("uniform", 1.0), ("temperature", 3.0)])
def test_sampled_task_frequencies_follow_the_strategy(strategy, temperature):
    s = sampler(strategy=strategy, temperature=temperature)
    expected = dict(zip(SIZES, task_probabilities(list(SIZES.values()), strategy, temperature), strict=True))
    observed = task_frequencies(s, 300)  # 4,800 draws
    assert observed == pytest.approx(expected, abs=0.02)
    assert s.probabilities == pytest.approx(expected)


def test_batches_mix_tasks_and_cover_a_task_before_repeating_it():
    batches = take(iter(sampler(group_by_length=False)), 60)
    assert all(len(b) == 16 for b in batches)
    assert max(len({TASKS[i] for i in b}) for b in batches) == 3
    # Proportional sampling draws each task's examples as passes over a permutation: 960 draws from
    # 1,050 examples repeat none beyond what the per-task counts force.
    flat = [i for b in batches for i in b]
    per_task = Counter(TASKS[i] for i in flat)
    distinct = Counter(TASKS[i] for i in set(flat))
    assert all(distinct[t] == min(per_task[t], SIZES[t]) for t in per_task)


def test_same_seed_same_batches_other_seed_other_batches():
    assert take(iter(sampler()), 40) == take(iter(sampler()), 40)
    # numpy columns (as the trainer passes them) give the batches of plain lists
    codes = {"mid": 2, "big": 5, "small": 0}  # ids whose order differs from first appearance
    ids = [codes[t] for t in TASKS]
    as_numpy = sampler(tasks=np.asarray(ids), lengths=np.asarray(LENGTHS))
    assert take(iter(as_numpy), 40) == take(iter(sampler(tasks=ids)), 40) == take(iter(sampler()), 40)
    assert take(iter(sampler()), 40) != take(iter(sampler(seed=4)), 40)


@pytest.mark.parametrize("start", [0, 1, 9, 10, 23, 57])
def test_resume_from_a_step_yields_the_uninterrupted_batches(start):
    uninterrupted = take(iter(sampler()), 80)
    resumed = take(iter(sampler(start_step=start)), 80 - start)
    assert resumed == uninterrupted[start:]


@pytest.mark.parametrize("group_by_length", [True, False])
def test_random_access_gives_the_stream_in_any_order(group_by_length):
    """Data loader workers build steps out of order and strided: `batch_at` is the stream, whatever the order."""
    stream = take(sampler(group_by_length=group_by_length).global_batches(), 45)
    s = sampler(group_by_length=group_by_length)
    order = [44, 3, 3, 20, 0, 39, 11, 10, 29, 1] + list(range(0, 45, 4)) + list(range(45))
    for step in order:
        assert s.batch_at(step).tolist() == stream[step], step
    with pytest.raises(ValueError, match="step must be >= 0"):
        s.batch_at(-1)


@pytest.mark.parametrize("replicas", [2, 4])
def test_ranks_split_each_global_batch_disjointly(replicas):
    single = take(iter(sampler()), 30)
    shards = [take(iter(sampler(num_replicas=replicas, rank=r)), 30) for r in range(replicas)]
    for step, global_batch in enumerate(single):
        parts = [shard[step] for shard in shards]
        assert all(len(p) == 16 // replicas for p in parts)
        assert sorted(i for p in parts for i in p) == sorted(global_batch)
    # Sharding and resuming compose.
    assert (
        take(iter(sampler(num_replicas=2, rank=1, start_step=7)), 5)
        == take(iter(sampler(num_replicas=2, rank=1)), 12)[7:]
    )


def test_length_grouping_lowers_padding():
    grouped = take(iter(sampler(group_by_length=True)), 200)
    shuffled = take(iter(sampler(group_by_length=False)), 200)
    assert padding_fraction(grouped, LENGTHS) < 0.5 * padding_fraction(shuffled, LENGTHS)
    # Grouping changes the batch composition, not which examples the stream draws.
    assert Counter(i for b in grouped for i in b) == Counter(i for b in shuffled for i in b)


def _superni_like(n_tasks: int = 100, per_task: int = 60):
    """Lengths set mostly by the task (SuperNI prompts start with the task's definition)."""
    rng = np.random.default_rng(1)
    base = rng.integers(100, 1000, n_tasks)
    tasks = [t for t in range(n_tasks) for _ in range(per_task)]
    lengths = [int(base[t] + rng.integers(0, 60)) for t in tasks]
    return tasks, lengths


@pytest.mark.parametrize("batch_size", [8, 32])
def test_length_grouping_keeps_the_task_mix_of_random_batches(batch_size):
    """Plain length sorting would put each task's examples together; grouping keeps >= 90% of random
    batches' distinct tasks per batch and still pads at most half as much."""
    tasks, lengths = _superni_like()
    batches = {}
    for name, settings in {
        "random": dict(group_by_length=False),
        "grouped": dict(group_by_length=True),
        "sorted": dict(group_by_length=True, min_task_mix=0.0),
    }.items():
        s = MultiTaskBatchSampler(tasks=tasks, lengths=lengths, batch_size=batch_size, seed=2, **settings)
        batches[name] = take(s.global_batches(), 300)
    mix = {name: distinct_tasks(b, tasks) for name, b in batches.items()}
    padding = {name: padding_fraction(b, lengths) for name, b in batches.items()}
    assert mix["grouped"] >= 0.9 * mix["random"], mix
    assert padding["grouped"] <= 0.5 * padding["random"], padding
    assert mix["sorted"] < 0.8 * mix["random"] and padding["sorted"] < padding["grouped"]  # what grouping avoids


def test_expected_distinct_tasks_is_the_mean_of_random_batches():
    counts = [50, 30, 10, 5, 5]
    pool = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    simulated = np.mean([len(set(rng.choice(pool, 8, replace=False))) for _ in range(20000)])
    assert expected_distinct_tasks(counts, 8) == pytest.approx(simulated, abs=0.02)
    assert expected_distinct_tasks([1, 1, 1], 3) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="larger than the pool"):
        expected_distinct_tasks([2], 3)


@pytest.mark.parametrize(("micro", "replicas"), [(1, 1), (4, 1), (1, 2), (2, 2)])
def test_a_global_batch_splits_into_micro_batches_and_ranks_exactly_once(micro, replicas):
    batch = list(range(100, 116))
    parts = [split_global_batch(batch, micro, replicas, r) for r in range(replicas)]
    positions = sorted(int(p) for shard in parts for pos, _ in shard for p in pos)
    assert positions == list(range(16))
    for shard in parts:
        assert len(shard) == micro and all(len(rows) == 16 // (micro * replicas) for _, rows in shard)
        assert all(list(rows) == [batch[p] for p in pos] for pos, rows in shard)
    with pytest.raises(ValueError, match="does not split into 3 micro-batches x 2 ranks"):
        split_global_batch(batch, 3, 2, 0)


def test_padding_fraction():
    lengths = [4, 2, 3, 3]
    assert padding_fraction([[0, 1]], lengths) == pytest.approx(2 / 8)
    assert padding_fraction([[2, 3], [0]], lengths) == 0.0
    assert padding_fraction([], lengths) == 0.0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="num_replicas=3"):
        sampler(num_replicas=3)
    with pytest.raises(ValueError, match="rank=2"):
        sampler(num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="group_by_length"):
        sampler(lengths=None)
    with pytest.raises(ValueError, match="strategy"):
        sampler(strategy="round_robin")
    with pytest.raises(ValueError, match="min_task_mix"):
        sampler(min_task_mix=1.5)
    assert take(iter(sampler(lengths=None, group_by_length=False)), 1)


def test_eval_batches_are_fixed_sorted_and_sharded():
    batches = eval_batches(LENGTHS, 32)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    flat = [LENGTHS[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)
    assert eval_batches(LENGTHS, 32) == batches
    shards = [eval_batches(LENGTHS, 32, num_replicas=3, rank=r) for r in range(3)]
    assert sorted(i for s in shards for b in s for i in b) == list(range(len(LENGTHS)))
    assert padding_fraction(batches, LENGTHS) < 0.05
