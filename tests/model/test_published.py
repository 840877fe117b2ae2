"""model/methods/published.py: a figure's numbers as printed in its source, read back for tables and plots."""

from __future__ import annotations

import math

from model.methods.published import PublishedFigure


def test_values_and_table_cell_of_a_figure_with_and_without_an_average():
    both = PublishedFigure("imagenet_r", 10, "77.34 ± 0.35", "82.04 (0.24)", "SD-LoRA paper, Table 2", protocol="p")
    assert (both.value("final"), both.value("average")) == (77.34, 82.04)
    assert both.means() == "77.34 / 82.04"
    final_only = PublishedFigure("cub", 10, "90.3", "n/a", "RanPAC tables", protocol="cub_10_ranpac_official")
    assert final_only.value("final") == 90.3 and math.isnan(final_only.value("average"))
    assert final_only.means() == "90.30 / n/a"  # not "nan"
