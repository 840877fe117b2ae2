"""Reading a finished run's results needs neither torch nor timm, Ray nor MLflow (:mod:`pipeline.running.spec`)."""

from __future__ import annotations

import json

from conftest import tiny_config_dict
from process_helpers import heavy_imports_of

from pipeline.config import config_from_dict
from pipeline.reporting.results import collect_results
from pipeline.running.runner import execute, make_specs
from pipeline.running.stages import method_of
from pipeline.running.state import RunDir


def test_a_finished_runs_results_read_in_a_fresh_interpreter_import_no_torch(tmp_path, tiny_checkpoint):
    cfg = config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}, tracking={"enabled": False}))
    (spec,) = make_specs(cfg)
    (outcome,) = execute([spec], progress=False)
    assert outcome.status == "FINISHED"
    sessions = method_of(cfg).sessions(cfg.data.num_tasks)
    expected = collect_results(RunDir(spec.run_dir), sessions).test.to_numpy().tolist()
    code = (
        "import json, math\n"
        "from pipeline.running.spec import read_result, spec_from_run_dir\n"
        "from pipeline.running.state import RunDir, StageKey\n"
        f"spec = spec_from_run_dir({spec.run_dir!r})\n"
        "rows = [read_result(RunDir(spec.run_dir), StageKey(s, 'eval')).test_row() for s in range(spec.config.data.num_tasks)]\n"
        f"expected = json.loads({json.dumps(json.dumps(expected))})\n"
        "got = [[row.get(t, math.nan) for t in range(len(rows))] for row in rows]\n"
        "assert all(a == b or (math.isnan(a) and math.isnan(b)) for r, e in zip(got, expected) for a, b in zip(r, e)), (got, expected)\n"
        "assert spec.label == 'tiny/inflora/seed0'\n"
    )
    assert heavy_imports_of(code) == []
