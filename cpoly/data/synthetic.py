"""The synthetic benchmark: string-transformation tasks composed from known atomic skills.

Each task applies 1-3 atomic string skills (shift letters, upper-case, reverse, ...) to a random
lower-case word; tasks share atomic skills, so the ground-truth task-skill structure is known and
`skill_recovery` can compare it with a learned allocation matrix.

Design choice: by default the source is only the input word and a cue (`"qwfk ="`), never the task
name. Task identity then reaches the model only through routing (the task id given to the adapters),
which is what separates the methods: a fully shared LoRA cannot tell the tasks apart, task-specific
and skill-routed adapters can, and routed methods must discover which tasks share skills. Put
`{task}` in `source_template` to make the task visible in the text instead.

Task-private structure (`private_substitutions: k`): each task also remaps k letters of the alphabet
with a substitution of its own, applied to the input before its shared skills. No other task has it, so
only parameters a task owns (task-specific LoRA, C-Poly's exclusive skills) can hold it without
interfering with the other tasks; k = 0 (no private structure) gives the purely shared benchmark.

Generated from `data_seed` alone: no files, no network, identical on every machine.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cpoly.data.example import BenchmarkData, Example
from cpoly.data.io import DataError, seeded_rng

VOWELS = "aeiou"


def _drop_vowels(text: str, alphabet: str) -> str:
    return "".join(c for c in text if c.lower() not in VOWELS)


def _shift(text: str, alphabet: str) -> str:
    """Each letter of the alphabet becomes the next one (wrapping), case kept."""
    table = {a: b for a, b in zip(alphabet, alphabet[1:] + alphabet[:1], strict=True)}
    table.update({a.upper(): b.upper() for a, b in table.items()})
    return "".join(table.get(c, c) for c in text)


def _upper(text: str, alphabet: str) -> str:
    return text.upper()


def _reverse(text: str, alphabet: str) -> str:
    return text[::-1]


def _rotate(text: str, alphabet: str) -> str:
    """Move the first character to the end."""
    return text[1:] + text[:1]


def _swap_pairs(text: str, alphabet: str) -> str:
    """Swap characters 0<->1, 2<->3, ...; an odd last character stays."""
    chars = list(text)
    for i in range(0, len(chars) - 1, 2):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def _double(text: str, alphabet: str) -> str:
    return "".join(c + c for c in text)


def _sort(text: str, alphabet: str) -> str:
    return "".join(sorted(text))


# The library, in the order skills are applied when a task composes several: character filters first,
# then per-character maps, then reorderings, then length changes. A task is a *set* of skills, so two
# tasks never differ only in the order of the same skills. The first entries are the easiest for a tiny
# byte-level model (position-aligned maps); `sort` needs global comparisons and erases every
# reordering applied before it, so it is off by default.
ATOMIC_SKILLS: dict[str, Callable[[str, str], str]] = {
    "drop_vowels": _drop_vowels,
    "shift": _shift,
    "upper": _upper,
    "reverse": _reverse,
    "rotate": _rotate,
    "swap_pairs": _swap_pairs,
    "double": _double,
    "sort": _sort,
}


def substitute(text: str, table: Mapping[str, str]) -> str:
    """Replace each character by `table[character]` (all at once, so a->b, b->a swaps); others stay."""
    return "".join(table.get(c, c) for c in text)


def apply_skills(text: str, skills: Sequence[str], alphabet: str) -> str:
    """Apply `skills` to `text` in the library's canonical order (whatever the order given)."""
    unknown = [s for s in skills if s not in ATOMIC_SKILLS]
    if unknown:
        raise ValueError(f"unknown atomic skill(s) {unknown}; known: {list(ATOMIC_SKILLS)}")
    for name in ATOMIC_SKILLS:
        if name in skills:
            text = ATOMIC_SKILLS[name](text, alphabet)
    return text


