"""SD-LoRA's peak memory against the number of tasks (CPU resident set, each point in a fresh process).

SD-LoRA keeps every old branch as a frozen direction with a trainable
magnitude, so its training activations could grow with the number of tasks.
This benchmark builds the network of task ``n`` (``n - 1`` old branches),
starts the session with the method's own ``begin_session`` and trains a few
batches, reading the process's peak RSS. The table goes to
``benchmarks/results/sd_lora_memory.md``.

Usage::

    python -m benchmarks.sd_lora_memory --tasks 5 20     # ViT-B/16 at 224², batch 8, 3 steps
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.harness import RESULTS, ROOT
from benchmarks.step_cost import session_context
from model import create_backbone, create_method, head_name
from model.methods.sd_lora import SDLoRAConfig
from model.training import TrainSpec, train_session

__all__ = ["sd_lora_peak_rss", "sd_lora_memory", "main"]


def sd_lora_peak_rss(tasks: int, model: str, img_size: int, batch_size: int, steps: int, rank: int = 10) -> dict[str, float]:
    """Peak RSS (MiB) of SD-LoRA training in task ``tasks`` (``tasks - 1`` old branches with trainable magnitudes).

    Runs in its own process (the peak resident set of a process cannot be reset):
    builds the network with the old branches, starts the session with the
    method's own ``begin_session`` and trains ``steps`` batches.
    """
    import resource

    from model.methods.sd_lora import SDLoRAViT

    torch.set_num_threads(1)
    method = create_method("sd_lora", SDLoRAConfig(rank=rank))
    backbone = create_backbone(model, pretrained=False, overrides={"img_size": img_size})
    net = method.build_net(backbone)
    assert isinstance(net, SDLoRAViT)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in range(tasks - 1):
            net.add_task_branch(method.branch_name(t), 0.8)
            for layer in net.lora_layers.values():
                for target in net.targets:
                    branch = layer.branches[method.branch_name(t)]
                    branch.down(target).normal_(0, 0.02, generator=gen)
                    branch.up(target).normal_(0, 0.02, generator=gen)
    ctx = session_context(method, net, tasks - 1, 20, [])
    params = method.begin_session(net, ctx)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batches = [(torch.randn(batch_size, 3, img_size, img_size, generator=gen), torch.randint(0, 20, (batch_size,), generator=gen) + 20 * (tasks - 1))
               for _ in range(steps)]
    spec = TrainSpec(optimizer="sgd", scheduler="constant", lr=1e-2, epochs=1, batch_size=batch_size)
    train_session(net, params, batches, spec, head_names=[head_name(tasks - 1)], class_offset=20 * (tasks - 1), device=torch.device("cpu"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tasks": tasks, "old_branches": tasks - 1, "trainable_params": sum(p.numel() for p in params),
            "rss_before_training_mb": before, "peak_rss_mb": peak}


def sd_lora_memory(tasks: Sequence[int], model: str, img_size: int, batch_size: int, steps: int, out_dir: Path) -> None:
    """Peak RSS of SD-LoRA training at each number of tasks, each in a fresh process; writes a table."""
    import json as _json
    import subprocess

    import pandas as pd

    rows = []
    for n in tasks:
        code = (f"import json; from benchmarks.sd_lora_memory import sd_lora_peak_rss; "
                f"print(json.dumps(sd_lora_peak_rss({n}, {model!r}, {img_size}, {batch_size}, {steps})))")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
        rows.append(_json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    command = f"python -m benchmarks.sd_lora_memory --tasks {' '.join(map(str, tasks))} --model {model} --img-size {img_size} --batch-size {batch_size} --steps {steps}"
    lines = [
        "# SD-LoRA peak memory (CPU RSS) against the number of tasks",
        "",
        f"Command: `{command}` (each row in a fresh process; one torch thread; SGD on the new factors, every magnitude and the head).",
        "",
        table.to_markdown(index=False, floatfmt=".1f"),
        "",
        "Old branches enter training as frozen directions with trainable magnitudes: one concatenated low-rank "
        "product per target (``model/lora.py: LoRAQKV._branch_sum``), so their activations grow with tasks × rank, "
        "not with tasks × width.",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sd_lora_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", required=True, help="numbers of tasks to measure (e.g. 5 20)")
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.tasks) < 1:
        parser.error(f"--tasks must be >= 1, got {args.tasks}")
    sd_lora_memory(args.tasks, args.model, args.img_size, args.batch_size, args.steps, args.out_dir)


if __name__ == "__main__":
    main()
