"""Figures logged with each run: the accuracy matrix heat map and metric curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: runs on workers and CI without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["accuracy_bars", "accuracy_heatmap", "metric_curves", "figure_pixels"]


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


def accuracy_bars(stats: pd.DataFrame, title: str) -> Figure:
    """Final and average accuracy per group as bars with the seed std as error bars, and the
    published figures (``published_final``/``published_average``, NaN where none) as marked points.

    ``stats`` has one row per group: ``label``, ``final_mean``, ``final_std``, ``average_mean``,
    ``average_std``, ``published_final``, ``published_average`` (accuracies in %)."""
    labels = list(stats["label"])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.6))
    width = 0.38
    x = np.arange(len(labels))
    for offset, name in ((-width / 2, "final"), (width / 2, "average")):
        ax.bar(x + offset, stats[f"{name}_mean"], width, yerr=stats[f"{name}_std"], capsize=3, label=name)
    for offset, name, marker in ((-width / 2, "final", "*"), (width / 2, "average", "D")):
        published = stats[f"published_{name}"].to_numpy(dtype=float)
        shown = ~np.isnan(published)
        if shown.any():
            ax.scatter(x[shown] + offset, published[shown], marker=marker, color="black", zorder=3, s=40,
                       label=f"published {name} (same protocol)")  # fmt: skip
    wide = len(labels) > 4
    ax.set_xticks(list(x), labels, rotation=30 if wide else 0, ha="right" if wide else "center")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_pixels(fig: Figure) -> np.ndarray:
    """The rendered figure as RGB pixels, (height, width, 3) uint8 (for ``MlflowClient.log_image``)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def close(fig: Figure) -> None:
    plt.close(fig)