@dataclass
class SyntheticConfig:
    """Hydra structured config of the synthetic benchmark (group `benchmark`, option `synthetic`)."""

    name: str = "synthetic"
    # Seeds the tasks, their skill sets and every input string.
    data_seed: int = 42
    n_tasks: int = 10
    n_train_per_task: int = 400
    n_eval_per_task: int = 50  # the test split
    # The dev split (periodic evaluation, best/, sweeps): words of their own, disjoint from train and test,
    # drawn after them, so train and test are the words they were before dev existed.
    n_dev_per_task: int = 50
    # Input words are drawn uniformly from `alphabet` with a length in [min_length, max_length].
    min_length: int = 3
    max_length: int = 5
    alphabet: str = "abcdefgh"
    # The atomic skills tasks are composed of (names from ATOMIC_SKILLS; applied in its order).
    atomic_skills: list[str] = field(
        default_factory=lambda: ["drop_vowels", "shift", "upper", "reverse", "rotate", "double"]
    )
    min_skills_per_task: int = 1
    max_skills_per_task: int = 3
    # Every atomic skill is used by at least this many tasks, so skills are genuinely shared.
    min_tasks_per_skill: int = 2
    # Task-private structure: each task remaps this many letters with a substitution only it has (applied
    # to the input first). 0: none, the purely shared benchmark.
    private_substitutions: int = 2
    # `{input}` is the input word, `{task}` the task name (absent by default: see the module doc).
    # The trailing cue tells a decoder-only backbone where the answer starts.
    source_template: str = "{input} ="
    # Held-out tasks to transfer to (docs/transfer.md): this many more tasks, each a composition of the same
    # atomic skills that no seen task has (a distinct function), with a substitution of its own. Drawn after
    # everything the seen tasks draw, from generators of their own: the seen tasks stay exactly as with 0.
    n_heldout_tasks: int = 0
    # Which tasks the run trains and evaluates: [seen] (the n_tasks tasks), [heldout], or both.
    task_pool: list[str] = field(default_factory=lambda: ["seen"])
    metric: str = "synthetic"
    main_metric: str = "char_similarity"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every field's check, in this order: the first that fails raises its `DataError`."""
        self._check_sizes()
        self._check_alphabet_and_skills()
        self._check_template_and_tasks()

    def _check_sizes(self) -> None:
        _need(self.n_tasks >= 1, f"n_tasks must be >= 1, got {self.n_tasks}")
        _need(self.n_train_per_task >= 1, f"n_train_per_task must be >= 1, got {self.n_train_per_task}")
        _need(self.n_eval_per_task >= 0, f"n_eval_per_task must be >= 0, got {self.n_eval_per_task}")
        _need(self.n_dev_per_task >= 1, f"n_dev_per_task must be >= 1 (dev picks best/), got {self.n_dev_per_task}")
        _need(
            1 <= self.min_length <= self.max_length,
            f"need 1 <= min_length <= max_length, got min_length={self.min_length}, max_length={self.max_length}",
        )

    def _check_alphabet_and_skills(self) -> None:
        _need(
            len(self.alphabet) >= 2 and len(set(self.alphabet)) == len(self.alphabet),
            f"alphabet must have >= 2 distinct characters, got {self.alphabet!r}",
        )
        _need(
            self.alphabet == self.alphabet.lower() and self.alphabet.isalpha(),
            f"alphabet must be lower-case letters (upper-case is a skill), got {self.alphabet!r}",
        )
        unknown = [s for s in self.atomic_skills if s not in ATOMIC_SKILLS]
        _need(not unknown, f"atomic_skills has unknown names {unknown}; known: {list(ATOMIC_SKILLS)}")
        _need(
            len(set(self.atomic_skills)) == len(self.atomic_skills),
            f"atomic_skills has duplicates: {self.atomic_skills}",
        )
        _need(len(self.atomic_skills) >= 1, "atomic_skills is empty")
        _need(
            1 <= self.min_skills_per_task <= self.max_skills_per_task <= len(self.atomic_skills),
            f"need 1 <= min_skills_per_task <= max_skills_per_task <= len(atomic_skills), got "
            f"min_skills_per_task={self.min_skills_per_task}, "
            f"max_skills_per_task={self.max_skills_per_task}, "
            f"len(atomic_skills)={len(self.atomic_skills)}",
        )
        _need(
            "drop_vowels" not in self.atomic_skills or any(c in VOWELS for c in self.alphabet),
            f"atomic skill drop_vowels needs a vowel in alphabet {self.alphabet!r}",
        )

    def _check_template_and_tasks(self) -> None:
        _need(
            "{input}" in self.source_template,
            f"source_template needs '{{input}}', got {self.source_template!r}",
        )
        try:
            self.source_template.format(input="x", task="t")
        except (KeyError, IndexError, ValueError) as err:
            raise DataError(
                f"benchmark (synthetic): source_template {self.source_template!r} may only use "
                f"{{input}} and {{task}} ({err})"
            ) from None
        _need(
            0 <= self.private_substitutions <= len(self.alphabet),
            f"private_substitutions must lie in [0, len(alphabet)={len(self.alphabet)}], "
            f"got {self.private_substitutions}",
        )
        _need(self.min_tasks_per_skill >= 0, f"min_tasks_per_skill must be >= 0, got {self.min_tasks_per_skill}")
        _need(self.n_heldout_tasks >= 0, f"n_heldout_tasks must be >= 0, got {self.n_heldout_tasks}")
        pool = list(self.task_pool)
        _need(
            bool(pool) and set(pool) <= set(TASK_POOLS) and len(set(pool)) == len(pool),
            f"task_pool must be a non-empty list without repeats of {', '.join(TASK_POOLS)}, got {pool}",
        )
        _need(
            "heldout" not in pool or self.n_heldout_tasks >= 1,
            f"task_pool={pool} needs held-out tasks: set n_heldout_tasks >= 1",
        )


