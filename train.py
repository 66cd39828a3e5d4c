"""The one entrypoint: `python train.py [overrides]`, `python train.py -m <sweep>`. See README.md.

Only the config system is imported here: `--help` and a bad value answer before any model library loads
(cpoly/entry.py).
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from cpoly.config import register_configs  # noqa: E402
from cpoly.entry import main as entry_main  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return entry_main(cfg)


if __name__ == "__main__":
    main()
