"""Run a config in-process and SIGKILL this process at a chosen point of one stage.

Used by test_resume.py to simulate a run killed in any stage:

    python crash_driver.py CONFIG_JSON STAGE WHEN

STAGE is a stage key (``split``, ``session_001/train``…); WHEN is ``start`` (as
the stage begins), ``end`` (after all its outputs are written, before its marker)
or ``epoch`` (a train stage, after its first epoch checkpoint, during the second).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch

from pipeline.running import state as state_module
from pipeline.config import config_from_dict
from pipeline.running.runner import execute, make_specs


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    config_path, target, when = sys.argv[1:4]
    with open(config_path) as fh:
        cfg = config_from_dict(json.load(fh))
    if when == "start":
        original_log = state_module.RunDir.log_event

        def log_event(self, key, event, **fields):
            original_log(self, key, event, **fields)
            if str(key) == target and event == "start":
                die()

        state_module.RunDir.log_event = log_event
    elif when == "end":
        original_mark = state_module.RunDir.mark_done

        def mark_done(self, key, info, outputs=None):
            if str(key) == target:
                die()
            original_mark(self, key, info, outputs)

        state_module.RunDir.mark_done = mark_done
    elif when == "epoch":
        original_save = torch.save
        saves = []

        def save(obj, f, *args, **kwargs):
            original_save(obj, f, *args, **kwargs)
            if str(f).endswith("train_checkpoint.pt.tmp") and f"/{target}".split("/")[-2] in str(f):
                saves.append(f)
                if len(saves) == 2:
                    die()

        torch.save = save
    else:
        raise SystemExit(f"unknown WHEN {when!r}")
    execute(make_specs(cfg), progress=False)
    raise SystemExit("the run finished without reaching the kill point")


if __name__ == "__main__":
    main()
