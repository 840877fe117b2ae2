"""The pipeline against an MLflow server whose backend store is a real PostgreSQL 15.

PostgreSQL (``initdb``, ``postgres``) starts on 127.0.0.1 in a temporary
directory, the server on it as in docker/compose.yaml (proxied artifacts). A
2-task run is logged, and every metric in the server equals the same run
directory logged to a fresh sqlite store: none missing, none twice.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from conftest import tiny_config_dict

from benchmarks.services import metric_counts, mlflow_server, postgres, replay_to_sqlite
from pipeline.config import config_from_dict
from pipeline.running.runner import execute, make_specs

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _require_postgres() -> None:
    """Skip without PostgreSQL or psycopg; under CI (``INFLORA_CI``) that is a failure."""
    import importlib.util

    missing = [what for what, ok in (("PostgreSQL's initdb", shutil.which("initdb") or os.path.exists("/usr/lib/postgresql/15/bin/initdb")),
                                     ("psycopg 3", importlib.util.find_spec("psycopg"))) if not ok]  # fmt: skip
    if missing:
        if "INFLORA_CI" in os.environ:
            pytest.fail(f"{' and '.join(missing)} missing, and INFLORA_CI is set")
        pytest.skip(f"{' and '.join(missing)} missing (set INFLORA_CI=1 to make this a failure)")


def test_run_logged_to_a_postgresql_backed_server(tmp_path, tiny_checkpoint, monkeypatch):
    _require_postgres()
    from mlflow import MlflowClient

    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
    with postgres() as pg_uri, mlflow_server(pg_uri, tmp_path / "server") as url:
        data = tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}, tracking={"experiment": "pg", "uri": url})
        (outcome,) = execute(make_specs(config_from_dict(data)), progress=False)
        assert outcome.status == "FINISHED"
        client = MlflowClient(url)
        run = client.get_run(outcome.run_id)
        assert run.info.status == "FINISHED" and run.data.params["method.inflora.rank"] == "2"
        assert [m.step for m in client.get_metric_history(outcome.run_id, "acc/test/task_001")] == [1]
        assert "accuracy_matrix_test.csv" in {a.path for a in client.list_artifacts(outcome.run_id)}
        observed = metric_counts(url, "pg")
    expected = metric_counts(replay_to_sqlite([outcome.run_dir.path], data, tmp_path), "pg")
    (name,) = expected
    assert observed == expected and max(observed[name].values()) == 1
    assert sum(1 for key, _, _ in observed[name] if re.fullmatch(r"acc/test/task_\d{3}", key)) == 3  # R[0,0], R[1,0], R[1,1]
