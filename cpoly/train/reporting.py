"""What a run writes while and after it trains: metrics.jsonl, W&B, predictions.jsonl, the allocation
heatmap, results.json and the closing summary on the console. Only the main process writes."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cpoly.atomic import atomic_write_text
from cpoly.data.example import BenchmarkData, Example
from cpoly.data.synthetic import skill_recovery, structure_entropy, true_similarity
from cpoly.distributed import full_parameters
from cpoly.eval.scoring import majority_baseline
from cpoly.logging import MetricsLog, WandbLogger, allocation_entropy, plot_allocation, write_results
from cpoly.logging.dendrogram import cophenetic_agreement, plot_dendrograms
from cpoly.skills import Allocation, allocation_matrix
from cpoly.skills.usage import exclusive_skill_usage
from cpoly.train.evaluation import Evaluation
from cpoly.train.loop import LoopState, selection_value

log = logging.getLogger(__name__)


def git_sha(root: Path) -> str | None:
    try:
        run = lambda *args: subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=10, check=True)  # noqa: E731
        sha = run("git", "rev-parse", "HEAD").stdout.strip()
        dirty = run("git", "status", "--porcelain", "--untracked-files=no").stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def split_average(scores: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    if not scores:
        return {"per_task": {}, "avg": {}}
    return {"per_task": {k: v for k, v in scores.items() if k != "avg"}, "avg": scores["avg"]}


@dataclass
class RunReporter:
    out: Path
    is_main: bool
    model: torch.nn.Module
    data: BenchmarkData
    dev_examples: list[Example]
    test_examples: list[Example]
    wandb: WandbLogger
    optimized_metric: str  # a dev average, e.g. "dev/avg/rougeL"
    run_name: str
    metrics_log: MetricsLog = field(init=False)

    def __post_init__(self) -> None:
        self.metrics_log = MetricsLog(self.out / "metrics.jsonl")
        self.has_allocation = self.model.cpoly_skills.config.has_learned_allocation

    def on_log(self, metrics: dict[str, float], step: int) -> None:
        if self.has_allocation:
            with full_parameters(self.model):  # every process: a sharded model's are gathered
                metrics["alloc/entropy"] = allocation_entropy(allocation_matrix(self.model))
        if self.is_main:
            self.metrics_log.log(metrics, step)
            self.wandb.log(metrics, step)

    def on_eval(self, evaluation: Evaluation, step: int, is_best: bool) -> None:
        with full_parameters(self.model):  # every process: a sharded model's are gathered
            if self.is_main:
                self._report_evaluation(evaluation, step, is_best)

    def _report_evaluation(self, evaluation: Evaluation, step: int, is_best: bool) -> None:
        metrics = {f"dev/{task}/{k}": v for task, scores in evaluation.scores.items() for k, v in scores.items()}
        metrics["train/step"] = step
        self.metrics_log.log(metrics, step)
        self.wandb.log(metrics, step)
        self._write_predictions(self.dev_examples, evaluation.predictions, "predictions_dev.jsonl")
        if self.has_allocation:
            allocation = allocation_matrix(self.model)
            png = plot_allocation(allocation, self.out / "allocation.png", title=f"{self.run_name} step {step}")
            tree = plot_dendrograms(
                [(f"{self.run_name} step {step}", allocation.task_names, allocation.stacked.numpy())],
                self.out / "dendrogram.png",
            )
            self.wandb.log_image("alloc/dendrogram", tree, step)
            self.wandb.log_allocation(allocation, step, png)
        value = selection_value(evaluation, self.optimized_metric)
        log.info("step %d: %s = %.4f%s", step, self.optimized_metric, value, " (best)" if is_best else "")

    def on_test(self, test: dict[str, Evaluation]) -> None:
        """The test split's predictions, of the final adapters and of best/'s (only the main process writes)."""
        if not self.is_main:
            return
        self._write_predictions(self.test_examples, test["final"].predictions, "predictions.jsonl")
        self._write_predictions(self.test_examples, test["best"].predictions, "predictions_best.jsonl")

    def _write_predictions(self, examples: list[Example], predictions: list[str], name: str) -> None:
        lines = (
            json.dumps(
                {"task": ex.task, "id": ex.id, "source": ex.prompt, "prediction": p, "references": ex.references}
            )
            for ex, p in zip(examples, predictions, strict=True)
        )
        atomic_write_text(self.out / name, "\n".join(lines) + "\n")

    def skill_recovery(self, allocation: Allocation | None) -> float | None:
        """Synthetic benchmark: how well the learned allocation reflects the true skill structure."""
        if allocation is None or not self.data.skill_structure or len(self.data.task_names) < 3:
            return None  # (under 3 tasks there are too few task pairs to correlate)
        # every layer's allocation side by side (Allocation.stacked), not the layer mean
        value = skill_recovery(allocation.stacked, self.data.task_names, self.data.skill_structure)
        return value if math.isfinite(value) else None  # NaN: the allocation has not moved yet

    def majority_baseline(self) -> dict[str, Any] | None:
        """Classification benchmarks: the scores of always answering each task's most frequent label."""
        scores = majority_baseline(self.data.metric, self.data.train, self.test_examples)
        return split_average(scores) if scores else None

    def allocation_record(self, allocation: Allocation | None) -> dict[str, Any] | None:
        """The learned allocation for results.json: the shared-skill probabilities of every layer side by
        side (T x L*S*K, what skill_recovery and the report's dendrograms compare tasks by), W_B averaged
        over layers, and the allocation's mean normalised entropy per layer beside the true structure's
        (synthetic benchmark)."""
        if allocation is None:
            return None
        record = {
            "tasks": allocation.task_names,
            "layers": len(allocation.per_layer),
            "shared": [[round(float(v), 5) for v in row] for row in allocation.stacked],
            "task_weights": None
            if allocation.task_weights is None
            else [[round(float(v), 5) for v in row] for row in allocation.task_weights],
            "entropy": round(allocation_entropy(allocation), 4),
            "true_entropy": None,
            "tree_agreement": None,
        }
        if self.data.skill_structure:
            structure = self.data.skill_structure
            record["true_entropy"] = round(structure_entropy(self.data.task_names, structure), 4)
            # the dendrogram against the truth: Spearman of cophenetic distance and 1 - Jaccard over task pairs
            agreement = cophenetic_agreement(
                allocation.stacked.numpy(), true_similarity(self.data.task_names, structure)
            )
            record["tree_agreement"] = round(agreement, 4) if math.isfinite(agreement) else None
        return record

    def results(self, state: LoopState, test: dict[str, Evaluation], run_info: dict[str, Any]) -> dict[str, Any]:
        """`results.json`'s content: `run_info` (names, parameters, protocol facts) plus the outcome; every
        process calls it (a sharded model's parameters are gathered). `dev` and `test` each hold `final`
        (the last step's adapters) and `best` (best/'s: the step `selection` names, chosen on dev)."""
        with full_parameters(self.model):
            allocation = allocation_matrix(self.model) if self.has_allocation else None
            exclusive = exclusive_skill_usage(self.model)
        return {
            **run_info,
            "optimized_metric": self.optimized_metric,
            "selection": {
                "split": "dev",
                "metric": self.optimized_metric,
                "rule": "max",
                "step": state.best_step,
                "value": state.best_value,
            },
            "dev": {
                "final": {"step": state.step, **split_average(state.last_scores)},
                "best": {"step": state.best_step, **split_average(state.best_scores)},
            },
            "test": {
                "final": {"step": state.step, **split_average(test["final"].scores)},
                "best": {"step": state.best_step, **split_average(test["best"].scores)},
            },
            "skill_recovery": self.skill_recovery(allocation),
            "exclusive_skills": exclusive,
            "majority_baseline": self.majority_baseline(),
            "allocation": self.allocation_record(allocation),
            "steps": state.step,
            "train_seconds": round(state.train_seconds, 2),
            "status": "finished",
            "n_train": len(self.data.train),
            "n_dev": len(self.dev_examples),
            "n_test": len(self.test_examples),
            "tasks": self.data.task_names,
            "benchmark_info": self.data.info,
            "wandb_run_id": self.wandb.run_id,
            "paths": {
                "predictions": "predictions.jsonl",
                "predictions_best": "predictions_best.jsonl",
                "predictions_dev": "predictions_dev.jsonl",
                "allocation_png": "allocation.png" if self.has_allocation else None,
                "dendrogram_png": "dendrogram.png" if self.has_allocation else None,
                "best": "best",
                "last": "last",
                "metrics": "metrics.jsonl",
            },
        }

    def finish(self, results: dict[str, Any], wall_start: float) -> None:
        results["wall_time_s"] = round(time.perf_counter() - wall_start, 2)
        if not self.is_main:
            return
        write_results(self.out / "results.json", results)
        summary = {f"params/{k}": v for k, v in results["parameters"].items()}
        for split in ("dev", "test"):  # final and best (the dev-selected step) of both splits
            for when in ("final", "best"):
                scores = results[split][when]
                summary |= {f"{split}/{when}/avg/{k}": v for k, v in scores["avg"].items()}
                if split == "test":
                    summary |= {
                        f"test/{when}/{task}/{k}": v for task, per in scores["per_task"].items() for k, v in per.items()
                    }
        summary["selection/step"] = results["selection"]["step"]
        summary["selection/value"] = results["selection"]["value"]
        if results["skill_recovery"] is not None:
            summary["skill_recovery"] = results["skill_recovery"]
        self.wandb.summary(summary)
        print(summary_text(results, self.out), flush=True)


