"""Prepare a backbone ahead of a run (download it, or de-quantise the GGUF) and report on it.

    python -m cpoly.backbones gemma3_270m --cache-dir .cache --prompt "The capital of France is"

Prints the load time, the parameter count and, for generative backbones given --prompt, a greedy
continuation. Useful before a multirun, so the jobs do not all wait on the same first conversion.

    python -m cpoly.backbones strings_t5 --rebuild-shipped

pre-trains an inhouse backbone's recipe from scratch (minutes) and writes it as the entry the project
ships in cpoly/backbones/shipped/ (weights, config, provenance), replacing that backbone's old entry.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from cpoly.backbones.cache import read_provenance
from cpoly.backbones.config import BYT5_TOKENIZER, BackboneConfig
from cpoly.backbones.loading import load_backbone

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "backbone"


def read_config(name_or_path: str) -> BackboneConfig:
    """conf/backbone/<name>.yaml, or a YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONF_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONF_DIR.glob("*.yaml")))
        raise SystemExit(f"no backbone config {name_or_path!r} (known: {known})")
    return BackboneConfig.from_yaml(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", help="a conf/backbone name (e.g. gemma3_270m) or a YAML path")
    parser.add_argument("--cache-dir", default=".cache", help="where converted checkpoints live")
    parser.add_argument("--prompt", default=None, help="print a greedy continuation of this prompt")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument(
        "--rebuild-shipped", action="store_true", help="inhouse backbones: pre-train and write the shipped entry"
    )
    args = parser.parse_args()

    cfg = read_config(args.backbone)
    if args.rebuild_shipped:
        rebuild(cfg.validate())
        return
    start = time.perf_counter()
    task_labels = {"example": ["no", "yes"]} if cfg.kind == "encoder" else None
    backbone = load_backbone(cfg, cache_dir=Path(args.cache_dir), task_labels=task_labels)
    seconds = time.perf_counter() - start
    n_params = sum(p.numel() for p in backbone.model.parameters())
    model_class = type(backbone.model).__name__
    print(f"{cfg.name}: {model_class}, {n_params / 1e6:.1f}M parameters, loaded in {seconds:.1f}s")
    if args.prompt and cfg.kind != "encoder":
        inputs = backbone.tokenizer([args.prompt], return_tensors="pt")
        with torch.no_grad():
            out = backbone.model.eval().generate(**inputs, max_new_tokens=args.max_new_tokens, num_beams=1)
        new = out[0] if cfg.kind == "seq2seq" else out[0, inputs.input_ids.shape[1] :]
        print(repr(args.prompt + backbone.tokenizer.decode(new, skip_special_tokens=True)))


def rebuild(cfg: BackboneConfig) -> None:
    from cpoly.backbones.strings import rebuild_shipped
    from cpoly.backbones.tokenizers import load_tokenizer

    if cfg.source != "inhouse":
        raise SystemExit(f"--rebuild-shipped: backbone {cfg.name} has source={cfg.source}; only inhouse ones are built")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    entry = rebuild_shipped(cfg, load_tokenizer(BYT5_TOKENIZER))
    provenance = read_provenance(entry)
    size = sum(f.stat().st_size for f in entry.iterdir())
    print(f"{cfg.name}: wrote {entry} ({size / 1e6:.1f} MB)")
    shown = ("digest", "sha256", "pretraining_seconds", "pretraining_exact_match", "torch_version")
    print(json.dumps({k: provenance[k] for k in shown}, indent=2))


if __name__ == "__main__":
    main()