def _need(ok: bool, message: str) -> None:
    """A synthetic benchmark setting's check: `message` names the field and the value."""
    if not ok:
        raise DataError(f"benchmark (synthetic): {message}")


TASK_POOLS = ("seen", "heldout")


def _as_config(cfg: SyntheticConfig | Mapping[str, Any]) -> SyntheticConfig:
    if isinstance(cfg, SyntheticConfig):
        cfg.validate()
        return cfg
    # A Hydra DictConfig or a plain dict: keep only this schema's keys (lists become plain lists).
    values = {k: (list(v) if k in ("atomic_skills", "task_pool") else v) for k, v in dict(cfg).items()}
    return SyntheticConfig(**values)


def _distinct_skill_sets(cfg: SyntheticConfig, probes: list[str]) -> list[tuple[str, ...]]:
    """Every skill set that acts as a function of its own on the probe words (one per function), in
    candidate order; none that leaves its inputs unchanged."""
    order = [s for s in ATOMIC_SKILLS if s in cfg.atomic_skills]
    candidates = [
        combo
        for size in range(cfg.min_skills_per_task, cfg.max_skills_per_task + 1)
        for combo in itertools.combinations(order, size)
    ]
    # Keep one skill set per distinct function (e.g. {sort, reverse} acts as {sort}) and none that
    # leaves its inputs unchanged on the probe words.
    by_behaviour: dict[tuple[str, ...], tuple[str, ...]] = {}
    for combo in candidates:
        outputs = tuple(apply_skills(p, combo, cfg.alphabet) for p in probes)
        if outputs != tuple(probes):
            by_behaviour.setdefault(outputs, combo)
    return list(by_behaviour.values())


