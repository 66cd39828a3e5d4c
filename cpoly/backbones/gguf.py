"""De-quantise a GGUF decoder once into a plain Hugging Face checkpoint cached on disk.

transformers reads GGUF by de-quantising every tensor to float32 in Python and converting the
tokenizer from the GGUF vocabulary (about a minute for Gemma-3-270M on 2 CPU cores). We pay that once:
the result is written as safetensors + config + tokenizer files into a temporary directory next to
the cache entry and renamed into place, so a reader sees either nothing or a complete checkpoint
(the provenance file, written last, marks an entry complete).
Later loads read only the cache entry and never open the GGUF. A file lock stops concurrent
processes (DDP ranks, multirun jobs) from converting the same file twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from cpoly.atomic import atomic_directory

PROVENANCE_FILE = "cpoly_provenance.json"


def cached_gguf_checkpoint(
    cache_dir: Path, entry_name: str, write_gguf: Callable[[Path], Path], provenance: dict
) -> Path:
    """Return `<cache_dir>/backbones/<entry_name>/`, creating it on first use.

    `write_gguf(scratch_dir)` returns the path of the GGUF file to convert (it may assemble the file
    inside `scratch_dir`, which is deleted afterwards). `entry_name` must change whenever the GGUF
    does (put its hash in it).
    """
    root = Path(cache_dir).expanduser() / "backbones"
    target = root / entry_name
    if _complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{entry_name}.lock"):
        if _complete(target):  # another process finished while we waited
            return target
        with tempfile.TemporaryDirectory(prefix=f".{entry_name}.scratch-", dir=root) as scratch:
            with atomic_directory(target) as checkpoint:
                dequantize_gguf(write_gguf(Path(scratch)), checkpoint)
                (checkpoint / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True))
    return target


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


def _complete(entry: Path) -> bool:
    return (entry / PROVENANCE_FILE).is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
