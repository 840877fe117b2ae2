"""``benchmarks/paper_scale.py`` on a handful of images: both data paths through the real stages, and its report."""

from __future__ import annotations

import re

import pytest

from benchmarks import paper_scale


@pytest.mark.slow
def test_paper_scale_measures_both_paths_and_the_device_path_leaves_less_on_the_host(tmp_path):
    out = tmp_path / "results"
    paper_scale.main(["--classes", "40", "--per-class", "2", "--extra-epochs", "1", "--workers", "0",
                      "--workdir", str(tmp_path), "--out-dir", str(out)])
    report = (out / "paper_scale.md").read_text()
    rows = dict(re.findall(r"^\| (pil|device) \| ([0-9.]+) \|", report, re.M))
    assert set(rows) == {"pil", "device"}
    assert 0 < float(rows["device"]) < float(rows["pil"])  # the host's share per training image
    for path in ("pil", "device"):
        section = report.split(f"## Per task, `{path}` path")[1]
        assert re.search(r"^\| train +\| +[0-9.]+ +\|", section, re.M)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("paper_scale_")] == []  # its work folder is removed
