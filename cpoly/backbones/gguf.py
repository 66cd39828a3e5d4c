"""De-quantise a GGUF decoder once into a plain Hugging Face checkpoint cached on disk.

transformers reads GGUF by de-quantising every tensor to float32 in Python and converting the
tokenizer from the GGUF vocabulary (about a minute for Gemma-3-270M on 2 CPU cores). We pay that once,
through `cpoly.backbones.cache` (atomic, locked, provenance written last); later loads read only the
cache entry and never open the GGUF.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from cpoly.backbones.cache import cached_checkpoint


def cached_gguf_checkpoint(
    cache_dir: Path, entry_name: str, write_gguf: Callable[[Path], Path], provenance: dict
) -> Path:
    """Return `<cache_dir>/backbones/<entry_name>/`, creating it on first use.

    `write_gguf(scratch_dir)` returns the path of the GGUF file to convert (it may assemble the file
    inside `scratch_dir`, which is deleted afterwards). `entry_name` must change whenever the GGUF
    does (put its hash in it).
    """

    def build(checkpoint: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=f".{entry_name}.scratch-", dir=checkpoint.parent) as scratch:
            dequantize_gguf(write_gguf(Path(scratch)), checkpoint)

    return cached_checkpoint(cache_dir, entry_name, build, provenance)


def dequantize_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write the GGUF's decoder and tokenizer as a plain float32 Hugging Face checkpoint in `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32)
    # The tensors are plain float32 now, but the config still says quant_method=gguf: saved as is,
    # the next load would go looking for the GGUF.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model