def _canonical_order(cfg: SyntheticConfig, combos: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Simple tasks first, then by skill order, so task ids read naturally in allocation plots."""
    order = [s for s in ATOMIC_SKILLS if s in cfg.atomic_skills]
    return sorted(combos, key=lambda combo: (len(combo), [order.index(s) for s in combo]))


def _task_skill_sets(cfg: SyntheticConfig, rng: random.Random, probes: list[str]) -> list[tuple[str, ...]]:
    """Draw `n_tasks` distinct skill sets that act as distinct functions and share skills."""
    order = [s for s in ATOMIC_SKILLS if s in cfg.atomic_skills]
    distinct = _distinct_skill_sets(cfg, probes)
    if len(distinct) < cfg.n_tasks:
        raise DataError(
            f"benchmark (synthetic): n_tasks={cfg.n_tasks} but only {len(distinct)} distinct tasks can "
            f"be composed from atomic_skills={cfg.atomic_skills} with {cfg.min_skills_per_task}-"
            f"{cfg.max_skills_per_task} skills each"
        )
    need_per_skill = min(cfg.min_tasks_per_skill, cfg.n_tasks)
    if cfg.n_tasks * cfg.max_skills_per_task < need_per_skill * len(order):
        need_per_skill = 0  # too few tasks to use every skill that often: accept any draw
    for _ in range(10_000):
        chosen = rng.sample(distinct, cfg.n_tasks)
        if all(sum(s in combo for combo in chosen) >= need_per_skill for s in order):
            break
    else:
        raise DataError(
            f"benchmark (synthetic): could not draw {cfg.n_tasks} tasks using every atomic skill at least "
            f"min_tasks_per_skill={cfg.min_tasks_per_skill} times; lower it or add tasks"
        )
    return _canonical_order(cfg, chosen)


def _heldout_skill_sets(cfg: SyntheticConfig, probes: list[str], seen: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """`n_heldout_tasks` skill sets that act as functions no seen task computes, from a generator of
    their own (the seen tasks' draws are untouched)."""
    unseen = [combo for combo in _distinct_skill_sets(cfg, probes) if combo not in seen]
    if len(unseen) < cfg.n_heldout_tasks:
        raise DataError(
            f"benchmark (synthetic): n_heldout_tasks={cfg.n_heldout_tasks} but only {len(unseen)} compositions of "
            f"atomic_skills={cfg.atomic_skills} are not seen tasks' (n_tasks={cfg.n_tasks})"
        )
    return _canonical_order(cfg, seeded_rng(cfg.data_seed, "heldout", "skills").sample(unseen, cfg.n_heldout_tasks))


def _private_tables(
    cfg: SyntheticConfig, rng: random.Random, n: int | None = None, taken: Sequence[Mapping[str, str]] = ()
) -> list[dict[str, str]]:
    """One substitution per task (`n`, default n_tasks): `private_substitutions` letters, each sent to
    another letter; no two tasks share a table (the substitution is what makes a task's private structure
    its own), nor any of `taken` (the seen tasks', for held-out tasks)."""
    n = cfg.n_tasks if n is None else n
    if cfg.private_substitutions == 0:
        return [{} for _ in range(n)]
    excluded = {tuple(sorted(t.items())) for t in taken}
    tables: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}  # the distinct tables, in drawing order
    for _ in range(1000 * n):
        if len(tables) == n:
            break
        sources = rng.sample(cfg.alphabet, cfg.private_substitutions)
        table = {a: rng.choice([b for b in cfg.alphabet if b != a]) for a in sources}
        key = tuple(sorted(table.items()))
        if key not in excluded:
            tables.setdefault(key, table)
    if len(tables) < n:
        raise DataError(
            f"benchmark (synthetic): could not draw {n} distinct substitutions of "
            f"private_substitutions={cfg.private_substitutions} letters over alphabet {cfg.alphabet!r}"
        )
    return list(tables.values())


def task_target(word: str, skills: Sequence[str], table: Mapping[str, str], alphabet: str) -> str:
    """What a task answers: its private substitution first, then its shared skills."""
    return apply_skills(substitute(word, table), skills, alphabet)


def _random_word(rng: random.Random, cfg: SyntheticConfig) -> str:
    length = rng.randint(cfg.min_length, cfg.max_length)
    return "".join(rng.choice(cfg.alphabet) for _ in range(length))


def load_synthetic(cfg: SyntheticConfig | Mapping[str, Any], data_dir: Any = None) -> BenchmarkData:
    """Generate the benchmark (`data_dir` is accepted for a uniform loader signature and unused)."""
    cfg = _as_config(cfg)
    rng = random.Random(cfg.data_seed)
    probes = [_random_word(rng, cfg) for _ in range(32)]
    skill_sets = _task_skill_sets(cfg, rng, probes)
    task_names = [f"t{i:02d}-" + "-".join(skills) for i, skills in enumerate(skill_sets)]
    # Drawn after the shared structure, from the same generator: private_substitutions=0 leaves every
    # word of today's benchmark as it was.
    tables = _private_tables(cfg, rng)

    splits: dict[str, list[Example]] = {"train": [], "eval": [], "dev": []}
    n_total = cfg.n_train_per_task + cfg.n_eval_per_task
    for task, skills, table in zip(task_names, skill_sets, tables, strict=True):
        # Distinct input words per task, so eval measures generalisation rather than recall.
        words = _distinct_words(cfg, rng, task, skills, table, n_total, set())
        seen = set(words)
        if "seen" in cfg.task_pool:
            _add_examples(splits, cfg, task, skills, table, words, train_first=True)
            splits["dev"] += _dev_examples(cfg, task, skills, table, taken=seen)

    # Held-out tasks: after everything the seen tasks draw, from generators of their own (their skill
    # sets, tables and words), so the seen tasks are the same with or without them.
    heldout_sets = _heldout_skill_sets(cfg, probes, skill_sets) if cfg.n_heldout_tasks else []
    heldout_names = [f"h{i:02d}-" + "-".join(skills) for i, skills in enumerate(heldout_sets)]
    heldout_tables = _private_tables(cfg, seeded_rng(cfg.data_seed, "heldout", "tables"), len(heldout_sets), tables)
    if "heldout" in cfg.task_pool:
        for task, skills, table in zip(heldout_names, heldout_sets, heldout_tables, strict=True):
            # test words first, then train: the test split does not depend on n_train_per_task, and a
            # smaller training set is the first examples of a larger one (few-shot sizes nest)
            words = _distinct_words(cfg, seeded_rng(cfg.data_seed, task, "words"), task, skills, table, n_total, set())
            _add_examples(splits, cfg, task, skills, table, words, train_first=False)
            splits["dev"] += _dev_examples(cfg, task, skills, table, taken=set(words))

    pool = [*(task_names if "seen" in cfg.task_pool else []), *(heldout_names if "heldout" in cfg.task_pool else [])]
    all_names, all_sets = task_names + heldout_names, skill_sets + heldout_sets
    all_tables = tables + heldout_tables
    return BenchmarkData(
        name=cfg.name,
        train=splits["train"],
        test=splits["eval"],
        dev=splits["dev"],
        task_names=pool,
        metric=cfg.metric,
        main_metric=cfg.main_metric,
        skill_structure={task: list(skills) for task, skills in zip(all_names, all_sets, strict=True)},
        info={
            "generator": "cpoly.data.synthetic",
            "config": asdict(cfg),
            "private_substitutions": {task: table for task, table in zip(all_names, all_tables, strict=True) if table},
            "dev": {"source": "words of its own, disjoint from train and test", "n_dev_per_task": cfg.n_dev_per_task},
            "seen_tasks": task_names,
            "heldout_tasks": heldout_names,
            "task_pool": list(cfg.task_pool),
        },
    )


def _distinct_words(
    cfg: SyntheticConfig,
    rng: random.Random,
    task: str,
    skills: Sequence[str],
    table: Mapping[str, str],
    n: int,
    taken: set[str],
) -> list[str]:
    """`n` distinct words of `task` (none in `taken`, none with an empty target), drawn from `rng`."""
    words: list[str] = []
    seen = set(taken)
    for _ in range(200 * n):
        if len(words) == n:
            break
        word = _random_word(rng, cfg)
        if word not in seen and task_target(word, skills, table, cfg.alphabet):  # no empty targets
            seen.add(word)
            words.append(word)
    if len(words) < n:
        raise DataError(
            f"benchmark (synthetic): only {len(words)} distinct inputs exist for task {task!r}, need "
            f"n_train_per_task + n_eval_per_task = {n}; widen the alphabet or the lengths"
        )
    return words


def _add_examples(
    splits: dict[str, list[Example]],
    cfg: SyntheticConfig,
    task: str,
    skills: Sequence[str],
    table: Mapping[str, str],
    words: list[str],
    train_first: bool,
) -> None:
    """The task's train and test examples from its words: train first (seen tasks) or test first."""
    n_train, n_eval = cfg.n_train_per_task, cfg.n_eval_per_task
    parts = (
        [("train", words[:n_train]), ("eval", words[n_train:])]
        if train_first
        else [("eval", words[:n_eval]), ("train", words[n_eval:])]
    )
    for split, chosen in parts:
        for number, word in enumerate(chosen):
            splits[split].append(
                Example(
                    task=task,
                    source=cfg.source_template.format(input=word, task=task),
                    target=task_target(word, skills, table, cfg.alphabet),
                    id=f"{task}/{split}/{number}",
                )
            )


def _dev_examples(
    cfg: SyntheticConfig, task: str, skills: Sequence[str], table: Mapping[str, str], taken: set[str]
) -> list[Example]:
    """`n_dev_per_task` distinct words of `task` that are in neither its train nor its test split, from a
    generator of their own (seeded by data_seed and the task), so the benchmark's train and test words do
    not depend on the dev split's size."""
    rng = seeded_rng(cfg.data_seed, task, "dev")
    words: list[str] = []
    seen = set(taken)
    for _ in range(200 * cfg.n_dev_per_task):
        if len(words) == cfg.n_dev_per_task:
            break
        word = _random_word(rng, cfg)
        if word not in seen and task_target(word, skills, table, cfg.alphabet):
            seen.add(word)
            words.append(word)
    if len(words) < cfg.n_dev_per_task:
        raise DataError(
            f"benchmark (synthetic): only {len(words)} more distinct inputs exist for task {task!r} beside its "
            f"train and test words, need n_dev_per_task={cfg.n_dev_per_task}; widen the alphabet or the lengths"
        )
    return [
        Example(
            task=task,
            source=cfg.source_template.format(input=word, task=task),
            target=task_target(word, skills, table, cfg.alphabet),
            id=f"{task}/dev/{number}",
        )
        for number, word in enumerate(words)
    ]


def true_similarity(task_names: Sequence[str], skill_structure: Mapping[str, Sequence[str]]) -> np.ndarray:
    """(T, T) Jaccard similarity of the tasks' true atomic-skill sets."""
    sets = [set(skill_structure[t]) for t in task_names]
    return np.array([[len(a & b) / max(len(a | b), 1) for b in sets] for a in sets])


def structure_entropy(task_names: Sequence[str], skill_structure: Mapping[str, Sequence[str]]) -> float:
    """Mean normalised entropy of the true allocation (each task uniform over its atomic skills, over all
    skills the tasks use): the value a learned allocation's entropy is compared with (0: one skill per
    task, 1: every task uses every skill)."""
    skills = sorted({s for t in task_names for s in skill_structure[t]})
    if len(skills) < 2:
        return 0.0
    return float(np.mean([np.log(len(skill_structure[t])) / np.log(len(skills)) for t in task_names]))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their mean rank (what Spearman's correlation needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.arange(len(values), dtype=float)
    _, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return sums[inverse] / counts[inverse]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def skill_recovery(
    allocation: Any,
    task_names: Sequence[str],
    skill_structure: Mapping[str, Sequence[str]],
    method: str = "spearman",
) -> float:
    """How well a learned allocation matrix reflects the true task-skill structure, in [-1, 1].

    `allocation` is the (T x K) matrix of shared-skill probabilities (e.g. sigmoid of the router
    logits; any non-negative scores work), rows in `task_names` order, as a torch tensor or array.
    Learned skills carry no names, so the score compares *task-to-task* similarities, which do not
    depend on how skills are numbered: for every pair of distinct tasks, the cosine similarity of their
    allocation rows against the Jaccard similarity of their true atomic-skill sets, correlated over
    the T(T-1)/2 pairs (`method`: "spearman", the default, or "pearson").

    A perfect allocation (rows = the tasks' skill indicators) scores close to 1 (not exactly: cosine
    and Jaccard are not the same similarity), a random or uniform-ish one about 0. NaN when either
    similarity is constant over the pairs (e.g. a router that has not moved from its init).
    """
    if hasattr(allocation, "detach"):  # torch tensor, possibly on a GPU and requiring grad
        allocation = allocation.detach().float().cpu().numpy()
    matrix = np.asarray(allocation, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != len(task_names):
        raise ValueError(
            f"allocation must be (n_tasks x n_skills) with n_tasks={len(task_names)}, got shape {matrix.shape}"
        )
    if len(task_names) < 3:
        raise ValueError(f"skill_recovery needs >= 3 tasks to correlate pairs, got {len(task_names)}")
    missing = [t for t in task_names if t not in skill_structure]
    if missing:
        raise ValueError(f"tasks {missing} have no entry in skill_structure")
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")

    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.where(norms > 0, norms, 1.0)
    learned = unit @ unit.T
    upper_i, upper_j = np.triu_indices(len(task_names), k=1)
    true = true_similarity(task_names, skill_structure)[upper_i, upper_j]
    learned_pairs = learned[upper_i, upper_j]
    if method == "spearman":
        return _pearson(_average_ranks(learned_pairs), _average_ranks(true))
    return _pearson(learned_pairs, true)