def summary_text(results: dict[str, Any], out: Path) -> str:
    """The closing console summary: the test split's per-task scores and average (final adapters), the test
    average at the step dev chose, the dev averages, and where the outputs are."""
    main_metric = results["main_metric"]
    test = results["test"]
    per_task = test["final"]["per_task"]
    width = max([len(t) for t in per_task] + [len("test, best on dev")])
    metrics = list(test["final"]["avg"])
    row = lambda name, scores: (
        f"  {name:{width}s}  " + "  ".join(f"{scores.get(m, float('nan')):15.2f}" for m in metrics)
    )  # noqa: E731
    lines = [f"\n{results['run_name']}: {results['steps']} steps in {results['train_seconds']:.0f}s"]
    lines.append(f"  {'test split, final':{width}s}  " + "  ".join(f"{m:>15s}" for m in metrics))
    lines += [row(task, scores) for task, scores in sorted(per_task.items())]
    lines.append(row("average", test["final"]["avg"]))
    lines.append(row("test, best on dev", test["best"]["avg"]))
    lines.append(row("dev, final", results["dev"]["final"]["avg"]))
    if results.get("majority_baseline"):
        lines.append(row("majority class", results["majority_baseline"]["avg"]))
    selection = results["selection"]
    lines.append(
        f"  best/: step {selection['step']}, chosen on {selection['metric']} = {selection['value']:.2f}; "
        f"its test {main_metric} {test['best']['avg'].get(main_metric, float('nan')):.2f}"
    )
    if results["skill_recovery"] is not None:
        lines.append(f"  skill_recovery (allocation vs true skill structure): {results['skill_recovery']:.3f}")
    if results.get("allocation") and results["allocation"]["true_entropy"] is not None:
        allocation = results["allocation"]
        lines.append(
            f"  allocation entropy {allocation['entropy']:.3f} (true structure {allocation['true_entropy']:.3f}; "
            "1 = uniform)"
            + (
                ""
                if allocation["tree_agreement"] is None
                else f"; dendrogram vs truth {allocation['tree_agreement']:.3f}"
            )
        )
    if results.get("exclusive_skills") and results["exclusive_skills"]["reliance"] is not None:
        usage = results["exclusive_skills"]
        own = usage["own_task_weight"]
        lines.append(
            f"  reliance on exclusive skills {usage['reliance']:.3f}"
            + ("" if own is None else f", W_B weight on the task's own skills {own:.3f}")
        )
    lines.append(f"results: {out / 'results.json'}")
    lines.append(f"predictions (test): {out / 'predictions.jsonl'}")
    if results["paths"]["allocation_png"]:
        lines.append(f"allocation heatmap: {out / 'allocation.png'}")
        lines.append(f"task dendrogram: {out / 'dendrogram.png'}")
    return "\n".join(lines)
