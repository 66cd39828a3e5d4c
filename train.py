"""The one entrypoint: `python train.py [overrides]`, `python train.py -m <sweep>`. See README.md."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from cpoly.config import register_configs  # noqa: E402
from cpoly.run import main as run_main  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_main(cfg)


if __name__ == "__main__":
    main()
