"""Multi-task batch sampling: which examples go into each training batch, and eval batching.

Training batches are an endless stream indexed by step, a pure function of (seed, step):
- every `mega_batch_factor` steps form a *chunk*: per-task counts are drawn for the chunk's
  `batch_size * mega_batch_factor` slots (multinomial over the task probabilities), and each task
  fills its slots from its own stream (a fresh seeded permutation of its examples per pass);
- with `group_by_length`, the chunk is sorted by length and cut into *windows* of consecutive lengths;
  each window's examples are dealt out to its batches task by task (a task's examples go to different
  batches), and the batches are shuffled. One window per batch is plain sorting: least padding, but
  on SuperNI, where every prompt starts with its task's definition, it puts each task's examples
  together (13 distinct tasks in a batch of 32 against 27.5 for random batches). The window is the
  smallest that keeps the chunk's mean number of distinct tasks per batch at `min_task_mix` times
  what random batches of the chunk would hold (computed exactly, hypergeometric), so batches stay
  multi-task and pad little. Without grouping the chunk is shuffled and cut.
- a global batch is sorted by length before it is split: micro-batch m of M takes the m-th slice of
  its rows, and data-parallel rank r of R takes rows r, r+R, ... of that slice (`split_global_batch`).
  Each row's position in the global batch is part of its identity (routing noise is keyed by it), so
  every split of the same global batch trains on the same examples in the same roles.
Resuming at step N replays only the per-chunk task counts before N (cheap) and then yields exactly
the batches the uninterrupted run saw from step N.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SAMPLING_STRATEGIES = ("proportional", "uniform", "temperature")

# Separate seed streams, so task counts, batch order and per-task permutations never share draws.
_COUNTS, _ORDER, _PASSES = 0, 1, 2


def task_probabilities(task_sizes: Sequence[int], strategy: str, temperature: float = 1.0) -> np.ndarray:
    """Sampling probability of each task: proportional to n, uniform, or proportional to n**(1/T)."""
    sizes = np.asarray(task_sizes, dtype=float)
    if sizes.ndim != 1 or len(sizes) == 0 or (sizes <= 0).any():
        raise ValueError(f"task sizes must be a non-empty list of positive counts, got {list(task_sizes)}")
    if strategy == "proportional":
        weights = sizes
    elif strategy == "uniform":
        weights = np.ones_like(sizes)
    elif strategy == "temperature":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        weights = sizes ** (1.0 / temperature)
    else:
        raise ValueError(f"task sampling strategy must be one of {SAMPLING_STRATEGIES}, got {strategy!r}")
    return weights / weights.sum()


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def _task_codes(tasks: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
    """The distinct tasks in order of first appearance (so the same data gives the same streams) and each
    example's index into them."""
    if isinstance(tasks, np.ndarray) and tasks.dtype.kind in "iuU":  # vectorised: 100k task ids in milliseconds
        unique, first, inverse = np.unique(tasks, return_index=True, return_inverse=True)
        appearance = np.argsort(first, kind="stable")
        rank = np.empty_like(appearance)
        rank[appearance] = np.arange(len(appearance))
        return unique[appearance].tolist(), rank[inverse.reshape(-1)].astype(np.int64)
    keys = list(dict.fromkeys(tasks))
    position = {key: i for i, key in enumerate(keys)}
    return keys, np.fromiter((position[t] for t in tasks), dtype=np.int64, count=len(tasks))


def expected_distinct_tasks(task_counts: Sequence[int], batch_size: int) -> float:
    """Mean number of distinct tasks in a batch of `batch_size` drawn at random without replacement from
    a pool holding `task_counts[t]` examples of task t: sum_t 1 - C(N - n_t, b) / C(N, b)."""
    total = int(sum(task_counts))
    if batch_size > total:
        raise ValueError(f"batch_size={batch_size} is larger than the pool of {total} examples")
    log_all = math.lgamma(total + 1) - math.lgamma(total - batch_size + 1)
    expected = 0.0
    for n in task_counts:
        rest = total - int(n)
        if n and rest >= batch_size:  # P(no example of the task) = C(rest, b) / C(N, b)
            expected += 1.0 - math.exp(math.lgamma(rest + 1) - math.lgamma(rest - batch_size + 1) - log_all)
        elif n:
            expected += 1.0
    return expected


def distinct_tasks(batches: Iterable[Sequence[int]], tasks: Sequence[Any] | np.ndarray) -> float:
    """Mean number of distinct tasks per batch (`tasks[i]` is example i's task)."""
    tasks = np.asarray(tasks)
    counts = [len(np.unique(tasks[np.asarray(b, dtype=np.int64)])) for b in batches if len(b)]
    return float(np.mean(counts)) if counts else 0.0


