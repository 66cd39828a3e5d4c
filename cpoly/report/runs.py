"""Loading runs: finding `results.json` files, their configs, the per-run CSV (`--format csv`, a pandas
DataFrame) read and written, and the config keys that split groups."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

# Config keys that are per-run bookkeeping, not part of a setting: they never split groups. An entry
# ending in "." is a prefix; any other entry is the key itself and everything below it.
BOOKKEEPING_KEYS = (
    "seed",
    "run_name",
    "group",
    "task_name",
    "tags",
    "resume",
    "paths.",
    "logger.",
    "hydra.",
    "trainer.progress_bar",
    "trainer.cpu_threads",
    "trainer.eval_batch_size",
    "trainer.log_every",
)
# Keys that define the method (a baseline of the same method name is matched on every other key).
METHOD_KEY_PREFIX = "method."
# Keys outside `method.` that the config interpolates from it (conf/optim/adamw.yaml:
# `router_lr: ${method.router_lr}`): they differ between methods and count as the method's.
METHOD_DERIVED_KEYS = ("optim.router_lr",)
# A run started from a library: where from and what trained make the (method, variant) arm, so a baseline
# from scratch (--baseline task_lora) is matched on every other key (docs/transfer.md).
TRANSFER_KEY_PREFIXES = ("init_from", "transfer.")


class ReportError(ValueError):
    """Bad input for the report (an unknown --baseline or --x, nothing to draw): one line for stderr."""


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every `results.json` at or below `paths` (files or folders), each once, skipping hidden folders
    (the temporary folders of atomic writes)."""
    found: dict[Path, None] = {}
    for root in map(Path, paths):
        if root.is_file():
            found[root.resolve()] = None
            continue
        for path in sorted(root.rglob("results.json")):
            if not any(part.startswith(".") for part in path.relative_to(root).parts):
                found[path.resolve()] = None
    return list(found)


def stderr(message: str) -> None:
    print(f"cpoly.report: {message}", file=sys.stderr)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`optim.lr`); lists, scalars and empty mappings are leaves."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = value
    return out


def read_config(results_path: str | Path, warn=stderr) -> dict[str, Any] | None:
    """The flattened `config_resolved.yaml` beside a `results.json`; None when there is none."""
    path = Path(results_path).with_name("config_resolved.yaml")
    if not path.is_file():
        return None
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as error:
        warn(f"ignored {path}: {error}")
        return None
    if not isinstance(loaded, dict):
        warn(f"ignored {path}: not a mapping")
        return None
    return flatten_config(loaded)


def load_runs(paths: Iterable[str | Path], warn=stderr) -> list[dict[str, Any]]:
    """The finished runs below `paths`; unreadable files and unfinished runs are reported and skipped.
    Each run gets `_path` and `_config` (its flattened config_resolved.yaml, or None). A `.csv` path is a
    per-run table written by `--format csv` (`read_runs_csv`)."""
    paths = [Path(p) for p in paths]
    runs = [run for p in paths if p.suffix == ".csv" for run in read_runs_csv(p)]
    for path in find_results(p for p in paths if p.suffix != ".csv"):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            warn(f"skipped {path}: {error}")
            continue
        status = run.get("status", "finished")
        if status != "finished":
            warn(f"skipped {path}: status {status!r}")
            continue
        if "test" not in run:
            warn(f"skipped {path}: written before the dev split (no 'test' section; its best/ was chosen on test)")
            continue
        run["_path"] = str(path)
        run["_config"] = read_config(path, warn=warn)
        runs.append(run)
    return runs


# The columns of a per-run table before the varying config keys and the scores (`--format csv`).
RUN_COLUMNS = [
    "group", "benchmark", "backbone", "method", "seed", "main_metric", "selection_metric", "selection_step",
    "steps", "trainable", "total", "skill_recovery", "train_seconds", "wall_time_s", "git_sha",
]  # fmt: skip
SPLITS = ("dev", "test")
WHICH = ("final", "best")


