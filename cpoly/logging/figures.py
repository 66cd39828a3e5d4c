"""Matplotlib figures without pyplot: no display is needed and no global figure state leaks between runs."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cpoly.atomic import atomic_write_bytes


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Render to PNG in memory, then replace `path` atomically (a reader never sees half an image)."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def tick_positions(n: int, max_labels: int) -> list[int]:
    """At most `max_labels` evenly spaced tick indices out of `n` (always the first)."""
    stride = max(1, -(-n // max_labels))
    return list(range(0, n, stride))


def label_fontsize(n: int) -> float:
    """Smaller labels for longer axes, within readable bounds."""
    return max(5.0, min(10.0, 240.0 / max(n, 1)))
