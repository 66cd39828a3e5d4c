"""Prepare a backbone ahead of a run (download it, or de-quantise the GGUF) and report on it.

    python -m cpoly.backbones gemma3_270m --cache-dir .cache --prompt "The capital of France is"

Prints the load time, the parameter count and, for generative backbones given --prompt, a greedy
continuation. Useful before a multirun, so the jobs do not all wait on the same first conversion.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cpoly.backbones.config import BackboneConfig
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
    args = parser.parse_args()

    cfg = read_config(args.backbone)
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


if __name__ == "__main__":
    main()
