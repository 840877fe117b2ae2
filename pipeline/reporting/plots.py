"""Figures logged with each run: the accuracy matrix heat map and metric curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: runs on workers and CI without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["accuracy_heatmap", "metric_curves", "figure_pixels"]


def accuracy_heatmap(matrix: pd.DataFrame, title: str) -> Figure:
    """Heat map of R (sessions × tasks) with each cell's accuracy in percent."""
    values = matrix.to_numpy(dtype=float) * 100
    size = max(3.0, 0.55 * values.shape[1] + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1, max(2.5, 0.45 * values.shape[0] + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [c.replace("task_", "") for c in matrix.columns])
    ax.set_yticks(range(values.shape[0]), [i.replace("after_", "") for i in matrix.index])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after session")
    if values.size <= 400:
        for (i, j), v in np.ndenumerate(values):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def metric_curves(curves: dict[str, list[float]], title: str) -> Figure:
    """Accuracy (in percent) after each session, one line per metric."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, values in curves.items():
        ax.plot(range(len(values)), np.asarray(values) * 100, marker="o", label=name)
    ax.set_xlabel("session")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_pixels(fig: Figure) -> np.ndarray:
    """The rendered figure as RGB pixels, (height, width, 3) uint8 (for ``MlflowClient.log_image``)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def close(fig: Figure) -> None:
    plt.close(fig)
