"""Run records: local metrics.jsonl / results.json, the W&B logger and allocation heatmaps."""

from cpoly.logging.allocation_plot import allocation_entropy, allocation_rows, plot_allocation
from cpoly.logging.local import MetricsLog, read_metrics, read_results, write_results
from cpoly.logging.wandb_logger import WandbLogger, WandbSettings

__all__ = [
    "MetricsLog",
    "WandbLogger",
    "WandbSettings",
    "allocation_entropy",
    "allocation_rows",
    "plot_allocation",
    "read_metrics",
    "read_results",
    "write_results",
]