def runs_frame(runs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per run (a pandas DataFrame): who it is, the config keys that differ between the runs
    (`config:<key>`), the dev and test averages of every metric, final and best (`<split>/<which>/avg/<m>`),
    the test split's per-task scores (`test/<which>/<task>/<m>`), wall time and git SHA."""
    configs = [run_config(run) for run in runs]
    keys = differing_keys(configs)
    rows = []
    for run, config in zip(runs, configs, strict=True):
        parameters = run.get("parameters") or {}
        selection = run.get("selection") or {}
        row: dict[str, Any] = {
            "group": group_name(run),
            **{k: run.get(k) for k in ("benchmark", "backbone", "method", "seed", "main_metric", "steps")},
            "selection_metric": selection.get("metric"),
            "selection_step": selection.get("step"),
            "trainable": parameters.get("trainable"),
            "total": parameters.get("total"),
            **{k: run.get(k) for k in ("skill_recovery", "train_seconds", "wall_time_s", "git_sha")},
        }
        row |= {f"config:{k}": format_value((config or {}).get(k)) for k in keys}
        for split in SPLITS:
            for which in WHICH:
                scores = (run.get(split) or {}).get(which) or {}
                row |= {f"{split}/{which}/avg/{m}": v for m, v in (scores.get("avg") or {}).items()}
                if split == "test":
                    for task, per in (scores.get("per_task") or {}).items():
                        row |= {f"test/{which}/{task}/{m}": v for m, v in per.items()}
        rows.append(row)
    return pd.DataFrame(rows, columns=list(dict.fromkeys([*RUN_COLUMNS, *(k for r in rows for k in r)])))


def runs_csv(runs: Sequence[dict[str, Any]]) -> str:
    return runs_frame(runs).to_csv(index=False, lineterminator="\n")


def read_runs_csv(path: str | Path) -> list[dict[str, Any]]:
    """The runs of a per-run table (`--format csv`) as results.json-like dicts, for every table and test
    the report computes from run folders (allocations and dendrograms need the folders)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ReportError(f"{path}: not a per-run table ({error})") from None
    missing = [c for c in ("group", "benchmark", "method", "seed", "main_metric") if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: not a per-run table written by --format csv (no column {missing[0]!r})")
    number = lambda v: None if v == "" else float(v)  # noqa: E731
    runs = []
    for i, row in enumerate(frame.to_dict("records"), start=2):
        run: dict[str, Any] = {
            k: row.get(k) or None for k in ("group", "benchmark", "backbone", "method", "main_metric")
        }
        run |= {"_path": f"{path}:{i}", "git_sha": row.get("git_sha") or None}
        run["seed"] = yaml.safe_load(row["seed"]) if row["seed"] else None
        run["skill_recovery"] = number(row.get("skill_recovery", ""))
        run["wall_time_s"] = number(row.get("wall_time_s", ""))
        run["parameters"] = {k: int(float(row[k])) for k in ("trainable", "total") if row.get(k)}
        run["selection"] = {
            "metric": row.get("selection_metric") or None,
            "step": number(row.get("selection_step", "")),
        }
        configs = {k.removeprefix("config:"): yaml.safe_load(v) for k, v in row.items() if k.startswith("config:")}
        run["_config"] = configs
        for split in SPLITS:
            run[split] = {which: {"avg": {}, "per_task": {}} for which in WHICH}
        for key, value in row.items():
            parts = key.split("/")
            if len(parts) >= 4 and parts[0] in SPLITS and parts[1] in WHICH and value != "":
                split, which, task, metric = parts[0], parts[1], "/".join(parts[2:-1]), parts[-1]
                target = (
                    run[split][which]["avg"] if task == "avg" else run[split][which]["per_task"].setdefault(task, {})
                )
                target[metric] = float(value)
        runs.append(run)
    return runs


def run_config(run: dict[str, Any]) -> dict[str, Any] | None:
    """A run's flattened config: `_config` (from load_runs), else `results["config"]`, else None."""
    if run.get("_config") is not None:
        return run["_config"]
    if isinstance(run.get("config"), dict):
        return flatten_config(run["config"])
    return None


def group_name(run: dict[str, Any]) -> str:
    if run.get("group"):
        return run["group"]
    return re.sub(r"-s\d+$", "", run.get("run_name", "unnamed"))


def is_bookkeeping(key: str) -> bool:
    for entry in BOOKKEEPING_KEYS:
        if entry.endswith("."):
            if key.startswith(entry):
                return True
        elif key == entry or key.startswith(entry + "."):
            return True
    return False


def is_method_key(key: str) -> bool:
    return key.startswith(METHOD_KEY_PREFIX) or key in METHOD_DERIVED_KEYS or key.startswith(TRANSFER_KEY_PREFIXES)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def differing_keys(configs: Iterable[dict[str, Any] | None]) -> list[str]:
    """The non-bookkeeping keys whose value is not the same in every given config; a key a config lacks
    counts as null there (a config written before the key existed)."""
    configs = [c for c in configs if c is not None]
    keys = sorted({k for c in configs for k in c if not is_bookkeeping(k)})
    return [k for k in keys if len({canonical(c.get(k)) for c in configs}) > 1]


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def value_sort_key(value: Any) -> tuple:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))
