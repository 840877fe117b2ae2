"""Figures logged with a sweep's parent run: objective against each parameter, and the search history."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .space import SearchSpace

__all__ = ["objective_scatter", "search_history"]


def objective_scatter(table: pd.DataFrame, space: SearchSpace, title: str) -> Figure:
    """Objective (validation average accuracy, %) against each parameter.

    Complete trials are filled dots, trials stopped early hollow ones (their value
    covers fewer tasks), the best trial a star; with both ``rank`` and ``lamb``
    swept, a last panel shows rank × lamb coloured by the objective.
    """
    names = space.names
    both = "rank" in names and "lamb" in names
    panels = len(names) + int(both)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.2), squeeze=False)
    axes = axes[0]
    done = table[table["status"] == "complete"]
    partial = table[(table["status"] != "complete") & table["objective"].notna()]
    best = done.loc[done["objective"].idxmax()] if len(done) else None
    for ax, p in zip(axes, space.params):
        ax.scatter(done[p.name], done["objective"] * 100, s=22, color="tab:blue", label="complete")
        ax.scatter(partial[p.name], partial["objective"] * 100, s=22, facecolors="none", edgecolors="tab:gray", label="stopped early")
        if best is not None:
            ax.scatter([best[p.name]], [best["objective"] * 100], marker="*", s=160, color="tab:red", label="best", zorder=3)
        if p.log:
            ax.set_xscale("log")
        ax.set_xlabel(p.name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val average accuracy (%)")
    axes[0].legend(fontsize=7)
    if both:
        ax = axes[-1]
        points = ax.scatter(done["rank"], done["lamb"], c=done["objective"] * 100, cmap="viridis", s=30)
        if best is not None:
            ax.scatter([best["rank"]], [best["lamb"]], marker="*", s=160, color="tab:red", zorder=3)
        ax.set_xlabel("rank")
        ax.set_ylabel("lamb")
        fig.colorbar(points, ax=ax, label="objective (%)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def search_history(table: pd.DataFrame, title: str) -> Figure:
    """Objective of each complete trial in creation order, and the best so far."""
    done = table[table["status"] == "complete"].sort_values("number")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    values = done["objective"].to_numpy(dtype=float) * 100
    ax.plot(done["number"], values, "o", color="tab:blue", label="trial")
    if len(values):
        ax.plot(done["number"], np.maximum.accumulate(values), "-", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("val average accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig

