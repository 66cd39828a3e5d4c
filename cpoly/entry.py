"""The body of `train.py`'s Hydra entrypoint: the config first, then the run.

The composed config gets the method's defaults and every check (`prepare_config`) before any model library
is imported, so a bad value answers in about a second with one line and exit status 2. Only then is
`cpoly.run` (torch, transformers, PEFT, Accelerate, W&B) imported and the run started.
"""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig

from cpoly.backbones.errors import BackboneConfigError
from cpoly.backbones.hub import BackboneUnavailableError
from cpoly.config import ConfigError, prepare_config
from cpoly.data.io import DataError
from cpoly.skills.config import SkillConfigError

log = logging.getLogger("cpoly.run")

# Errors in what the user gave (config, data, backbone choice): `python train.py` prints their one-line
# message and exits with this status, apart from crashes (1), divergence (3) and preemption (75).
USER_ERRORS = (ConfigError, DataError, BackboneConfigError, BackboneUnavailableError, SkillConfigError)
USER_ERROR_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3  # a non-finite loss or adapter: last/ holds the last good checkpoint


def in_multirun() -> bool:
    """A multirun's launcher records a failed job and goes on with the others: it needs the exception."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def user_error(cfg: DictConfig, error: Exception) -> None:
    """One line that names the bad input, and exit 2; in a multirun (or HYDRA_FULL_ERROR=1) the exception."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or in_multirun():
        log.error("run %s failed: %s", cfg.get("run_name"), error)
        raise error
    log.error("%s (set HYDRA_FULL_ERROR=1 for the traceback)", error)
    raise SystemExit(USER_ERROR_EXIT_CODE) from None


def main(cfg: DictConfig) -> float | None:
    """Check the config, then train; returns the dev value best/ was chosen by (what sweepers maximise)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        prepare_config(cfg)
    except USER_ERRORS as error:  # the user's input: one line that names it, not a traceback
        user_error(cfg, error)
    # the model libraries load here, after the config passed
    from cpoly.run import train
    from cpoly.train.loop import TrainingDiverged
    from cpoly.train.preemption import PREEMPTED_EXIT_CODE, Preempted

    try:
        results = train(cfg)
    except Preempted as stop:  # a SIGTERM/SIGUSR1: last/ holds the state; the same command continues
        log.warning("run %s %s; last/ holds its state: the same command continues it", cfg.get("run_name"), stop)
        if stop.requeue is not None:  # submitit's handler: requeue the job (it exits the process itself)
            stop.requeue()
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    except USER_ERRORS as error:
        user_error(cfg, error)
    except TrainingDiverged as error:
        log.error("run %s stopped: %s", cfg.get("run_name"), error)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or in_multirun():
            raise
        raise SystemExit(DIVERGED_EXIT_CODE) from None
    except Exception:
        # In a multirun the launcher goes on with the other jobs and re-raises only the first failure
        # at the end: log every failure where it happens (console and the job's train.log).
        log.exception("run %s failed", cfg.get("run_name"))
        raise
    return results["selection"]["value"]
