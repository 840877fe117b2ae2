"""Run a sweep in this process until the test SIGKILLs it (test_sweep_resume.py).

    python sweep_kill_driver.py SWEEP_JSON
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import ray

    from sweeps.config import sweep_from_dict
    from sweeps.tuner import run_sweep

    with open(sys.argv[1]) as fh:
        sweep = sweep_from_dict(json.load(fh))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    run_sweep(sweep, verbose=0)


if __name__ == "__main__":
    main()
