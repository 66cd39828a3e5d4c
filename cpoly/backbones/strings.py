"""An in-house pretrained backbone for the synthetic benchmark (source=inhouse, model_id=strings).

PEFT methods assume a pretrained backbone: on a random frozen one the adapters must carry everything
and no method gets far (about 12% exact match after 2,000 steps). So the embedded default adapts a
tiny T5 pre-trained once, here, seeded, on *generic* string transformations over the synthetic
alphabet: random words, random programs of the atomic skills of `cpoly.data.synthetic` (any subset of
all eight, in their canonical order) and random letter substitutions, with the program written in the
source: `"03 a>c abc ="` means substitute a->c, then apply skills 0 and 3, to the word `abc`. The
empty program is the identity, and its source is exactly the benchmark's (`"abc ="`).

Fine-tuning then shows the backbone words *without* a program: what each task does (which skills, and
its private substitution) is what the adapters must supply, through routing. This is the situation
PEFT on a real model is in: the backbone can do the operations; the task is to learn which.

The project ships the weights the default recipe builds, in `cpoly/backbones/shipped/strings-<hash>/`
(the hash covers the architecture, init seed and recipe): a recipe whose hash names a shipped entry
loads it, so the default costs no pretraining and has the same weights on every machine. Any other
recipe is built on first use into `<paths.cache_dir>/backbones/strings-<hash>/`, under a lock,
atomically, with the recipe, the wall time, the held-out exact match and the torch version in its
provenance file; about 4-5 minutes on 2 CPU cores, once. `python -m cpoly.backbones strings_t5
--rebuild-shipped` rebuilds the shipped entry from the recipe in `conf/backbone/strings_t5.yaml`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cpoly.atomic import atomic_directory
from cpoly.backbones.cache import PROVENANCE_FILE, cached_checkpoint, is_complete, read_provenance
from cpoly.backbones.recipe import StringPretraining
from cpoly.data.synthetic import ATOMIC_SKILLS, task_target

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when the corpus or the optimisation changes what a recipe builds
SKILL_CODES = {name: str(i) for i, name in enumerate(ATOMIC_SKILLS)}
# Pre-built entries, one per shipped inhouse backbone, named like the cache's (package data).
SHIPPED_DIR = Path(__file__).resolve().with_name("shipped")
SHIPPED_FILES = ("model.safetensors", "config.json", "generation_config.json")


def program_example(rng: random.Random, recipe: StringPretraining) -> tuple[str, str]:
    """One (source, target) pair of the pretraining corpus, with a non-empty target."""
    while True:
        skills = rng.sample(list(ATOMIC_SKILLS), rng.randint(0, recipe.max_skills))
        letters = rng.sample(recipe.alphabet, rng.randint(0, recipe.max_substitutions))
        table = {a: rng.choice([b for b in recipe.alphabet if b != a]) for a in sorted(letters)}
        length = rng.randint(recipe.min_length, recipe.max_length)
        word = "".join(rng.choice(recipe.alphabet) for _ in range(length))
        target = task_target(word, skills, table, recipe.alphabet)
        if not target:
            continue
        program = " ".join(
            part
            for part in (
                "".join(SKILL_CODES[s] for s in ATOMIC_SKILLS if s in skills),
                *(f"{a}>{b}" for a, b in table.items()),
            )
            if part
        )
        return (f"{program} {word} =" if program else f"{word} ="), target


def pretrain(model: torch.nn.Module, tokenizer: Any, recipe: StringPretraining) -> dict[str, Any]:
    """Train every weight of `model` (a seq2seq LM) on the corpus; returns what the provenance records."""
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    warmup = max(recipe.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1.0 - s / recipe.steps)
    )
    start, loss_sum, loss_count = time.perf_counter(), 0.0, 0
    for step in range(recipe.steps):
        sources, targets = zip(*(program_example(rng, recipe) for _ in range(recipe.batch_size)), strict=True)
        inputs = tokenizer(list(sources), return_tensors="pt", padding=True)
        labels = tokenizer(list(targets), return_tensors="pt", padding=True).input_ids
        labels[labels == tokenizer.pad_token_id] = -100
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
        if (step + 1) % 500 == 0 or step + 1 == recipe.steps:
            log.info(
                "pretraining the strings backbone: step %d/%d, loss %.4f", step + 1, recipe.steps, loss_sum / loss_count
            )
            loss_sum, loss_count = 0.0, 0
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "pretraining_seconds": round(seconds, 1),
        "pretraining_exact_match": held_out_exact_match(model, tokenizer, recipe),
    }


@torch.no_grad()
def held_out_exact_match(model: torch.nn.Module, tokenizer: Any, recipe: StringPretraining) -> float | None:
    """Exact match of greedy decoding on programs drawn from a generator the training never used."""
    if recipe.eval_examples == 0:
        return None
    rng = random.Random(f"held-out-{recipe.seed}")
    pairs = [program_example(rng, recipe) for _ in range(recipe.eval_examples)]
    correct = 0
    for i in range(0, len(pairs), 100):
        chunk = pairs[i : i + 100]
        inputs = tokenizer([s for s, _ in chunk], return_tensors="pt", padding=True)
        output = model.generate(**inputs, max_new_tokens=4 * recipe.max_length + 4, num_beams=1, do_sample=False)
        predictions = tokenizer.batch_decode(output, skip_special_tokens=True)
        correct += sum(p == t for p, (_, t) in zip(predictions, chunk, strict=True))
    return round(correct / len(pairs), 4)


def recipe_key(cfg: Any) -> tuple[dict[str, Any], str]:
    """What the weights of `cfg` (a BackboneConfig with source=inhouse) depend on, and its 12-hex hash:
    the name of its cache entry and of its shipped entry, `strings-<hash>`."""
    recipe = StringPretraining.from_mapping(cfg.pretraining, cfg.name)
    key = {
        "version": RECIPE_VERSION,
        "architecture": dict(cfg.model_overrides),
        "init_seed": cfg.init_seed,
        "recipe": dataclasses.asdict(recipe),
    }
    # Through JSON, as the provenance stores it (OmegaConf containers become plain ones).
    key = json.loads(json.dumps(key, sort_keys=True))
    return key, hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_checkpoint(key: dict[str, Any], digest: str, shipped_dir: Path | None = None) -> Path | None:
    """The shipped entry for this recipe, or None: absent, recorded for another recipe, or damaged (a
    weights file whose sha256 is not the recorded one, e.g. a Git LFS pointer)."""
    folder = Path(shipped_dir or SHIPPED_DIR) / f"strings-{digest}"
    if not is_complete(folder):
        return None
    provenance = read_provenance(folder)
    if any(provenance.get(name) != value for name, value in key.items()):
        log.warning("shipped backbone %s was built from another recipe; building this one instead", folder)
        return None
    recorded = provenance.get("sha256") or {}
    for name in SHIPPED_FILES:
        if not (folder / name).is_file() or file_sha256(folder / name) != recorded.get(name):
            log.warning("shipped backbone %s: %s is not the file recorded; building the recipe instead", folder, name)
            return None
    return folder


def strings_checkpoint(cfg: Any, tokenizer: Any, cache_dir: Path, *, use_shipped: bool = True) -> Path:
    """The pretrained checkpoint for `cfg` (a BackboneConfig with source=inhouse): the shipped entry when
    its recipe is the shipped one, else the cached one, built if absent."""
    from transformers import AutoModelForSeq2SeqLM

    from cpoly.backbones.random_init import random_model, random_model_config

    key, digest = recipe_key(cfg)
    recipe = StringPretraining(**key["recipe"])
    if use_shipped and (shipped := shipped_checkpoint(key, digest)) is not None:
        log.info("backbone %s: the shipped pre-trained weights %s", cfg.name, shipped)
        return shipped

    def build(folder: Path) -> dict[str, Any]:
        log.info(
            "backbone %s: pretraining a %s once on string transformations (%d steps; cached in %s)",
            cfg.name, cfg.model_overrides.get("model_type"), recipe.steps, folder.parent,
        )  # fmt: skip
        config = random_model_config(cfg, tokenizer, None, local_files_only=True)
        # One intra-op thread: the weights depend on how the CPU kernels split their sums (100 steps
        # on 1 and on 2 threads give different bits), so the core count must not enter; and a tiny
        # model trains faster on one thread than on two that share the cores with another process.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                model = random_model(AutoModelForSeq2SeqLM, config, cfg.init_seed).float()
                record = pretrain(model, tokenizer, recipe)
        finally:
            torch.set_num_threads(threads)
        model.save_pretrained(folder)
        log.info(
            "backbone %s: pretrained in %.0f s, held-out exact match %s",
            cfg.name,
            record["pretraining_seconds"],
            record["pretraining_exact_match"],
        )
        return {**record, "torch_version": torch.__version__, "torch_threads": 1}

    return cached_checkpoint(cache_dir, f"strings-{digest}", build, {"builder": "cpoly.backbones.strings", **key})


def rebuild_shipped(cfg: Any, tokenizer: Any, shipped_dir: Path | None = None) -> Path:
    """Pre-train `cfg`'s recipe from scratch and make it the shipped entry of backbone `cfg.name`
    (replacing that backbone's previous entry); returns the entry's folder."""
    shipped_dir = Path(shipped_dir or SHIPPED_DIR)
    key, digest = recipe_key(cfg)
    with tempfile.TemporaryDirectory() as scratch:
        built = strings_checkpoint(cfg, tokenizer, Path(scratch), use_shipped=False)
        target = shipped_dir / f"strings-{digest}"
        with atomic_directory(target) as folder:
            folder.chmod(0o755)  # a temporary folder is private; this one is read by whoever installs it
            for name in SHIPPED_FILES:
                shutil.copyfile(built / name, folder / name)
            record = {
                **read_provenance(built),
                "backbone": cfg.name,
                "digest": digest,
                "sha256": {name: file_sha256(folder / name) for name in SHIPPED_FILES},
            }
            (folder / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    for old in shipped_dir.glob("strings-*"):
        if old != target and is_complete(old) and read_provenance(old).get("backbone") == cfg.name:
            shutil.rmtree(old)
    return target
