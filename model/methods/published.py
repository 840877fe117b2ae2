"""Published figures a method declares, each with the protocol it was measured under.

A figure is only comparable with a run that follows its protocol: the backbone
weights, the data set and its split and class order, the task count, the epochs and
the method's own optimizer. A protocol is named by a config in ``configs/paper/``
(``protocol``) that fixes the backbone and the data; the training settings are those of
the paper config that runs the figure's method on that protocol (the protocol config
itself when it runs that method; none: the figure never matches). ``inflora report`` reads these
(``pipeline/reporting/report.py``) and prints a figure only beside runs that match, saying for
the others which protocol the figure belongs to.

Methods declare their figures with their settings, without torch
(``declare_method(name, published=(...))`` in ``model/methods/config/<name>.py``), as a
tuple of :class:`PublishedFigure`. The older form,
``{"<paper config name>": {"paper_final": ..., "paper_average": ..., "paper_note": ...}}``,
is still read (:func:`figures_of`): the config name is then the protocol.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["PublishedFigure", "figures_of", "sd_lora_paper", "INFLORA_PAPER", "SD_LORA_TABLE2", "SD_LORA_TABLE3", "SD_LORA_PROTOCOL"]

INFLORA_PAPER = "InfLoRA paper"  # Liang & Li, CVPR 2024, Tables 1-3
# Read from the table images of the official README (WuYichen-97/SD-Lora-CL imgs/results1.jpg: Table 2,
# imgs/results2.jpg: Table 3), "Acc" = final and "AAA" = average accuracy, mean (std) over runs.
SD_LORA_TABLE2 = "SD-LoRA paper, Table 2"
SD_LORA_TABLE3 = "SD-LoRA paper, Table 3"
SD_LORA_PROTOCOL = "sd_lora_official"
"""Suffix of the configs that follow SD-LoRA's own protocol (ViT-B/16 in21k fine-tuned on
in1k, classes shuffled with numpy seed 1995, its own train/test folders, RandomResizedCrop
scale (0.05, 1), bicubic test resize): ``configs/paper/<cell>_sd_lora_official.yaml``."""


@dataclass(frozen=True)
class PublishedFigure:
    """One published final / average accuracy (%) and the protocol it belongs to.

    Args:
        dataset: the ``data.name`` of the benchmark (``imagenet_r``).
        tasks: its task count (``data.num_tasks``).
        final: final accuracy as printed in the source (``"75.65 ± 0.14"``).
        average: average accuracy as printed in the source.
        source: where the figure was read (paper, table, the copy consulted).
        protocol: name of the ``configs/paper/`` config that fixes the backbone and data
            (the training settings: the paper config that runs this method on that protocol).
        secondary: read from a copy of the table that is not its authors' (a mirror,
            a survey); the report marks it.
    """

    dataset: str
    tasks: int
    final: str
    average: str
    source: str
    protocol: str
    secondary: bool = False

    def value(self, which: str) -> float:
        """The mean of ``final`` or ``average`` as a number (for plots); NaN where none is published (``"n/a"``)."""
        text = getattr(self, which).split("±")[0].split("(")[0].strip()
        return math.nan if text == "n/a" else float(text)

    def means(self) -> str:
        """``"final / average"`` means with two decimals for a table cell (``n/a`` where none is published)."""
        return " / ".join("n/a" if math.isnan(v) else f"{v:.2f}" for v in (self.value("final"), self.value("average")))


def figures_of(published: Iterable[PublishedFigure] | Mapping[str, Mapping[str, str]], cell_of) -> list[PublishedFigure]:
    """A method's declared figures as :class:`PublishedFigure` (either declaration form).

    Args:
        published: the method's declared figures (``declaration(name).published``).
        cell_of: ``config name -> (data.name, num_tasks)`` for the older form, whose
            keys name paper configs.
    """
    if isinstance(published, Mapping):
        out = []
        for config, fig in published.items():
            dataset, tasks = cell_of(config)
            out.append(PublishedFigure(dataset, tasks, fig["paper_final"], fig["paper_average"],
                                       fig.get("paper_note", "paper"), protocol=config))
        return out
    return list(published)


_SD_LORA_CELLS = {("imagenet_r", 5): "imagenet_r_5", ("imagenet_r", 10): "imagenet_r_10", ("imagenet_r", 20): "imagenet_r_20",
                  ("imagenet_a", 10): "imagenet_a_10", ("domainnet", 5): "domainnet_5"}  # fmt: skip


def sd_lora_paper(rows: Mapping[tuple[str, int], tuple[str, str]]) -> tuple[PublishedFigure, ...]:
    """One method's row of SD-LoRA's Tables 2 (ImageNet-R) and 3 (ImageNet-A, DomainNet).

    Args:
        rows: ``(data.name, tasks) -> (final, average)`` as printed ("Acc", "AAA", mean (std)
            over runs). Their protocol: ``configs/paper/<cell>_sd_lora_official.yaml``.
    """
    return tuple(
        PublishedFigure(dataset, tasks, final, average, SD_LORA_TABLE2 if dataset == "imagenet_r" else SD_LORA_TABLE3,
                        protocol=f"{_SD_LORA_CELLS[(dataset, tasks)]}_{SD_LORA_PROTOCOL}")
        for (dataset, tasks), (final, average) in rows.items()
    )  # fmt: skip
