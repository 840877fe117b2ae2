"""What MLflow's system-metrics sampling costs the driver, per sample and at the default interval.

The tracker (``pipeline/tracking/system_metrics.py``) samples the machine in a thread of the
driver while stages run. Here a run is opened in a fresh sqlite store (or the
``--tracking-uri`` given, e.g. a server), the sampler runs at ``--interval`` for
``--seconds`` while the main thread sleeps, and the process's CPU time over that
window is the sampler's cost (``time.process_time``: every thread of this process).
One sample = psutil's CPU, RAM, disk and network counters, a ``get_run`` (the
monitor checks the run is still RUNNING) and, at each logging step, a ``log_batch``.
The cost at the default interval is reported as a fraction of one core; a stage of
the demo uses ``cpus_per_stage`` = 2 cores, so its share of a stage is half that.

Usage::

    python benchmarks/system_metrics_overhead.py --interval 0.5 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from pipeline.tracking.system_metrics import DEFAULT_INTERVAL_S, SystemMetrics

RESULTS = Path(__file__).resolve().parent / "results" / "system_metrics_overhead.json"


def measure(uri: str, interval_s: float, seconds: float) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(f"system-metrics-{time.time_ns()}")
    run_id = client.create_run(experiment).info.run_id
    sampler = SystemMetrics(uri, interval_s=interval_s)
    client.get_run(run_id)  # warm the store's connection before timing
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sampler.start(run_id, resume=False)
    time.sleep(seconds)
    sampler.stop(run_id)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    client.set_terminated(run_id)
    samples = len(client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
    per_sample = cpu / max(samples, 1)
    return {
        "tracking_uri_scheme": uri.split(":", 1)[0],
        "interval_s": interval_s,
        "window_s": round(wall, 2),
        "samples_logged": samples,
        "cpu_s": round(cpu, 4),
        "cpu_ms_per_sample": round(per_sample * 1000, 2),
        "default_interval_s": DEFAULT_INTERVAL_S,
        "share_of_one_core_at_default_pct": round(100 * per_sample / DEFAULT_INTERVAL_S, 4),
        "share_of_a_2_cpu_stage_at_default_pct": round(100 * per_sample / DEFAULT_INTERVAL_S / 2, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5, help="sampling interval of the measurement (s)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--tracking-uri", default=None, help="default: a fresh sqlite store")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", None)
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.tracking_uri or f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        result = measure(uri, args.interval, args.seconds)
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
