"""Open a (possibly fresh) MLflow store through the pipeline's Tracker at a given
moment and log to it, as a run driver or a sweep driver does.

    python store_worker.py URI EXPERIMENT START_AT KIND N

Waits until the wall clock reaches START_AT (so that several workers create the
store at the same instant), then creates one run (``KIND=run``) or a parent run
with two nested runs (``KIND=sweep``) and logs N metric values to each.
"""

from __future__ import annotations

import sys
import time

from pipeline.config import TrackingConfig
from pipeline.tracking.tracker import Tracker


def main() -> None:
    uri, experiment, start_at, kind, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    time.sleep(max(0.0, start_at - time.time()))
    tracker = Tracker(TrackingConfig(uri=uri, experiment=experiment))
    client = tracker.client
    runs = [client.create_run(tracker.experiment_id, run_name=kind).info.run_id]
    if kind == "sweep":
        runs += [
            client.create_run(tracker.experiment_id, run_name="trial", tags={"mlflow.parentRunId": runs[0]}).info.run_id
            for _ in range(2)
        ]
    for step in range(n):
        for run_id in runs:
            client.log_metric(run_id, "m", float(step), step=step)
    for run_id in runs:
        client.set_terminated(run_id, "FINISHED")


if __name__ == "__main__":
    main()
