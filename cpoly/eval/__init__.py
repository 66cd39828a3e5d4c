"""Metrics as `evaluate` modules shipped in the package (cpoly/eval/metrics), per task + macro average."""

from cpoly.eval.scoring import available_metrics, load_metric, macro_average, metric_path, score_by_task

__all__ = ["available_metrics", "load_metric", "macro_average", "metric_path", "score_by_task"]
