"""Weights & Biases logging that can never stop training.

Any W&B error (at init or in a later call) is reported once with `logging.warning` and turns the
logger into a no-op for the rest of the run. `WANDB_MODE` in the environment wins over the config's
mode, so `WANDB_MODE=disabled` (tests, CI) and `WANDB_MODE=offline` (no network) always hold.

The run's config is `run_config(config)`: the flat keys a dashboard groups and filters by
(`dashboard_config`) ahead of the full resolved config."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cpoly.logging.allocation_plot import allocation_rows, plot_allocation
from cpoly.logging.local import plain_metrics, plain_value
from cpoly.skills.model import Allocation

log = logging.getLogger(__name__)

STEP_METRIC = "train/step"
MODES = ("online", "offline", "disabled")
SKILL_COUNTS = ("n_skills", "n_task_skills", "n_splits", "rank")
BEST_KEPT_PREFIX = "dev/avg/"  # the summary keeps the maximum of these keys (the dev score best/ was chosen by)


@dataclasses.dataclass
class WandbSettings:
    project: str = "cpoly"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    job_type: str = "train"
    tags: list[str] = dataclasses.field(default_factory=list)
    notes: str | None = None
    dir: str | None = None  # W&B writes its run folder under <dir>/wandb
    init_timeout: float = 90.0  # seconds before an unreachable server counts as a failure
    finish_timeout: float = 120.0  # seconds `finish` may take (uploading, syncing) before the run moves on

    @classmethod
    def from_any(cls, settings: Any) -> WandbSettings:
        """From a WandbSettings, a dataclass, a mapping or an OmegaConf node; other keys (`name`,
        `_target_`, ...) are ignored: the Hydra schema is what catches misspelled keys."""
        if isinstance(settings, cls):
            return settings
        if settings is None:
            return cls()
        if dataclasses.is_dataclass(settings):
            settings = dataclasses.asdict(settings)
        elif not isinstance(settings, Mapping):
            from omegaconf import OmegaConf

            settings = OmegaConf.to_container(settings, resolve=True)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(settings).items() if k in known and v is not None}
        if "tags" in values:
            values["tags"] = [str(t) for t in values["tags"]]
        return cls(**values)

    def resolved_mode(self) -> str:
        mode = (os.environ.get("WANDB_MODE") or self.mode).lower()
        if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
            mode = "disabled"
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)  # W&B's old spellings
        if mode not in MODES:
            raise ValueError(f"logger mode must be one of {MODES}, got {mode!r}")
        return mode


def _guarded(method: Callable) -> Callable:
    """Run `method` only while the logger is active; a W&B error disables the logger instead of raising."""

    @functools.wraps(method)
    def wrapper(self: WandbLogger, *args: Any, **kwargs: Any) -> Any:
        if self._run is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any W&B failure must leave training running
            self._fail(f"{method.__name__} failed", error)
            return None

    return wrapper


class WandbLogger:
    """One W&B run. Metrics go against `train/step` (W&B's own step is left to W&B, so a resumed run
    that logs a step again is never dropped as out of order). Build it on the main process only;
    other ranks pass `enabled=False` and get a logger whose calls do nothing."""

    def __init__(
        self,
        settings: Any,
        run_name: str,
        config: Mapping[str, Any] | Any | None = None,
        run_id: str | None = None,
        enabled: bool = True,
        skills: Any = None,
    ) -> None:
        """`config`: the resolved run config; `skills`: the skill configuration the run actually uses
        (a `SkillConfig` or a mapping), whose counts replace the config's nulls (method defaults,
        parameter matching) in the dashboard keys."""
        self.settings = WandbSettings.from_any(settings)
        self.run_name = run_name
        self._run: Any = None
        self._run_id = run_id
        self._best_kept: set[str] = set()
        self.mode = self.settings.resolved_mode() if enabled else "disabled"
        if self.mode == "disabled":
            return
        try:
            self._run = self._init(run_config(config, skills))
            self._run_id = self._run.id
            self._define_metrics()
        except Exception as error:  # noqa: BLE001
            self._fail("init failed", error)

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def run_id(self) -> str | None:
        """The W&B run id to store in checkpoints (the id given to resume if W&B never started)."""
        return self._run_id

    @property
    def run_dir(self) -> Path | None:
        """The local W&B run folder (`.../wandb/<offline-run|run>-<time>-<id>`), if a run is active."""
        return Path(self._run.dir).parent if self._run is not None else None

    def _init(self, config: dict[str, Any] | None) -> Any:
        import wandb

        s = self.settings
        run_dir = Path(s.dir) if s.dir else Path.cwd()
        run_dir.mkdir(parents=True, exist_ok=True)
        resume = dict(id=self._run_id, resume="allow") if self._run_id else {}
        return wandb.init(
            project=s.project,
            entity=s.entity,
            name=self.run_name,
            group=s.group,
            job_type=s.job_type,
            tags=list(s.tags) or None,
            notes=s.notes,
            dir=str(run_dir),
            config=config,
            mode=self.mode,
            # One run per process at a time: a run left open by a crashed multirun job is closed.
            reinit="finish_previous",
            settings=wandb.Settings(init_timeout=s.init_timeout),
            **resume,
        )

    def _define_metrics(self) -> None:
        run = self._run
        run.define_metric(STEP_METRIC)
        for pattern in ("train/*", "dev/*", "alloc/*"):
            run.define_metric(pattern, step_metric=STEP_METRIC)

    def _keep_best(self, keys: Iterable[str]) -> None:
        """Metric values are percentages, higher is better: the summary keeps each macro average's
        maximum. Defined by name as a key first appears, because a `dev/avg/*` glob beside `dev/*` is
        unreliable: wandb-core applies either of two matching globs, at random from run to run."""
        for key in keys:
            if key.startswith(BEST_KEPT_PREFIX) and key not in self._best_kept:
                self._run.define_metric(key, step_metric=STEP_METRIC, summary="max")
                self._best_kept.add(key)

    def _fail(self, what: str, error: BaseException) -> None:
        log.warning("W&B %s (%s: %s); W&B logging is off for the rest of this run", what, type(error).__name__, error)
        run, self._run = self._run, None
        if run is not None:
            self._close(run, exit_code=1, quiet=True)  # the warning above said it all

    @_guarded
    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        values = plain_metrics(metrics)
        self._keep_best(values)
        self._run.log({**values, STEP_METRIC: int(step)})

    @_guarded
    def log_allocation(self, allocation: Allocation, step: int, image_path: str | Path | None = None) -> None:
        """The heatmap (the PNG at `image_path`, else one drawn here) as `alloc/heatmap` and the
        layer-averaged matrix as the table `alloc/matrix` (task, split, skill, weight)."""
        import wandb

        table = wandb.Table(
            columns=["task", "split", "skill", "weight"], data=[list(r) for r in allocation_rows(allocation)]
        )
        with tempfile.TemporaryDirectory() as tmp:
            if image_path is None:
                image_path = plot_allocation(allocation, Path(tmp) / "allocation.png", f"{self.run_name} step {step}")
            image = wandb.Image(str(image_path), caption=f"step {step}")
            self._run.log({"alloc/heatmap": image, "alloc/matrix": table, STEP_METRIC: int(step)})

    @_guarded
    def log_image(self, key: str, image_path: str | Path, step: int) -> None:
        """A PNG (e.g. the task dendrogram) under `key` at `step`."""
        import wandb

        self._run.log({key: wandb.Image(str(image_path), caption=f"step {step}"), STEP_METRIC: int(step)})

    @_guarded
    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        import wandb

        data = [[plain_value(v) for v in row] for row in rows]
        self._run.log({name: wandb.Table(columns=list(columns), data=data)})

    @_guarded
    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run-summary entries (parameter counts `params/...`, final and best aggregates)."""
        self._run.summary.update(plain_metrics(values))

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; safe to call twice, after a failure, or on a disabled logger. A `finish` that
        hangs (a stuck upload) is left behind after `finish_timeout` seconds, with one warning: the local
        logs are complete by then, and the W&B run folder can be uploaded later with `wandb sync`."""
        run, self._run = self._run, None
        if run is None:
            return
        self._close(run, exit_code)

    def _close(self, run: Any, exit_code: int, quiet: bool = False) -> None:
        """`run.finish`, given up after `finish_timeout` seconds (left in a daemon thread)."""
        errors: list[BaseException] = []

        def close() -> None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as error:  # noqa: BLE001
                errors.append(error)

        closing = threading.Thread(target=close, name="wandb-finish", daemon=True)
        closing.start()
        closing.join(self.settings.finish_timeout)
        if quiet:
            return
        if closing.is_alive():
            log.warning(
                "W&B finish did not return within %.0f s; leaving it behind (local logs are complete; "
                "upload the run folder later with `wandb sync`)",
                self.settings.finish_timeout,
            )
        elif errors:
            log.warning("W&B finish failed (%s: %s)", type(errors[0]).__name__, errors[0])

    def __enter__(self) -> WandbLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


def dashboard_config(config: Mapping[str, Any], skills: Any = None) -> dict[str, Any]:
    """The keys researchers group and filter runs by, flat: `method` (the method option's name),
    `method_kind`, `backbone`, `benchmark`, the skill counts `n_skills`, `n_task_skills`, `n_splits`,
    `rank`, `examples_per_task` and `seed`, from a resolved config. The counts are those of `skills`
    (the skill configuration the run uses: a `SkillConfig` or a mapping) where it has them, else the
    config's `method` section's (null there: a method default). Absent entries are None."""

    def section(name: str) -> Mapping[str, Any]:
        value = config.get(name)
        return value if isinstance(value, Mapping) else {}

    def used(key: str) -> Any:
        value = skills.get(key) if isinstance(skills, Mapping) else getattr(skills, key, None)
        return section("method").get(key) if value is None else value

    return {
        "method": section("method").get("name"),
        "method_kind": section("method").get("method"),
        "backbone": section("backbone").get("name"),
        "benchmark": section("benchmark").get("name"),
        **{key: used(key) for key in SKILL_COUNTS},
        "examples_per_task": section("benchmark").get("n_train_per_task"),
        "seed": config.get("seed"),
    }


def run_config(config: Any, skills: Any = None) -> dict[str, Any] | None:
    """What `wandb.init` gets: `dashboard_config`'s keys, then the full resolved config. A section whose
    name a dashboard key holds (`method`, `backbone`, `benchmark`: there the option's name, which is also
    what a W&B sweep over that Hydra group sets, overriding the config) moves, unchanged, to
    `<name>_config`; the other keys keep their place."""
    config = _plain_config(config)
    if config is None:
        return None
    flat = dashboard_config(config, skills)
    nested = {(f"{k}_config" if k in flat and isinstance(v, Mapping) else k): v for k, v in config.items()}
    return {**flat, **nested}


def _plain_config(config: Any) -> dict[str, Any] | None:
    """W&B wants plain containers (a DictConfig confuses the dashboard)."""
    if config is None or isinstance(config, dict):
        return config
    if isinstance(config, Mapping):
        return dict(config)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(config, resolve=True)