def split_global_batch(
    batch: Sequence[int], micro_batches: int = 1, num_replicas: int = 1, rank: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's share of one global batch: for each of `micro_batches` micro-batches, the positions
    (in the global batch) and the example indices of its rows. Micro-batch m takes the m-th contiguous
    slice of the (length-sorted) global batch, rank r rows r, r+R, ... of it."""
    batch = np.asarray(batch, dtype=np.int64)
    parts = micro_batches * num_replicas
    if len(batch) % parts:
        raise ValueError(
            f"a global batch of {len(batch)} does not split into {micro_batches} micro-batches x {num_replicas} ranks"
        )
    size = len(batch) // micro_batches
    out = []
    for m in range(micro_batches):
        positions = np.arange(m * size + rank, (m + 1) * size, num_replicas, dtype=np.int64)
        out.append((positions, batch[positions]))
    return out


@dataclass
class MultiTaskBatchSampler:
    """Endless multi-task training batches (lists of example indices) for one data-parallel rank.

    `tasks` holds each example's task (any hashable: task ids or names), `lengths` each example's
    token count (needed for `group_by_length`). `batch_size` is the *global* batch size of one
    optimizer step (every micro-batch of every process), split over `num_replicas`. Iterating yields
    this rank's rows of each global batch from `start_step` (no micro-batches; the trainer splits
    `global_batches` with `split_global_batch`). The stream never ends: stop after the step budget.
    Shard here, not again in a DataLoader.
    """

    tasks: Sequence[Any]
    lengths: Sequence[int] | None
    batch_size: int
    strategy: str = "proportional"
    temperature: float = 1.0
    seed: int = 0
    group_by_length: bool = True
    min_task_mix: float = 0.9  # group_by_length keeps this share of random batches' distinct tasks
    mega_batch_factor: int = 50
    num_replicas: int = 1
    rank: int = 0
    start_step: int = 0
    task_keys: list[Any] = field(init=False, repr=False)  # distinct tasks, in order of first appearance
    _members: list[np.ndarray] = field(init=False, repr=False)
    _probabilities: np.ndarray = field(init=False, repr=False)
    _lengths: np.ndarray | None = field(init=False, repr=False)
    _codes: np.ndarray = field(init=False, repr=False)
    # batch_at's caches: the per-task stream positions before a chunk, and the latest chunk's batches
    _cursors_at: tuple[int, np.ndarray] | None = field(default=None, init=False, repr=False)
    _chunk_cache: tuple[int, list[np.ndarray]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.tasks) == 0:
            raise ValueError("MultiTaskBatchSampler needs at least one example")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.mega_batch_factor < 1:
            raise ValueError(f"mega_batch_factor must be >= 1, got {self.mega_batch_factor}")
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={self.rank}, num_replicas={self.num_replicas}")
        if self.batch_size % self.num_replicas:
            raise ValueError(
                f"global batch_size={self.batch_size} must be divisible by num_replicas={self.num_replicas}"
            )
        if not 0 <= self.min_task_mix <= 1:
            raise ValueError(f"min_task_mix must lie in [0, 1], got {self.min_task_mix}")
        if self.start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {self.start_step}")
        if self.group_by_length:
            if self.lengths is None or len(self.lengths) != len(self.tasks):
                raise ValueError(
                    f"group_by_length needs one length per example: {len(self.tasks)} examples, "
                    f"lengths {None if self.lengths is None else len(self.lengths)}"
                )
        if self.lengths is not None:  # list() first: a datasets column converts fast only as a list
            lengths = self.lengths if isinstance(self.lengths, np.ndarray) else list(self.lengths)
            self._lengths = np.asarray(lengths, dtype=np.int64)
        else:
            self._lengths = None
        keys, codes = _task_codes(self.tasks)
        order = np.argsort(codes, kind="stable")
        self._members = np.split(order, np.cumsum(np.bincount(codes, minlength=len(keys)))[:-1])
        self._codes = codes
        self.task_keys = keys
        self._probabilities = task_probabilities([len(m) for m in self._members], self.strategy, self.temperature)

    @property
    def probabilities(self) -> dict[Any, float]:
        """Each task's sampling probability, by task key."""
        return dict(zip(self.task_keys, self._probabilities.tolist(), strict=True))

    @property
    def chunk_size(self) -> int:
        return self.batch_size * self.mega_batch_factor

    def _chunk_counts(self, chunk: int) -> np.ndarray:
        return _rng(self.seed, _COUNTS, chunk).multinomial(self.chunk_size, self._probabilities)

    def _take(self, task: int, start: int, count: int) -> np.ndarray:
        """Items start..start+count-1 of a task's endless stream (one seeded permutation per pass)."""
        members = self._members[task]
        n = len(members)
        out = []
        position = start
        while position < start + count:
            epoch, offset = divmod(position, n)
            permutation = _rng(self.seed, _PASSES, task, epoch).permutation(n)
            step = min(n - offset, start + count - position)
            out.append(members[permutation[offset : offset + step]])
            position += step
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def _chunk_batches(self, chunk: int, cursors: np.ndarray) -> list[np.ndarray]:
        """The global batches of one chunk; advances `cursors` (per-task stream positions)."""
        counts = self._chunk_counts(chunk)
        picked = [self._take(t, int(cursors[t]), int(c)) for t, c in enumerate(counts) if c]
        cursors += counts
        indices = np.concatenate(picked)
        rng = _rng(self.seed, _ORDER, chunk)
        indices = indices[rng.permutation(len(indices))]
        if self.group_by_length:
            batches = self._length_grouped(indices, counts)
        else:
            batches = np.split(indices, self.mega_batch_factor)
        batches = [batches[i] for i in rng.permutation(self.mega_batch_factor)]
        if self._lengths is not None:  # sorted within: micro-batches of a split pad little
            batches = [b[np.argsort(self._lengths[b], kind="stable")] for b in batches]
        return batches

    def _length_grouped(self, indices: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        """The chunk's batches from the smallest length window that keeps `min_task_mix` of random
        batches' task diversity (module docstring)."""
        assert self._lengths is not None
        by_length = indices[np.argsort(self._lengths[indices], kind="stable")]
        target = self.min_task_mix * expected_distinct_tasks(counts[counts > 0], self.batch_size)
        for window in range(1, self.mega_batch_factor):
            batches = self._deal(by_length, window)
            if distinct_tasks(batches, self._codes) >= target - 1e-9:
                return batches
        return self._deal(by_length, self.mega_batch_factor)

    def _deal(self, by_length: np.ndarray, window: int) -> list[np.ndarray]:
        """Cut length-sorted examples into windows of `window` batches; deal each window's examples,
        ordered by task, to its batches in turn (a task with at most `window` examples there lands in
        as many different batches)."""
        assert self._lengths is not None
        b = self.batch_size
        batches = []
        for start in range(0, self.mega_batch_factor, window):
            chunk = by_length[start * b : (start + window) * b]
            chunk = chunk[np.lexsort((self._lengths[chunk], self._codes[chunk]))]
            k = len(chunk) // b
            batches += [chunk[j::k] for j in range(k)]
        return batches

    def global_batches(self, start_step: int = 0) -> Iterator[list[int]]:
        """Every rank's rows together: the batches a single process would train on, from `start_step`."""
        first_chunk, skip = divmod(start_step, self.mega_batch_factor)
        cursors = np.zeros(len(self._members), dtype=np.int64)
        for chunk in range(first_chunk):  # fast-forward: only the task counts matter
            cursors += self._chunk_counts(chunk)
        chunk = first_chunk
        while True:
            for batch in self._chunk_batches(chunk, cursors)[skip:]:
                yield batch.tolist()
            skip = 0
            chunk += 1

    def batch_at(self, step: int) -> np.ndarray:
        """Global batch `step`: what `global_batches()` yields at that position. Random access for data
        loader workers; consecutive or strided steps compute each chunk once (the latest is cached)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        chunk, offset = divmod(step, self.mega_batch_factor)
        if self._chunk_cache is None or self._chunk_cache[0] != chunk:
            self._chunk_cache = (chunk, self._chunk_batches(chunk, self._cursors_before(chunk)))
        return self._chunk_cache[1][offset]

    def _cursors_before(self, chunk: int) -> np.ndarray:
        """The per-task stream positions at the start of `chunk` (a copy: `_chunk_batches` advances it)."""
        done, cursors = self._cursors_at or (0, np.zeros(len(self._members), dtype=np.int64))
        if chunk < done:
            done, cursors = 0, np.zeros(len(self._members), dtype=np.int64)
        cursors = cursors.copy()
        for c in range(done, chunk):
            cursors += self._chunk_counts(c)
        self._cursors_at = (chunk, cursors.copy())
        return cursors

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches(self.start_step):
            yield batch[self.rank :: self.num_replicas]


def eval_batches(lengths: Sequence[int], batch_size: int, *, num_replicas: int = 1, rank: int = 0) -> list[list[int]]:
    """Fixed eval batches, longest first (an out-of-memory shows at once); this rank's share.

    Rank r takes examples r, r+R, ... of the length order, so ranks get similar work; predictions
    carry their `index`, so gathering them needs no particular order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
    order = np.argsort(-np.asarray(list(lengths), dtype=np.int64), kind="stable")[rank::num_replicas]
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def padding_fraction(batches: Iterable[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of padded positions when each batch is padded to its longest example."""
    lengths = np.asarray(list(lengths), dtype=np.int64)
    padded = real = 0
    for batch in batches:
        batch_lengths = lengths[np.asarray(batch, dtype=np.int64)]
        if len(batch_lengths):
            padded += int(batch_lengths.max()) * len(batch_lengths)
            real += int(batch_lengths.sum())
    return 1.0 - real / padded if padded else 0.0
